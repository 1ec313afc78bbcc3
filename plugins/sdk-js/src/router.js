// The plugin's routes: declaring them (`router.post('/greet', {...}, handler)`), the manifest
// derived from them, and serving one request: finding the route (404/405 inside the plugin),
// decoding the JSON body, calling the handler and rendering its result, a stream of server-sent
// events or an error in the product's shape. Host services come in as arguments, so this module
// has no WIT imports and is tested outside wasm; `infergate.js` connects it to wasi:http.

import { Ctx, parseJson } from './ctx.js';
import { HttpError, describe, isOutOfMemory, toHttpError } from './errors.js';
import { Reply, encodeEvent, renderValue, utf8 } from './response.js';
import { schemaText } from './schema.js';

/** @typedef {import('./ctx.js').RequestContext} RequestContext */
/** @typedef {import('./ctx.js').WireRequest} WireRequest */
/** @typedef {import('./ctx.js').HostServices} HostServices */
/** @typedef {import('./response.js').WireResponse} WireResponse */

/** The methods a route may declare (the host accepts these). */
export const METHODS = Object.freeze(['GET', 'POST', 'PUT', 'PATCH', 'DELETE']);

const PLUGIN_NAME = /^[a-z0-9_-]{1,64}$/;
const PARAM_NAME = /^[A-Za-z0-9_-]+$/;
const ROUTE_OPTIONS = new Set(['summary', 'request', 'response', 'scopes', 'streaming']);

/**
 * @typedef {object} RouteOptions
 * @property {string} [summary] one line for the API docs
 * @property {object} [request] JSON Schema of the body; the host rejects other bodies (422)
 * @property {object} [response] JSON Schema of a successful response, for the API docs
 * @property {string[]} [scopes] scopes a caller needs (the host enforces them)
 * @property {boolean} [streaming] the handler is a generator; each value is one SSE event
 */

/**
 * A path template as segments: `{ literal }` or `{ param }`; errors as the host words them.
 * @param {string} path
 * @returns {Array<{ literal?: string, param?: string }>}
 */
export function parseTemplate(path) {
  if (typeof path !== 'string' || !path.startsWith('/')) {
    throw new TypeError(`path \`${path}\` must start with \`/\``);
  }
  const rest = path.slice(1);
  if (rest === '') return [];
  const names = new Set();
  return rest.split('/').map((part) => {
    if (part.startsWith('{') && part.endsWith('}')) {
      const name = part.slice(1, -1);
      if (!PARAM_NAME.test(name)) throw new TypeError(`path \`${path}\`: bad parameter name \`${name}\``);
      if (names.has(name)) throw new TypeError(`path \`${path}\`: parameter \`${name}\` appears twice`);
      names.add(name);
      return { param: name };
    }
    if (part === '' || /[{}?#%]/.test(part)) throw new TypeError(`path \`${path}\`: bad segment \`${part}\``);
    return { literal: part };
  });
}

/**
 * The parameters of `path` if it matches `segments`, else `undefined`.
 * @param {Array<{ literal?: string, param?: string }>} segments
 * @param {string} path
 * @returns {Array<[string, string]> | undefined}
 */
export function matchTemplate(segments, path) {
  const parts = path === '/' || path === '' ? [] : path.replace(/^\//, '').split('/');
  if (parts.length !== segments.length) return undefined;
  const params = [];
  for (let i = 0; i < parts.length; i++) {
    const segment = segments[i];
    if (segment.literal !== undefined) {
      if (segment.literal !== parts[i]) return undefined;
    } else {
      if (parts[i] === '') return undefined;
      let value;
      try {
        value = decodeURIComponent(parts[i]);
      } catch {
        value = parts[i];
      }
      params.push([segment.param, value]);
    }
  }
  return params;
}

/** One declared route. */
export class Route {
  /**
   * @param {string} method
   * @param {string} path
   * @param {RouteOptions} options
   * @param {Function} handler
   */
  constructor(method, path, options, handler) {
    this.method = String(method).toUpperCase();
    if (!METHODS.includes(this.method)) throw new TypeError(`unsupported method ${method}`);
    this.path = path;
    this.segments = parseTemplate(path);
    for (const key of Object.keys(options)) {
      if (!ROUTE_OPTIONS.has(key)) {
        throw new TypeError(`route ${this.method} ${path}: unknown option \`${key}\` (expected one of ${[...ROUTE_OPTIONS].join(', ')})`);
      }
    }
    const { summary = '', request, response, scopes = [], streaming = false } = options;
    if (request !== undefined && (this.method === 'GET' || this.method === 'DELETE')) {
      throw new TypeError(`route ${this.method} ${path}: a ${this.method} route has no request body`);
    }
    if (typeof handler !== 'function') throw new TypeError(`route ${this.method} ${path}: the handler is not a function`);
    this.summary = String(summary);
    this.request = request;
    this.response = response;
    this.scopes = [...scopes].map(String);
    this.streaming = Boolean(streaming);
    this.handler = handler;
    // Fail at build time (the module's top level runs when the component is built), not later.
    this.requestSchema = schemaText(request);
    this.responseSchema = schemaText(response);
  }

  /** The route as the manifest declares it (`infergate:plugin/manifest.route`). */
  toManifest() {
    return {
      method: this.method,
      path: this.path,
      summary: this.summary,
      requestSchema: this.requestSchema,
      responseSchema: this.responseSchema,
      streaming: this.streaming,
      scopes: this.scopes,
    };
  }

  /** How specific the template is: literal segments before parameters win. */
  get rank() {
    return this.segments.map((s) => (s.literal !== undefined ? '0' : '1')).join('');
  }
}

/**
 * The plugin's declaration (name, version, models, routes) and request dispatch; `Plugin` in
 * `infergate.js` adds the component exports.
 */
export class Router {
  /** @type {Route[]} */
  #routes = [];

  /**
   * @param {{ name: string, version?: string, description?: string, models?: string[] }} info
   */
  constructor({ name, version = '0.0.0', description = '', models = [] }) {
    if (!PLUGIN_NAME.test(name ?? '')) {
      throw new TypeError(`plugin name \`${name}\` must be 1-64 characters of a-z, 0-9, \`-\` or \`_\``);
    }
    this.name = name;
    this.version = String(version);
    this.description = String(description);
    this.models = [...models].map(String);
  }

  /**
   * Declares a route. `handler(ctx, body)` returns the response value (JSON), a `Reply`, or
   * for a `streaming` route an iterator (a `function*` generator) of events.
   * @param {string} method
   * @param {string} path
   * @param {RouteOptions | Function} options
   * @param {Function} [handler]
   */
  route(method, path, options, handler) {
    if (typeof options === 'function') [options, handler] = [{}, options];
    const route = new Route(method, path, options ?? {}, handler);
    const shape = `${route.method} ${route.segments.map((s) => s.literal ?? '{}').join('/')}`;
    if (this.#routes.some((r) => `${r.method} ${r.segments.map((s) => s.literal ?? '{}').join('/')}` === shape)) {
      throw new TypeError(`route ${route.method} ${path} is declared twice`);
    }
    this.#routes.push(route);
    return this;
  }

  /** `GET path`: `handler(ctx)`. @param {string} path @param {RouteOptions | Function} options @param {Function} [handler] */
  get(path, options, handler) {
    return this.route('GET', path, options, handler);
  }

  /** `POST path`: `handler(ctx, body)`. @param {string} path @param {RouteOptions | Function} options @param {Function} [handler] */
  post(path, options, handler) {
    return this.route('POST', path, options, handler);
  }

  /** `PUT path`, like `post`. @param {string} path @param {RouteOptions | Function} options @param {Function} [handler] */
  put(path, options, handler) {
    return this.route('PUT', path, options, handler);
  }

  /** `PATCH path`, like `post`. @param {string} path @param {RouteOptions | Function} options @param {Function} [handler] */
  patch(path, options, handler) {
    return this.route('PATCH', path, options, handler);
  }

  /** `DELETE path`, like `get`. @param {string} path @param {RouteOptions | Function} options @param {Function} [handler] */
  delete(path, options, handler) {
    return this.route('DELETE', path, options, handler);
  }

  /** The declared routes. */
  get routes() {
    return [...this.#routes];
  }

  /** The manifest the host reads once when it loads the plugin. */
  manifest() {
    return {
      name: this.name,
      version: this.version,
      description: this.description,
      routes: this.#routes.map((r) => r.toManifest()),
      models: this.models,
    };
  }

  /**
   * The route for a request and its path parameters: by (method, template) as the host matched
   * it, else by matching the literal path (when the host matched no template, as in local
   * tests). A path no route has is a 404, a path with routes for other methods a 405.
   * @param {string} method
   * @param {string} path
   * @param {string} [template] the template the host matched
   * @returns {{ route: Route, params?: Array<[string, string]> }}
   */
  match(method, path, template) {
    const declared = this.#routes.find((r) => r.method === method && r.path === template);
    if (declared) return { route: declared };
    const hits = this.#routes
      .map((route) => ({ route, params: matchTemplate(route.segments, path) }))
      .filter((hit) => hit.params !== undefined);
    const hit = hits
      .filter((h) => h.route.method === method)
      .sort((a, b) => (a.route.rank < b.route.rank ? -1 : a.route.rank > b.route.rank ? 1 : 0))[0];
    if (hit) return hit;
    if (hits.length > 0) {
      const allow = [...new Set(hits.map((h) => h.route.method))].join(', ');
      throw new HttpError(405, 'method_not_allowed', `${method} is not allowed on ${path}; use ${allow}`, {
        headers: { allow },
      });
    }
    throw HttpError.notFound(`no route for ${method} ${path} in plugin '${this.name}'`);
  }

  /**
   * Serves one request. Returns the response, or a promise of it when a handler is async.
   * @param {RequestContext} context what the host said about the request
   * @param {WireRequest} request what came on the wire
   * @param {HostServices} services
   * @returns {WireResponse | Promise<WireResponse>}
   */
  respond(context, request, services) {
    const fail = (err, ctx) => this.#errorResponse(err, context.requestId, ctx ?? new Ctx(context, request, services));
    let ctx;
    try {
      const { route, params } = this.match(request.method, request.path, context.route);
      ctx = new Ctx(params ? { ...context, route: route.path, params } : context, request, services);
      const body = route.request !== undefined ? parseJson(request.body) : undefined;
      const result = route.handler(ctx, body);
      if (isThenable(result)) {
        return Promise.resolve(result).then(
          (value) => this.#render(route, value, ctx),
          (err) => fail(err, ctx),
        );
      }
      return this.#render(route, result, ctx);
    } catch (err) {
      return fail(err, ctx);
    }
  }

  /**
   * @param {Route} route
   * @param {unknown} value
   * @param {Ctx} ctx
   * @returns {WireResponse}
   */
  #render(route, value, ctx) {
    try {
      if (route.streaming && isIterable(value)) return this.#stream(value[Symbol.iterator](), ctx);
      if (value !== null && typeof value === 'object' && Symbol.asyncIterator in value) {
        throw new TypeError(`${route.method} ${route.path}: async iterators cannot stream; use a function* generator`);
      }
      return renderValue(value);
    } catch (err) {
      return this.#errorResponse(err, ctx.requestId, ctx);
    }
  }

  /**
   * A stream of server-sent events. The first event is produced before the response head, so
   * an error before it still gets its own status; a later error ends the stream with
   * `event: error` and the error body.
   * @param {Iterator<unknown>} events
   * @param {Ctx} ctx
   * @returns {WireResponse}
   */
  #stream(events, ctx) {
    const first = events.next();
    const self = this;
    function* chunks() {
      let step = first;
      try {
        while (!step.done) {
          const text = encodeEvent(step.value);
          if (text) yield utf8(text);
          step = events.next();
        }
      } catch (err) {
        const error = self.#report(err, ctx);
        yield utf8(`event: error\ndata: ${error.toJSONText(ctx.requestId)}\n\n`);
      } finally {
        // Also when the client went away mid-stream: the handler's `finally` blocks run (an
        // LLM generation is cancelled there).
        try {
          events.return?.();
        } catch (err) {
          self.#report(err, ctx);
        }
      }
    }
    return {
      status: 200,
      headers: [
        ['content-type', 'text/event-stream'],
        ['cache-control', 'no-cache'],
      ],
      chunks: chunks(),
    };
  }

  /**
   * @param {unknown} err
   * @param {string} requestId
   * @param {Ctx} ctx
   * @returns {WireResponse}
   */
  #errorResponse(err, requestId, ctx) {
    return errorResponse(err, requestId, (message) => ctx.logError(message));
  }

  /**
   * @param {unknown} err
   * @param {Ctx} ctx
   */
  #report(err, ctx) {
    return report(err, (message) => ctx.logError(message));
  }
}

/**
 * The error response for a thrown value, in the product's shape.
 * @param {unknown} err
 * @param {string} requestId
 * @param {(message: string) => void} logError where exceptions that are not HttpErrors go
 * @returns {WireResponse}
 */
export function errorResponse(err, requestId, logError) {
  const error = report(err, logError);
  const headers = [['content-type', 'application/json']];
  for (const [name, value] of Object.entries(error.headers ?? {})) headers.push([name.toLowerCase(), String(value)]);
  return { status: error.status, headers, body: utf8(error.toJSONText(requestId)) };
}

/**
 * A thrown value as an HttpError; what is not one is a bug, logged with its stack. Running out
 * of memory is rethrown (see `isOutOfMemory`).
 * @param {unknown} err
 * @param {(message: string) => void} logError
 */
function report(err, logError) {
  if (isOutOfMemory(err)) throw err;
  const error = toHttpError(err);
  if (error !== err) {
    try {
      logError(`unhandled exception: ${describe(err)}`);
    } catch {
      // Logging must not turn an error response into a trap.
    }
  }
  return error;
}

/** @param {unknown} value */
function isThenable(value) {
  return value !== null && typeof value === 'object' && typeof value.then === 'function';
}

/** What a streaming route streams: a generator, or any iterable but a string or a `Reply`. @param {unknown} value */
function isIterable(value) {
  return value !== null && typeof value === 'object' && !(value instanceof Reply) && typeof value[Symbol.iterator] === 'function';
}
