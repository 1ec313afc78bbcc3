// Replies and server-sent event encoding.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Reply, SseEvent, encodeEvent, renderValue } from '../src/response.js';

test('values render as JSON, undefined as 204', () => {
  const wire = renderValue({ a: [1, 'x'] });
  assert.equal(wire.status, 200);
  assert.equal(new TextDecoder().decode(wire.body), '{"a":[1,"x"]}');
  assert.equal(renderValue(null).status, 200);
  assert.equal(renderValue(undefined).status, 204);
  assert.throws(() => renderValue(() => 1), /not JSON/);
});

test('replies carry their status, headers and content type', () => {
  const reply = Reply.text('hi', { status: 202, headers: { 'X-A': 'b' } });
  assert.deepEqual(reply.toWire().headers, [['content-type', 'text/plain; charset=utf-8'], ['x-a', 'b']]);
  assert.equal(reply.toWire().status, 202);
  assert.equal(Reply.bytes(new Uint8Array([1])).headers[0][1], 'application/octet-stream');
  assert.equal(Reply.empty().status, 204);
  assert.throws(() => Reply.empty(99), /invalid HTTP status/);
});

test('events encode as SSE', () => {
  assert.equal(encodeEvent('hello'), 'data: hello\n\n');
  assert.equal(encodeEvent(' lead'), 'data:  lead\n\n');
  assert.equal(encodeEvent('a\r\nb\nc'), 'data: a\ndata: b\ndata: c\n\n');
  assert.equal(encodeEvent({ n: 1 }), 'data: {"n":1}\n\n');
  assert.equal(encodeEvent(null), 'data: null\n\n');
  assert.equal(encodeEvent(undefined), '');
  assert.equal(encodeEvent(new SseEvent('x', { event: 'a\nb', id: '1' })), 'event: a b\nid: 1\ndata: x\n\n');
});
