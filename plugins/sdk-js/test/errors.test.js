// Error rendering in the product's shape and the mapping of wasi:nn and llm errors.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { HttpError, INTERNAL_MESSAGE, describe, errorBody, llmError, nnError, toHttpError } from '../src/errors.js';

test('errors render in the product shape', () => {
  const err = HttpError.modelNotFound('x');
  assert.deepEqual(JSON.parse(err.toJSONText('req-1')), {
    error: { code: 'model_not_found', message: "model 'x' is not available to this plugin", request_id: 'req-1' },
  });
  assert.equal(err.status, 404);
  assert.equal(errorBody('a', 'b', 'c'), '{"error":{"code":"a","message":"b","request_id":"c"}}');
});

test('helpers have the Rust SDK statuses and codes', () => {
  const cases = [
    [HttpError.invalidRequest('m'), 422, 'invalid_request'],
    [HttpError.badRequest('m'), 400, 'invalid_request'],
    [HttpError.notFound('m'), 404, 'not_found'],
    [HttpError.backend('m'), 500, 'backend_error'],
    [HttpError.internal('m'), 500, 'internal_error'],
    [new HttpError(418, 'teapot', 'm', { headers: { 'retry-after': '1' } }), 418, 'teapot'],
  ];
  for (const [err, status, code] of cases) {
    assert.equal(err.status, status);
    assert.equal(err.code, code);
    assert.ok(err instanceof Error);
  }
  assert.deepEqual(cases.at(-1)[0].headers, { 'retry-after': '1' });
});

test('other exceptions become a 500 internal_error that does not leak them', () => {
  const err = toHttpError(new Error('secret detail'));
  assert.equal(err.status, 500);
  assert.equal(err.code, 'internal_error');
  assert.equal(err.message, INTERNAL_MESSAGE);
  const teapot = new HttpError(418, 'teapot', 'short and stout');
  assert.equal(toHttpError(teapot), teapot);
  assert.equal(toHttpError('a string').code, 'internal_error');
});

test('describe gives the stack once', () => {
  const text = describe(new TypeError('bad'));
  assert.match(text, /^TypeError: bad\n/);
  assert.equal(text.match(/TypeError: bad/g).length, 1);
  assert.equal(describe({ a: 1 }), 'thrown: {"a":1}');
});

test('wasi:nn errors map to model_not_found and backend_error', () => {
  assert.deepEqual(
    [nnError('not-found', 'gone', 'digits').status, nnError('not-found', 'gone', 'digits').code],
    [404, 'model_not_found'],
  );
  assert.equal(nnError('not-found', 'gone', 'digits').message, "model 'digits' is not available to this plugin");
  assert.equal(nnError('not-found', 'no output').message, 'no output');
  const err = nnError('runtime-error', 'shape mismatch');
  assert.deepEqual([err.status, err.code, err.message], [500, 'backend_error', 'wasi-nn runtime-error: shape mismatch']);
});

test('llm errors map as the Rust SDK maps them', () => {
  const cases = {
    'model-not-found': [404, 'model_not_found'],
    'invalid-request': [400, 'invalid_request'],
    'context-length-exceeded': [400, 'context_length_exceeded'],
    'too-many-generations': [429, 'too_many_generations'],
    timeout: [504, 'inference_timeout'],
    backend: [500, 'backend_error'],
  };
  for (const [tag, [status, code]] of Object.entries(cases)) {
    const err = llmError({ tag, val: 'why' });
    assert.deepEqual([err.status, err.code, err.message], [status, code, 'why'], tag);
  }
  assert.equal(llmError({ tag: 'new-kind', val: 'x' }).code, 'backend_error');
});
