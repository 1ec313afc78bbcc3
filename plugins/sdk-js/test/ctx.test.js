// `Ctx`: identity, route, query, headers, body, usage and logging, with fake host services.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Ctx, percentDecode, queryValue } from '../src/ctx.js';

function ctx({ query, body = '' } = {}) {
  const calls = [];
  const host = {
    requestId: 'req-9',
    tenant: 'acme',
    keyId: undefined,
    scopes: ['read', 'write'],
    claims: [['sub', '"alice"'], ['level', '3']],
    route: '/items/{id}',
    params: [['id', '42']],
  };
  const request = {
    method: 'POST',
    path: '/items/42',
    query,
    headers: [['content-type', 'application/json'], ['x-trace', 'abc']],
    body: new TextEncoder().encode(body),
  };
  const services = { reportUsage: (...a) => calls.push(['usage', ...a]), log: (...a) => calls.push(['log', ...a]) };
  return { ctx: new Ctx(host, request, services), calls };
}

test('identity and route come from the host', () => {
  const { ctx: c } = ctx();
  assert.equal(c.requestId, 'req-9');
  assert.equal(c.tenant, 'acme');
  assert.equal(c.keyId, undefined);
  assert.deepEqual(c.scopes, ['read', 'write']);
  assert.ok(c.hasScope('write') && !c.hasScope('admin'));
  assert.equal(c.claim('sub'), '"alice"');
  assert.equal(c.claimValue('level'), 3);
  assert.equal(c.claim('nope'), undefined);
  assert.equal(c.route, '/items/{id}');
  assert.deepEqual(c.params, { id: '42' });
  assert.equal(c.param('id'), '42');
  assert.equal(c.method, 'POST');
  assert.equal(c.path, '/items/42');
});

test('returned collections are copies', () => {
  const { ctx: c } = ctx();
  c.scopes.push('admin');
  c.params.id = 'x';
  assert.ok(!c.hasScope('admin'));
  assert.equal(c.param('id'), '42');
});

test('query values are percent-decoded', () => {
  const { ctx: c } = ctx({ query: 'q=caf%C3%A9+au+lait&flag&q=second&bad=%zz' });
  assert.equal(c.queryString, 'q=caf%C3%A9+au+lait&flag&q=second&bad=%zz');
  assert.equal(c.query('q'), 'café au lait');
  assert.equal(c.query('flag'), '');
  assert.equal(c.query('bad'), '%zz');
  assert.equal(c.query('none'), undefined);
  assert.equal(queryValue(undefined, 'q'), undefined);
  assert.equal(percentDecode('a%20b+c'), 'a b c');
  assert.equal(percentDecode('100%'), '100%');
  assert.equal(percentDecode('%zz%4'), '%zz%4');
  assert.equal(percentDecode('😀%21'), '😀!');
});

test('headers are case-insensitive', () => {
  const { ctx: c } = ctx();
  assert.equal(c.header('X-Trace'), 'abc');
  assert.equal(c.header('missing'), undefined);
  assert.equal(c.headers.length, 2);
});

test('the body reads as bytes, text or JSON', () => {
  const { ctx: c } = ctx({ body: '{"a":1}' });
  assert.equal(c.body.length, 7);
  assert.equal(c.text(), '{"a":1}');
  assert.deepEqual(c.json(), { a: 1 });
  assert.throws(() => ctx({ body: '{' }).ctx.json(), (err) => err.status === 400 && err.code === 'invalid_request');
});

test('usage and logs go to the host', () => {
  const { ctx: c, calls } = ctx();
  c.reportUsage(3, 4);
  c.log('info', 'hello', { n: 1, s: 'x' });
  c.logWarn('careful');
  assert.throws(() => c.log('loud', 'x'), /unknown log level/);
  assert.deepEqual(calls, [
    ['usage', 3, 4],
    ['log', 'info', 'hello', [['n', '1'], ['s', 'x']]],
    ['log', 'warn', 'careful', []],
  ]);
});

test('Ctx.forTests stands in for the host in a plugin\'s own tests', () => {
  const logs = [];
  const c = Ctx.forTests('acme', {
    scopes: ['read'],
    claims: { sub: 'alice' },
    route: '/items/{id}',
    params: { id: '7' },
    method: 'post',
    query: 'q=1',
    headers: { 'X-A': 'b' },
    body: { a: 1 },
    log: (...entry) => logs.push(entry),
  });
  assert.equal(c.tenant, 'acme');
  assert.equal(c.requestId, 'test-request');
  assert.ok(c.hasScope('read'));
  assert.equal(c.claim('sub'), '"alice"');
  assert.equal(c.param('id'), '7');
  assert.equal(c.path, '/items/{id}');
  assert.equal(c.method, 'POST');
  assert.equal(c.query('q'), '1');
  assert.equal(c.header('x-a'), 'b');
  assert.deepEqual(c.json(), { a: 1 });
  c.logInfo('hi');
  assert.deepEqual(logs, [['info', 'hi', []]]);
  assert.equal(Ctx.forTests().tenant, 'test');
});
