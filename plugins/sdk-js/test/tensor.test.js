// Tensors to and from the little-endian bytes wasi:nn carries.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Output, Tensor, shortestF32 } from '../src/tensor.js';

test('f32 tensors are little-endian bytes of their shape', () => {
  const t = Tensor.f32([1, 2], [1.5, -2]);
  assert.deepEqual(t.dims, [1, 2]);
  assert.equal(t.type, 'FP32');
  assert.deepEqual([...t.data], [0, 0, 0xc0, 0x3f, 0, 0, 0, 0xc0]);
  assert.throws(() => Tensor.f32([1, 64], [1, 2]), /holds 64 values, got 2/);
  assert.throws(() => Tensor.f32([-1], []), /non-negative/);
});

test('other element types', () => {
  assert.deepEqual([...Tensor.u8([3], [1, 2, 3]).data], [1, 2, 3]);
  assert.equal(Tensor.i64([2], [1, 2n]).data.length, 16);
  assert.equal(Tensor.i32([2], new Int32Array([1, 2])).type, 'I32');
  assert.equal(Tensor.f64([1], [0.5]).data.length, 8);
});

test('outputs read back as typed arrays, and type mismatches are backend errors', () => {
  const bytes = new Uint8Array(new Float32Array([0.25, 0.1]).buffer);
  const out = new Output('scores', [1, 2], 'FP32', bytes.subarray(0));
  assert.deepEqual([...out.toF32()], [0.25, Math.fround(0.1)]);
  assert.deepEqual(out.toArray(), [0.25, 0.1]);
  assert.throws(() => out.toI32(), (err) => err.code === 'backend_error' && /expected a I32/.test(err.message));
  const odd = new Output('x', [1], 'FP32', new Uint8Array(3));
  assert.throws(() => odd.toF32(), /not a multiple of 4/);
  assert.deepEqual(new Output('i', [2], 'I64', Tensor.i64([2], [5, -1]).data).toArray(), [5, -1]);
});

test('outputs are copied out of unaligned views', () => {
  const buffer = new Uint8Array(9);
  buffer.set(new Uint8Array(new Float32Array([1, 2]).buffer), 1);
  assert.deepEqual([...new Output('x', [2], 'FP32', buffer.subarray(1)).toF32()], [1, 2]);
});

test('f32 values print as Rust prints them', () => {
  assert.equal(shortestF32(Math.fround(0.1)), 0.1);
  assert.equal(shortestF32(Math.fround(1 / 3)), 0.33333334);
  assert.equal(shortestF32(Math.fround(1e-7)), 1e-7);
  assert.equal(shortestF32(0), 0);
});
