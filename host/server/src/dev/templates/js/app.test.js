// The handler's tests, run natively: `make test`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Ctx, HttpError } from '{{home}}/plugins/sdk-js/infergate.js';
import { greet } from './app.js';

test('greets by name', () => {
  assert.equal(greet(Ctx.forTests('acme'), { name: 'Ada' }).message, 'Hello, Ada! (tenant acme)');
});

test('an empty name is refused', () => {
  assert.throws(() => greet(Ctx.forTests('acme'), { name: ' ' }),
    (e) => e instanceof HttpError && e.status === 422 && e.code === 'invalid_request');
});
