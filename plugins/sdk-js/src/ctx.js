// `Ctx`: what the host established about the current request (identity, matched route, path
// parameters) plus what the plugin saw on the wire (method, path, query, headers, body), and the
// host services scoped to it (usage reporting, logging). One is built per request; nothing of
// a request is kept in module state. The host services are passed in, so this module has no
// WIT imports and is tested outside wasm.

import { HttpError } from './errors.js';

/** Log levels accepted by `ctx.log`. */
export const LOG_LEVELS = Object.freeze(['trace', 'debug', 'info', 'warn', 'error']);

/**
 * @typedef {object} RequestContext what `infergate:plugin/host.context()` returns
 * @property {string} requestId
 * @property {string} tenant
 * @property {string | undefined} keyId
 * @property {string[]} scopes
 * @property {Array<[string, string]>} claims (name, JSON text) pairs
 * @property {string} route the matched template, as declared
 * @property {Array<[string, string]>} params (name, value) pairs
 *
 * @typedef {object} WireRequest what the plugin read from wasi:http
 * @property {string} method upper case
 * @property {string} path relative to the plugin's mount, without the query
 * @property {string | undefined} query the raw query string, without `?`
 * @property {Array<[string, string]>} headers (lower-case name, value) pairs
 * @property {Uint8Array} body
 *
 * @typedef {object} HostServices
 * @property {(tokensIn: number, tokensOut: number) => void} reportUsage
 * @property {(level: string, message: string, fields: Array<[string, string]>) => void} log
 */

const decoder = new TextDecoder();

/** The context of the request being handled. Plugins see identity, never credentials. */
export class Ctx {
  #host;
  #request;
  #services;
  /** @type {Record<string, string> | undefined} */
  #params;

  /**
   * @param {RequestContext} host
   * @param {WireRequest} request
   * @param {HostServices} services
   */
  constructor(host, request, services) {
    this.#host = host;
    this.#request = request;
    this.#services = services;
  }

  /**
   * A context for a plugin's native tests (`node --test`), where there is no host:
   * `greet(Ctx.forTests('acme'), { name: 'Ada' })`. Logs and usage go to the `log` and
   * `reportUsage` callbacks, if given.
   * @param {string} [tenant]
   * @param {object} [options]
   * @param {string} [options.requestId]
   * @param {string} [options.keyId]
   * @param {string[]} [options.scopes]
   * @param {Record<string, unknown>} [options.claims] values, passed on as JSON text
   * @param {string} [options.route]
   * @param {Record<string, string>} [options.params]
   * @param {string} [options.method]
   * @param {string} [options.path]
   * @param {string} [options.query] the raw query string
   * @param {Record<string, string>} [options.headers]
   * @param {Uint8Array | string | object} [options.body] an object is sent as JSON
   * @param {HostServices['log']} [options.log]
   * @param {HostServices['reportUsage']} [options.reportUsage]
   */
  static forTests(tenant = 'test', options = {}) {
    const { requestId = 'test-request', keyId, scopes = [], claims = {}, route = '/', params = {} } = options;
    const { method = 'GET', path = route, query, headers = {}, body = new Uint8Array() } = options;
    const bytes =
      body instanceof Uint8Array ? body : new TextEncoder().encode(typeof body === 'string' ? body : JSON.stringify(body));
    return new Ctx(
      {
        requestId,
        tenant,
        keyId,
        scopes: [...scopes],
        claims: Object.entries(claims).map(([name, value]) => [name, JSON.stringify(value)]),
        route,
        params: Object.entries(params),
      },
      {
        method: method.toUpperCase(),
        path,
        query,
        headers: Object.entries(headers).map(([name, value]) => [name.toLowerCase(), String(value)]),
        body: bytes,
      },
      { log: options.log ?? (() => {}), reportUsage: options.reportUsage ?? (() => {}) },
    );
  }

  /** The id the host gave this request (also in `x-request-id` and error bodies). */
  get requestId() {
    return this.#host.requestId;
  }

  /** The caller's tenant. */
  get tenant() {
    return this.#host.tenant;
  }

  /** The id of the caller's API key, if it used one. @returns {string | undefined} */
  get keyId() {
    return this.#host.keyId ?? undefined;
  }

  /** Scopes granted to the caller. @returns {string[]} */
  get scopes() {
    return [...this.#host.scopes];
  }

  /** Whether the caller holds `scope`. @param {string} scope */
  hasScope(scope) {
    return this.#host.scopes.includes(scope);
  }

  /** Selected claims of the caller's token, as (name, JSON text) pairs. @returns {Array<[string, string]>} */
  get claims() {
    return this.#host.claims.map(([name, value]) => [name, value]);
  }

  /**
   * One claim as JSON text (`'"alice"'`, `'42'`), as the host passes it.
   * @param {string} name
   * @returns {string | undefined}
   */
  claim(name) {
    return lookup(this.#host.claims, name);
  }

  /**
   * One claim's value, parsed from its JSON text.
   * @param {string} name
   * @returns {unknown}
   */
  claimValue(name) {
    const text = this.claim(name);
    return text === undefined ? undefined : JSON.parse(text);
  }

  /** The route template that matched, exactly as declared (`/items/{id}`). */
  get route() {
    return this.#host.route;
  }

  /** Path parameters by name (`{ id: '42' }` for `/items/{id}`). @returns {Record<string, string>} */
  get params() {
    this.#params ??= Object.fromEntries(this.#host.params);
    return { ...this.#params };
  }

  /**
   * One path parameter: `ctx.param('id')` for `/items/{id}`.
   * @param {string} name
   * @returns {string | undefined}
   */
  param(name) {
    return lookup(this.#host.params, name);
  }

  /** The HTTP method, upper case. */
  get method() {
    return this.#request.method;
  }

  /** The request path relative to the plugin's mount (`/items/42`), without the query. */
  get path() {
    return this.#request.path;
  }

  /** The raw query string, without the `?`. @returns {string | undefined} */
  get queryString() {
    return this.#request.query;
  }

  /**
   * The first value of query parameter `name`, percent-decoded (`+` is a space).
   * @param {string} name
   * @returns {string | undefined}
   */
  query(name) {
    return queryValue(this.#request.query, name);
  }

  /**
   * The first value of header `name` (case-insensitive).
   * @param {string} name
   * @returns {string | undefined}
   */
  header(name) {
    const wanted = name.toLowerCase();
    return this.#request.headers.find(([key]) => key.toLowerCase() === wanted)?.[1];
  }

  /** All request headers, as (name, value) pairs. @returns {Array<[string, string]>} */
  get headers() {
    return this.#request.headers.map(([name, value]) => [name, value]);
  }

  /** The raw request body. @returns {Uint8Array} */
  get body() {
    return this.#request.body;
  }

  /** The body as UTF-8 text. */
  text() {
    return decoder.decode(this.#request.body);
  }

  /**
   * The body parsed as JSON; malformed JSON is a 400 `invalid_request`.
   * @returns {unknown}
   */
  json() {
    return parseJson(this.#request.body);
  }

  /**
   * Adds to this request's usage (tokens read, tokens generated); calls add up.
   * @param {number} tokensIn
   * @param {number} tokensOut
   */
  reportUsage(tokensIn, tokensOut) {
    this.#services.reportUsage(tokensIn, tokensOut);
  }

  /**
   * Writes a structured log line; the host tags it with the plugin and the request id.
   * @param {'trace' | 'debug' | 'info' | 'warn' | 'error'} level
   * @param {string} message
   * @param {Record<string, unknown>} [fields] values that are not strings are logged as JSON
   */
  log(level, message, fields = {}) {
    if (!LOG_LEVELS.includes(level)) throw new TypeError(`unknown log level '${level}'`);
    const pairs = Object.entries(fields).map(([key, value]) => [
      key,
      typeof value === 'string' ? value : JSON.stringify(value) ?? String(value),
    ]);
    this.#services.log(level, String(message), pairs);
  }

  /** @param {string} message @param {Record<string, unknown>} [fields] */
  logTrace(message, fields) {
    this.log('trace', message, fields);
  }

  /** @param {string} message @param {Record<string, unknown>} [fields] */
  logDebug(message, fields) {
    this.log('debug', message, fields);
  }

  /** @param {string} message @param {Record<string, unknown>} [fields] */
  logInfo(message, fields) {
    this.log('info', message, fields);
  }

  /** @param {string} message @param {Record<string, unknown>} [fields] */
  logWarn(message, fields) {
    this.log('warn', message, fields);
  }

  /** @param {string} message @param {Record<string, unknown>} [fields] */
  logError(message, fields) {
    this.log('error', message, fields);
  }
}

/**
 * Parses a JSON body; malformed JSON (or none) is a 400 `invalid_request`.
 * @param {Uint8Array} bytes
 * @returns {unknown}
 */
export function parseJson(bytes) {
  if (bytes.length === 0) throw HttpError.badRequest('the body is empty; expected JSON');
  let text;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw HttpError.badRequest('the body is not valid UTF-8');
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw HttpError.badRequest(`the body is not valid JSON: ${err.message}`);
  }
}

/**
 * @param {Array<[string, string]>} pairs
 * @param {string} name
 */
function lookup(pairs, name) {
  return pairs.find(([key]) => key === name)?.[1];
}

/**
 * The first value of `name` in a raw query string.
 * @param {string | undefined} query
 * @param {string} name
 */
export function queryValue(query, name) {
  if (!query) return undefined;
  for (const pair of query.split('&')) {
    const eq = pair.indexOf('=');
    const [key, value] = eq < 0 ? [pair, ''] : [pair.slice(0, eq), pair.slice(eq + 1)];
    if (percentDecode(key) === name) return percentDecode(value);
  }
  return undefined;
}

/**
 * Decodes `%XX` escapes and `+`; invalid escapes are kept as they are, invalid UTF-8 is
 * replaced (as the Rust SDK does).
 * @param {string} input
 */
export function percentDecode(input) {
  const bytes = [];
  const encoder = new TextEncoder();
  for (let i = 0; i < input.length; i++) {
    const c = input[i];
    if (c === '+') {
      bytes.push(0x20);
    } else if (c === '%' && /^[0-9a-fA-F]{2}$/.test(input.slice(i + 1, i + 3))) {
      bytes.push(parseInt(input.slice(i + 1, i + 3), 16));
      i += 2;
    } else {
      const codePoint = input.codePointAt(i);
      bytes.push(...encoder.encode(String.fromCodePoint(codePoint)));
      if (codePoint > 0xffff) i++; // the second half of a surrogate pair
    }
  }
  return decoder.decode(new Uint8Array(bytes));
}
