// Tensors as wasi:nn carries them: dimensions, an element type (`FP32`, `I64`...) and
// little-endian bytes. `Tensor` builds inputs from numbers, `Output` reads typed arrays back.
// Pure JavaScript (wasm and every host this runs on are little-endian): no WIT imports.

import { HttpError } from './errors.js';

/**
 * The wasi:nn element types, with the typed array each one reads as.
 * @type {Record<string, { array: any, size: number }>}
 */
const TYPES = {
  FP32: { array: Float32Array, size: 4 },
  FP64: { array: Float64Array, size: 8 },
  I32: { array: Int32Array, size: 4 },
  I64: { array: BigInt64Array, size: 8 },
  U8: { array: Uint8Array, size: 1 },
};

/**
 * @param {readonly number[]} dims
 * @param {number} length
 */
function checkShape(dims, length) {
  if (!Array.isArray(dims) || dims.some((d) => !Number.isInteger(d) || d < 0)) {
    throw new TypeError('tensor dimensions must be an array of non-negative integers');
  }
  const elements = dims.reduce((product, d) => product * d, 1);
  if (elements !== length) {
    throw new TypeError(`a tensor of shape [${dims}] holds ${elements} values, got ${length}`);
  }
}

/** An input tensor: dimensions, element type and little-endian bytes. */
export class Tensor {
  /**
   * @param {number[]} dims
   * @param {'FP32' | 'FP64' | 'I32' | 'I64' | 'U8'} type
   * @param {Uint8Array} data
   */
  constructor(dims, type, data) {
    this.dims = [...dims];
    this.type = type;
    this.data = data;
  }

  /**
   * @param {'FP32' | 'FP64' | 'I32' | 'I64' | 'U8'} type
   * @param {number[]} dims
   * @param {ArrayLike<number> | ArrayLike<bigint>} values
   */
  static of(type, dims, values) {
    const { array } = TYPES[type];
    const typed = values instanceof array ? values : array.from(values);
    checkShape(dims, typed.length);
    return new Tensor(dims, type, new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength));
  }

  /** An `f32` tensor of shape `dims` (`Tensor.f32([1, 64], pixels)`). @param {number[]} dims @param {ArrayLike<number>} values */
  static f32(dims, values) {
    return Tensor.of('FP32', dims, values);
  }

  /** @param {number[]} dims @param {ArrayLike<number>} values */
  static f64(dims, values) {
    return Tensor.of('FP64', dims, values);
  }

  /** @param {number[]} dims @param {ArrayLike<number>} values */
  static i32(dims, values) {
    return Tensor.of('I32', dims, values);
  }

  /** Values may be numbers or bigints. @param {number[]} dims @param {ArrayLike<number | bigint>} values */
  static i64(dims, values) {
    return Tensor.of('I64', dims, Array.from(values, (v) => BigInt(v)));
  }

  /** @param {number[]} dims @param {ArrayLike<number>} values */
  static u8(dims, values) {
    return Tensor.of('U8', dims, values);
  }
}

/** One output tensor, copied out of the host. */
export class Output {
  /**
   * @param {string} name
   * @param {number[]} dims
   * @param {string} type
   * @param {Uint8Array} data
   */
  constructor(name, dims, type, data) {
    this.name = name;
    this.dims = dims;
    this.type = type;
    this.data = data;
  }

  /** The data as a Float32Array; any other element type is a `backend_error`. */
  toF32() {
    return this.#as('FP32');
  }

  /** @returns {Float64Array} */
  toF64() {
    return this.#as('FP64');
  }

  /** @returns {Int32Array} */
  toI32() {
    return this.#as('I32');
  }

  /** @returns {BigInt64Array} */
  toI64() {
    return this.#as('I64');
  }

  /** @returns {Uint8Array} */
  toU8() {
    return this.#as('U8');
  }

  /**
   * The values as plain numbers, ready for JSON: f32 values as their shortest decimal (as Rust
   * prints them: `0.25`, not `0.25000000372529`), i64 values as numbers.
   * @returns {number[]}
   */
  toArray() {
    if (!(this.type in TYPES)) throw HttpError.backend(`cannot read a ${this.type} output tensor '${this.name}'`);
    const values = Array.from(this.#as(this.type), Number);
    return this.type === 'FP32' ? values.map(shortestF32) : values;
  }

  /** @param {string} type */
  #as(type) {
    if (this.type !== type) {
      throw HttpError.backend(`expected a ${type} output tensor '${this.name}', got ${this.type}`);
    }
    const { array, size } = TYPES[type];
    if (this.data.byteLength % size !== 0) {
      throw HttpError.backend(
        `output tensor '${this.name}' has ${this.data.byteLength} bytes, not a multiple of ${size}`,
      );
    }
    // Copy into a fresh, aligned buffer.
    return new array(this.data.slice().buffer, 0, this.data.byteLength / size);
  }
}

/**
 * The shortest decimal that reads back as the same f32.
 * @param {number} value an f32 value
 */
export function shortestF32(value) {
  if (!Number.isFinite(value)) return value;
  for (let digits = 1; digits < 9; digits++) {
    const candidate = Number(value.toPrecision(digits));
    if (Math.fround(candidate) === value) return candidate;
  }
  return Number(value.toPrecision(9));
}
