// The SDK's entry loads natively (the world's interfaces resolve to stubs there), so a plugin's
// handlers can be tested with `node --test`; the host's services throw outside the component.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Ctx, HttpError, Model, Plugin, config, llm, s } from '../infergate.js';

test('a plugin declares and serves natively', () => {
  const plugin = new Plugin({ name: 'hello' });
  plugin.post('/greet', { request: s.object({ name: s.string() }) }, (ctx, req) => ({ message: `Hello, ${req.name}!` }));
  const { incomingHandler, manifest } = plugin.exports();
  assert.equal(typeof incomingHandler.handle, 'function');
  assert.equal(manifest.manifest().routes[0].path, '/greet');
  assert.ok(Ctx.forTests() instanceof Ctx);
  assert.ok(HttpError.notFound('x') instanceof Error);
});

test('host services say they exist only inside the component', () => {
  assert.throws(() => Model.load('digits'), /only inside the component/);
  assert.throws(() => llm.models(), /only inside the component/);
  assert.throws(() => config.get('x'), /only inside the component/);
});
