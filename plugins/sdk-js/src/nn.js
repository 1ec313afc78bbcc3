// Typed helpers over wasi:nn: load a model the operator granted by name, run it on named
// tensors, read typed outputs. Errors become HttpErrors: `not-found` is `model_not_found` (404),
// anything else `backend_error` (500). Uses the world's interfaces (`#wit`): runs only inside the
// component.
//
//   const model = Model.load('digits');
//   const outputs = model.run({ pixels: Tensor.f32([1, 64], pixels) });
//   const scores = outputs.get('scores').toF32();

import { NnTensor, nnLoadByName } from '#wit';

import { HttpError, nnError } from './errors.js';
import { dispose } from './http.js';
import { Output, Tensor } from './tensor.js';

/**
 * A thrown wasi:nn error (its payload is the `error` resource) as an HttpError.
 * @param {any} err
 * @param {string} [model]
 */
function fromNn(err, model) {
  const resource = err?.payload;
  if (resource === undefined || typeof resource.code !== 'function') return err;
  try {
    return nnError(resource.code(), resource.data(), model);
  } finally {
    resource[dispose]();
  }
}

/** A model opened with `load-by-name`. */
export class Model {
  #graph;

  /** @param {string} name @param {any} graph */
  constructor(name, graph) {
    this.name = name;
    this.#graph = graph;
  }

  /**
   * Opens the model the operator declared as `name`; one that does not exist or that this
   * plugin was not granted is a 404 `model_not_found`.
   * @param {string} name
   */
  static load(name) {
    try {
      return new Model(name, nnLoadByName(name));
    } catch (err) {
      throw fromNn(err, name);
    }
  }

  /**
   * Runs the model once on named inputs (a fresh execution context each call).
   * @param {Record<string, Tensor> | Array<[string, Tensor]>} inputs
   * @returns {Outputs}
   */
  run(inputs) {
    if (this.#graph === undefined) throw HttpError.internal(`model '${this.name}' is closed`);
    const named = Array.isArray(inputs) ? inputs : Object.entries(inputs);
    for (const [name, tensor] of named) {
      if (!(tensor instanceof Tensor)) throw new TypeError(`input '${name}' is not a Tensor`);
    }
    let context;
    try {
      context = this.#graph.initExecutionContext();
      // The input tensors move to the host with the call.
      const results = context.compute(named.map(([name, t]) => [name, new NnTensor(t.dims, t.type, t.data)]));
      return new Outputs(
        results.map(([name, tensor]) => {
          try {
            return new Output(name, [...tensor.dimensions()], tensor.ty(), tensor.data());
          } finally {
            tensor[dispose]();
          }
        }),
      );
    } catch (err) {
      throw fromNn(err);
    } finally {
      context?.[dispose]();
    }
  }

  /** Releases the model's graph (also released when the request ends). */
  close() {
    this.#graph?.[dispose]();
    this.#graph = undefined;
  }
}

/** The named output tensors of one `Model.run`. */
export class Outputs {
  #outputs;

  /** @param {Output[]} outputs */
  constructor(outputs) {
    this.#outputs = outputs;
  }

  /**
   * The output called `name`; a missing output is a `backend_error`.
   * @param {string} name
   */
  get(name) {
    const output = this.#outputs.find((o) => o.name === name);
    if (!output) throw HttpError.backend(`the model has no output '${name}'`);
    return output;
  }

  /** The names of all outputs. */
  names() {
    return this.#outputs.map((o) => o.name);
  }
}

/** `nn.load(name)` is `Model.load(name)`. */
export const nn = Object.freeze({ load: (name) => Model.load(name), Model, Tensor });
