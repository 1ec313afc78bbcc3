// What handlers return and how it goes on the wire: `Reply` (a response with its own status,
// headers or a body that is not JSON), `SseEvent` (a server-sent event with a name or id), and
// the encoding of values into response bytes and SSE event text.
// Pure JavaScript: no WIT imports.

const encoder = new TextEncoder();

/**
 * A response as the wasi:http side writes it: either `body` (all in memory) or `chunks`
 * (written and flushed one by one as they are produced).
 * @typedef {object} WireResponse
 * @property {number} status
 * @property {Array<[string, string]>} headers
 * @property {Uint8Array} [body]
 * @property {Generator<Uint8Array, void, undefined>} [chunks]
 */

/**
 * @typedef {object} ReplyOptions
 * @property {number} [status] 200 unless set
 * @property {Record<string, string>} [headers]
 * @property {string} [contentType]
 */

/** A response with a chosen status, headers or non-JSON body; return it from a handler. */
export class Reply {
  /**
   * @param {number} status
   * @param {Uint8Array} body
   * @param {Record<string, string>} [headers]
   */
  constructor(status, body, headers = {}) {
    if (!Number.isInteger(status) || status < 100 || status > 599) {
      throw new TypeError(`invalid HTTP status ${status}`);
    }
    this.status = status;
    this.body = body;
    this.headers = Object.entries(headers).map(([name, value]) => [name.toLowerCase(), String(value)]);
  }

  /**
   * `value` as JSON (`Reply.json(item, { status: 201 })`).
   * @param {unknown} value
   * @param {ReplyOptions} [options]
   */
  static json(value, { status = 200, headers = {}, contentType = 'application/json' } = {}) {
    return new Reply(status, encoder.encode(JSON.stringify(value)), { 'content-type': contentType, ...headers });
  }

  /**
   * @param {string} text
   * @param {ReplyOptions} [options]
   */
  static text(text, { status = 200, headers = {}, contentType = 'text/plain; charset=utf-8' } = {}) {
    return new Reply(status, encoder.encode(text), { 'content-type': contentType, ...headers });
  }

  /**
   * @param {Uint8Array} bytes
   * @param {ReplyOptions} [options]
   */
  static bytes(bytes, { status = 200, headers = {}, contentType = 'application/octet-stream' } = {}) {
    return new Reply(status, bytes, { 'content-type': contentType, ...headers });
  }

  /**
   * An empty response (`Reply.empty(204)`).
   * @param {number} [status]
   * @param {Record<string, string>} [headers]
   */
  static empty(status = 204, headers = {}) {
    return new Reply(status, new Uint8Array(0), headers);
  }

  /** @returns {WireResponse} */
  toWire() {
    return { status: this.status, headers: this.headers, body: this.body };
  }
}

/** A server-sent event with a name (`event:`) or an id; yield it from a streaming handler. */
export class SseEvent {
  /**
   * @param {unknown} data a string as it is, anything else as JSON
   * @param {{ event?: string, id?: string }} [options]
   */
  constructor(data, { event, id } = {}) {
    this.data = data;
    this.event = event;
    this.id = id;
  }
}

/**
 * One yielded value as SSE text: a string is the data as it is, an `SseEvent` carries its
 * name and id, anything else is JSON. `undefined` yields nothing.
 * @param {unknown} value
 * @returns {string}
 */
export function encodeEvent(value) {
  if (value === undefined) return '';
  const { data, event, id } = value instanceof SseEvent ? value : { data: value };
  let text = '';
  if (event !== undefined) text += `event: ${oneLine(event)}\n`;
  if (id !== undefined) text += `id: ${oneLine(id)}\n`;
  const payload = typeof data === 'string' ? data : JSON.stringify(data ?? null);
  for (const line of payload.split(/\r\n|\r|\n/)) text += `data: ${line}\n`;
  return `${text}\n`;
}

/** @param {string} field */
function oneLine(field) {
  return String(field).replace(/[\r\n]/g, ' ');
}

/**
 * A handler's return value as a non-streamed response: a `Reply` as it is, `undefined` a 204,
 * anything else 200 JSON.
 * @param {unknown} value
 * @returns {WireResponse}
 */
export function renderValue(value) {
  if (value instanceof Reply) return value.toWire();
  if (value === undefined) return Reply.empty(204).toWire();
  const text = JSON.stringify(value);
  if (text === undefined) throw new TypeError(`a handler returned ${typeof value}, which is not JSON`);
  return { status: 200, headers: [['content-type', 'application/json']], body: encoder.encode(text) };
}

/**
 * @param {string} text
 * @returns {Uint8Array}
 */
export function utf8(text) {
  return encoder.encode(text);
}
