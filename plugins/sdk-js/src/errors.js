// Errors: `HttpError` and how every failure is rendered in the product's one error shape,
// `{"error": {"code": "...", "message": "...", "request_id": "..."}}`, with a fitting status.
// Also the mapping of wasi:nn and llm error values to HttpErrors (by their plain JS shape, so
// this module has no WIT imports and is tested outside wasm).

/** An error a handler throws; the SDK answers it with its status and the JSON error body. */
export class HttpError extends Error {
  /**
   * @param {number} status HTTP status, such as 422
   * @param {string} code machine-readable `snake_case` code, such as `unsupported_language`
   * @param {string} message what went wrong, for people
   * @param {{ headers?: Record<string, string> }} [options] extra response headers (`retry-after`)
   */
  constructor(status, code, message, { headers = {} } = {}) {
    super(message);
    this.name = 'HttpError';
    /** @type {number} */
    this.status = status;
    /** @type {string} */
    this.code = code;
    /** @type {Record<string, string>} */
    this.headers = headers;
  }

  /** 422 `invalid_request`: well-formed JSON whose content is not acceptable. */
  static invalidRequest(message) {
    return new HttpError(422, 'invalid_request', message);
  }

  /** 400 `invalid_request`: the request itself is malformed (bad query, bad JSON). */
  static badRequest(message) {
    return new HttpError(400, 'invalid_request', message);
  }

  /** 404 `not_found`. */
  static notFound(message) {
    return new HttpError(404, 'not_found', message);
  }

  /** 404 `model_not_found`: no such model, or this plugin was not granted it. */
  static modelNotFound(name) {
    return new HttpError(404, 'model_not_found', `model '${name}' is not available to this plugin`);
  }

  /** 500 `backend_error`: the inference backend failed. */
  static backend(message) {
    return new HttpError(500, 'backend_error', message);
  }

  /** 500 `internal_error`: a bug in the plugin. */
  static internal(message) {
    return new HttpError(500, 'internal_error', message);
  }

  /**
   * The JSON text of the error response.
   * @param {string} requestId
   */
  toJSONText(requestId) {
    return errorBody(this.code, this.message, requestId);
  }
}

/**
 * The product's error body as JSON text.
 * @param {string} code
 * @param {string} message
 * @param {string} requestId
 */
export function errorBody(code, message, requestId) {
  return JSON.stringify({ error: { code, message, request_id: requestId } });
}

/** What a client sees of an exception that is not an HttpError (its details go to the log). */
export const INTERNAL_MESSAGE = 'the plugin failed unexpectedly; its log has the details';

/**
 * Any thrown value as an HttpError: HttpErrors as they are, anything else a 500
 * `internal_error` whose message does not leak the exception.
 * @param {unknown} err
 * @returns {HttpError}
 */
export function toHttpError(err) {
  if (err instanceof HttpError) return err;
  return HttpError.internal(INTERNAL_MESSAGE);
}

/**
 * Whether the JS engine ran out of memory (SpiderMonkey throws the string "out of memory"). The
 * SDK lets that escape the handler: the component traps, the host answers 500
 * `plugin_out_of_memory` and drops the instance, whose engine is in no state to go on.
 * @param {unknown} err
 */
export function isOutOfMemory(err) {
  return err === 'out of memory';
}

/**
 * A thrown value as log text: the stack when there is one.
 * @param {unknown} err
 */
export function describe(err) {
  if (err instanceof Error) {
    const head = `${err.name}: ${err.message}`;
    // V8 starts the stack with the head, SpiderMonkey does not.
    if (!err.stack) return head;
    return err.stack.startsWith(head) ? err.stack : `${head}\n${err.stack}`;
  }
  try {
    return `thrown: ${JSON.stringify(err)}`;
  } catch {
    return `thrown: ${String(err)}`;
  }
}

/**
 * A wasi:nn error (its `code()` and `data()`): `not-found` is `model_not_found` (404), anything
 * else a `backend_error` (500).
 * @param {string} code the wasi:nn error code, such as `runtime-error`
 * @param {string} data the backend's message
 * @param {string} [model] the model's name, when loading it failed
 */
export function nnError(code, data, model) {
  if (code === 'not-found') {
    return model === undefined
      ? new HttpError(404, 'model_not_found', data)
      : HttpError.modelNotFound(model);
  }
  return HttpError.backend(`wasi-nn ${code}: ${data}`);
}

/**
 * An `infergate:plugin/llm` error variant (`{tag, val}`), mapped as the Rust SDK maps it.
 * @param {{ tag: string, val: string }} err
 */
export function llmError(err) {
  const message = String(err?.val ?? '');
  switch (err?.tag) {
    case 'model-not-found':
      return new HttpError(404, 'model_not_found', message);
    case 'invalid-request':
      return HttpError.badRequest(message);
    case 'context-length-exceeded':
      return new HttpError(400, 'context_length_exceeded', message);
    case 'too-many-generations':
      return new HttpError(429, 'too_many_generations', message);
    case 'timeout':
      return new HttpError(504, 'inference_timeout', message);
    case 'backend':
      return HttpError.backend(message);
    default:
      return HttpError.backend(`unexpected llm error: ${describe(err)}`);
  }
}
