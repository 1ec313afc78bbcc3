// Route declarations, the manifest, matching and serving requests, without wasm: the host's
// context and services are faked.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { HttpError } from '../src/errors.js';
import { Reply, SseEvent } from '../src/response.js';
import { Router, matchTemplate, parseTemplate } from '../src/router.js';
import { DIALECT, s } from '../src/schema.js';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Serves one request the way src/http.js does, with a fake host. */
function serve(router, method, path, { body, route = '', params = [], query, tenant = 'acme' } = {}) {
  const logs = [];
  const usage = [];
  const context = { requestId: 'req-1', tenant, keyId: 'ci', scopes: ['read'], claims: [['sub', '"alice"']], route, params };
  const bytes = body === undefined ? new Uint8Array() : encoder.encode(typeof body === 'string' ? body : JSON.stringify(body));
  const request = { method, path, query, headers: [['content-type', 'application/json']], body: bytes };
  const services = { reportUsage: (a, b) => usage.push([a, b]), log: (level, message, fields) => logs.push({ level, message, fields }) };
  const response = router.respond(context, request, services);
  return { response, logs, usage };
}

function json(response) {
  return JSON.parse(decoder.decode(response.body));
}

function streamText(response) {
  return [...response.chunks].map((c) => decoder.decode(c)).join('');
}

function greeter() {
  const router = new Router({ name: 'hello', version: '0.1.0', description: 'Greets people', models: ['digits'] });
  router.post(
    '/greet',
    { summary: 'Greet someone', request: s.object({ name: s.string() }), response: s.object({ message: s.string() }) },
    (ctx, req) => ({ message: `Hello, ${req.name}! (tenant ${ctx.tenant})` }),
  );
  router.get('/items/{id}', { scopes: ['read'] }, (ctx) => ({ id: ctx.param('id'), route: ctx.route }));
  router.get('/items/new', () => ({ new: true }));
  router.delete('/items/{id}', () => undefined);
  return router;
}

test('the manifest is derived from the routes', () => {
  const manifest = greeter().manifest();
  assert.deepEqual(
    { ...manifest, routes: undefined },
    { name: 'hello', version: '0.1.0', description: 'Greets people', routes: undefined, models: ['digits'] },
  );
  const [greet, item] = manifest.routes;
  assert.deepEqual(
    { ...greet, requestSchema: undefined, responseSchema: undefined },
    { method: 'POST', path: '/greet', summary: 'Greet someone', requestSchema: undefined, responseSchema: undefined, streaming: false, scopes: [] },
  );
  assert.equal(JSON.parse(greet.requestSchema).$schema, DIALECT);
  assert.deepEqual(JSON.parse(greet.requestSchema).required, ['name']);
  assert.deepEqual([item.method, item.path, item.scopes, item.requestSchema], ['GET', '/items/{id}', ['read'], undefined]);
});

test('declarations are checked when they are made', () => {
  const router = new Router({ name: 'x' });
  assert.throws(() => new Router({ name: 'Bad Name' }), /plugin name/);
  assert.throws(() => router.route('HEAD', '/a', () => 1), /unsupported method/);
  assert.throws(() => router.get('a', () => 1), /must start with/);
  assert.throws(() => router.get('/a//b', () => 1), /bad segment/);
  assert.throws(() => router.get('/{a}/{a}', () => 1), /appears twice/);
  assert.throws(() => router.get('/a{b}', () => 1), /bad segment/);
  assert.throws(() => router.get('/a', { scope: ['x'] }, () => 1), /unknown option `scope`/);
  assert.throws(() => router.get('/a', { request: s.object({}) }, () => 1), /no request body/);
  assert.throws(() => router.post('/a', {}), /not a function/);
  router.get('/items/{id}', () => 1);
  assert.throws(() => router.get('/items/{name}', () => 1), /declared twice/);
  router.post('/items/{name}', () => 1);
});

test('templates parse and match like the host', () => {
  assert.deepEqual(parseTemplate('/'), []);
  assert.deepEqual(parseTemplate('/a/{b}'), [{ literal: 'a' }, { param: 'b' }]);
  const segments = parseTemplate('/items/{id}/tags');
  assert.deepEqual(matchTemplate(segments, '/items/4%202/tags'), [['id', '4 2']]);
  assert.equal(matchTemplate(segments, '/items/42'), undefined);
  assert.equal(matchTemplate(segments, '/items//tags'), undefined);
  assert.deepEqual(matchTemplate([], '/'), []);
});

test('a JSON route decodes the body and answers JSON', () => {
  const { response } = serve(greeter(), 'POST', '/greet', { body: { name: 'Ada' }, route: '/greet' });
  assert.equal(response.status, 200);
  assert.deepEqual(response.headers, [['content-type', 'application/json']]);
  assert.deepEqual(json(response), { message: 'Hello, Ada! (tenant acme)' });
});

test('malformed or missing JSON is a 400 invalid_request', () => {
  for (const body of ['{"name":', undefined]) {
    const { response } = serve(greeter(), 'POST', '/greet', { body, route: '/greet' });
    assert.equal(response.status, 400);
    assert.equal(json(response).error.code, 'invalid_request');
    assert.equal(json(response).error.request_id, 'req-1');
  }
});

test('routes are found by the host template, else by the path; literals win', () => {
  const router = greeter();
  let { response } = serve(router, 'GET', '/items/7', { route: '/items/{id}', params: [['id', '7']] });
  assert.deepEqual(json(response), { id: '7', route: '/items/{id}' });
  ({ response } = serve(router, 'GET', '/items/8'));
  assert.deepEqual(json(response), { id: '8', route: '/items/{id}' });
  ({ response } = serve(router, 'GET', '/items/new'));
  assert.deepEqual(json(response), { new: true });
  ({ response } = serve(router, 'DELETE', '/items/8'));
  assert.equal(response.status, 204);
  assert.equal(response.body.length, 0);
});

test('unknown paths are 404 and other methods 405, in the product shape', () => {
  let { response } = serve(greeter(), 'GET', '/nope');
  assert.equal(response.status, 404);
  assert.deepEqual(json(response), { error: { code: 'not_found', message: "no route for GET /nope in plugin 'hello'", request_id: 'req-1' } });
  ({ response } = serve(greeter(), 'PUT', '/items/3'));
  assert.equal(response.status, 405);
  assert.equal(json(response).error.code, 'method_not_allowed');
  assert.deepEqual(response.headers, [['content-type', 'application/json'], ['allow', 'GET, DELETE']]);
});

test('HttpErrors keep their status; other exceptions are 500 and logged with their stack', () => {
  const router = new Router({ name: 'x' });
  router.post('/fail', () => {
    throw new HttpError(418, 'teapot', 'I am a teapot');
  });
  router.post('/crash', () => {
    throw new Error('boom');
  });
  let { response, logs } = serve(router, 'POST', '/fail');
  assert.equal(response.status, 418);
  assert.deepEqual(json(response).error, { code: 'teapot', message: 'I am a teapot', request_id: 'req-1' });
  assert.deepEqual(logs, []);
  ({ response, logs } = serve(router, 'POST', '/crash'));
  assert.equal(response.status, 500);
  assert.equal(json(response).error.code, 'internal_error');
  assert.doesNotMatch(decoder.decode(response.body), /boom/);
  assert.equal(logs.length, 1);
  assert.equal(logs[0].level, 'error');
  assert.match(logs[0].message, /Error: boom[\s\S]*router\.test\.js/);
});

test('handlers may return a Reply, or a promise', async () => {
  const router = new Router({ name: 'x' });
  router.post('/items', { request: s.object({ a: s.number() }) }, (ctx, req) => Reply.json(req, { status: 201, headers: { Location: '/items/1' } }));
  router.get('/later', async (ctx) => ({ tenant: ctx.tenant }));
  router.get('/later-fail', async () => {
    throw HttpError.notFound('gone');
  });
  router.get('/bigint', () => ({ n: 1n }));
  let { response } = serve(router, 'POST', '/items', { body: { a: 1 } });
  assert.equal(response.status, 201);
  assert.deepEqual(response.headers, [['content-type', 'application/json'], ['location', '/items/1']]);
  response = await serve(router, 'GET', '/later').response;
  assert.deepEqual(json(response), { tenant: 'acme' });
  response = await serve(router, 'GET', '/later-fail').response;
  assert.equal(response.status, 404);
  ({ response } = serve(router, 'GET', '/bigint'));
  assert.equal(response.status, 500);
});

test('streaming routes send each yielded value as one server-sent event', () => {
  const router = new Router({ name: 'x' });
  router.get('/stream', { streaming: true }, function* () {
    for (let n = 0; n < 3; n++) yield { n };
    yield 'two\nlines';
    yield new SseEvent({ done: true }, { event: 'done', id: '9' });
  });
  const { response } = serve(router, 'GET', '/stream');
  assert.equal(response.status, 200);
  assert.deepEqual(response.headers, [['content-type', 'text/event-stream'], ['cache-control', 'no-cache']]);
  const chunks = [...response.chunks].map((c) => decoder.decode(c));
  assert.deepEqual(chunks, [
    'data: {"n":0}\n\n',
    'data: {"n":1}\n\n',
    'data: {"n":2}\n\n',
    'data: two\ndata: lines\n\n',
    'event: done\nid: 9\ndata: {"done":true}\n\n',
  ]);
});

test('an error before the first event gets its own status; a later one ends the stream', () => {
  const router = new Router({ name: 'x' });
  router.get('/early', { streaming: true }, function* () {
    throw new HttpError(429, 'slow_down', 'wait');
  });
  router.get('/late', { streaming: true }, function* () {
    yield 1;
    throw new Error('bug');
  });
  let { response } = serve(router, 'GET', '/early');
  assert.equal(response.status, 429);
  assert.equal(json(response).error.code, 'slow_down');
  const late = serve(router, 'GET', '/late');
  assert.equal(late.response.status, 200);
  assert.equal(
    streamText(late.response),
    'data: 1\n\nevent: error\ndata: {"error":{"code":"internal_error","message":"the plugin failed unexpectedly; its log has the details","request_id":"req-1"}}\n\n',
  );
  assert.equal(late.logs.length, 1);
});

test('a stream the client leaves runs the handler\'s finally blocks', () => {
  const router = new Router({ name: 'x' });
  const events = [];
  router.get('/forever', { streaming: true }, function* () {
    try {
      for (let n = 0; ; n++) yield n;
    } finally {
      events.push('cancelled');
    }
  });
  const { response } = serve(router, 'GET', '/forever');
  for (const chunk of response.chunks) {
    if (decoder.decode(chunk) === 'data: 2\n\n') break;
  }
  assert.deepEqual(events, ['cancelled']);
});

test('no request state is kept in the router', () => {
  const router = new Router({ name: 'x' });
  router.get('/who', (ctx) => ({ tenant: ctx.tenant }));
  assert.deepEqual(json(serve(router, 'GET', '/who', { tenant: 'a' }).response), { tenant: 'a' });
  assert.deepEqual(json(serve(router, 'GET', '/who', { tenant: 'b' }).response), { tenant: 'b' });
});

test('running out of memory escapes, so the component traps and the host drops the instance', () => {
  const router = new Router({ name: 'x' });
  router.get('/hog', () => {
    throw 'out of memory';
  });
  router.get('/hog-stream', { streaming: true }, function* () {
    yield 1;
    throw 'out of memory';
  });
  assert.throws(() => serve(router, 'GET', '/hog'), (err) => err === 'out of memory');
  const { response } = serve(router, 'GET', '/hog-stream');
  assert.throws(() => [...response.chunks], (err) => err === 'out of memory');
});
