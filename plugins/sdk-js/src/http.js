// The wasi:http side: reading an incoming request (method, path, query, headers, body), asking
// the router for the response, and writing it back over the output stream; plus the host
// services (`infergate:plugin/host`) a request's `Ctx` uses. Uses the world's interfaces (`#wit`):
// runs only inside the component.
//
// Stream rules followed here (as in the Rust SDK): the whole body is read with `blocking-read`
// until `closed` (or until `content-length` bytes are in); the response is handed to
// `response-outparam.set` *before* its body is written (the host reads the body as it
// streams); body bytes go out through `blocking-write-and-flush` in chunks of at most 4096
// bytes, one or more calls per streamed chunk, then `outgoing-body.finish`.

import { Fields, OutgoingBody, OutgoingResponse, ResponseOutparam, hostContext, hostLog, hostReportUsage } from '#wit';

import { HttpError, isOutOfMemory } from './errors.js';
import { errorResponse } from './router.js';
import { utf8 } from './response.js';

/** The most `blocking-write-and-flush` accepts in one call. */
const WRITE_CHUNK = 4096;
/** How much one `blocking-read` asks for. */
const READ_CHUNK = 64 * 1024;
/** How the bindings name a resource's destructor. */
export const dispose = Symbol.dispose ?? Symbol.for('dispose');

const latin1 = new TextDecoder('latin1');

/** @type {import('./ctx.js').HostServices} */
export const services = {
  reportUsage(tokensIn, tokensOut) {
    hostReportUsage(count(tokensIn), count(tokensOut));
  },
  log(level, message, fields) {
    hostLog(level, message, fields);
  },
};

/** @param {number} n */
function count(n) {
  return Number.isFinite(n) && n > 0 ? Math.floor(n) : 0;
}

/**
 * Serves one request: the body of `wasi:http/incoming-handler.handle`.
 * @param {import('./router.js').Router} router
 * @param {any} incoming an `incoming-request`
 * @param {any} outparam a `response-outparam`
 * @returns {void | Promise<void>}
 */
export function handle(router, incoming, outparam) {
  const host = hostContext();
  let response;
  try {
    response = router.respond(host, readRequest(incoming), services);
  } catch (err) {
    response = errorResponse(err, host.requestId, logError);
  }
  if (response instanceof Promise) return response.then((r) => send(r, outparam, host.requestId));
  send(response, outparam, host.requestId);
}

/** @param {string} message */
function logError(message) {
  hostLog('error', message, []);
}

/**
 * @param {any} incoming
 * @returns {import('./ctx.js').WireRequest}
 */
function readRequest(incoming) {
  const method = methodName(incoming.method());
  const pathWithQuery = incoming.pathWithQuery() ?? '/';
  const q = pathWithQuery.indexOf('?');
  const path = q < 0 ? pathWithQuery : pathWithQuery.slice(0, q);
  const query = q < 0 ? undefined : pathWithQuery.slice(q + 1);
  const fields = incoming.headers();
  /** @type {Array<[string, string]>} */
  const headers = fields.entries().map(([name, value]) => [name.toLowerCase(), latin1.decode(value)]);
  fields[dispose]();
  const lengthHeader = headers.find(([name]) => name === 'content-length')?.[1];
  const length = lengthHeader !== undefined && /^\s*\d+\s*$/.test(lengthHeader) ? Number(lengthHeader) : undefined;
  const body = readBody(incoming, length);
  incoming[dispose]();
  return { method, path, query, headers, body };
}

/**
 * Reads the whole body; with its `content-length` known, stops once that many bytes are in
 * instead of asking once more for the end of the stream.
 * @param {any} incoming
 * @param {number | undefined} length
 * @returns {Uint8Array}
 */
function readBody(incoming, length) {
  const failed = (what) => HttpError.badRequest(`cannot read the request body: ${what}`);
  let body;
  let stream;
  try {
    body = incoming.consume();
    stream = body.stream();
  } catch {
    throw failed('no body stream');
  }
  const parts = [];
  let total = 0;
  try {
    while (length === undefined || total < length) {
      let chunk;
      try {
        chunk = stream.blockingRead(READ_CHUNK);
      } catch (err) {
        if (err?.payload?.tag === 'closed') break;
        throw failed(streamErrorText(err));
      }
      parts.push(chunk);
      total += chunk.length;
    }
  } finally {
    // The stream is a child of the body: drop it first.
    stream[dispose]();
    body[dispose]();
  }
  if (parts.length === 1) return parts[0];
  const bytes = new Uint8Array(total);
  let offset = 0;
  for (const part of parts) {
    bytes.set(part, offset);
    offset += part.length;
  }
  return bytes;
}

/**
 * Sends the response: the head first, then the body, chunk by chunk.
 * @param {import('./response.js').WireResponse} response
 * @param {any} outparam
 * @param {string} requestId
 */
function send(response, outparam, requestId) {
  let outgoing;
  try {
    outgoing = responseHead(response);
  } catch (err) {
    response.chunks?.return();
    const detail = err?.payload?.tag ?? err?.message ?? String(err);
    const error = HttpError.internal(`the plugin made an invalid response (status ${response.status}): ${detail}`);
    logError(error.message);
    response = errorResponse(error, requestId, logError);
    outgoing = responseHead(response);
  }
  // `body` can only be taken once, so it is taken before the response moves to the host.
  const body = outgoing.body();
  ResponseOutparam.set(outparam, { tag: 'ok', val: outgoing });
  const stream = body.write();
  let complete = false;
  try {
    if (response.chunks) {
      // A failed write (the client went away) leaves the loop, which ends the generator.
      for (const chunk of response.chunks) write(stream, chunk);
    } else {
      write(stream, response.body);
    }
    complete = true;
  } catch (err) {
    if (isOutOfMemory(err)) throw err;
    if (err?.payload === undefined) logError(`writing the response failed: ${err}`);
  } finally {
    stream[dispose]();
  }
  // Finishing tells the host the body is complete; an unfinished body reads as an error.
  if (complete) OutgoingBody.finish(body, undefined);
  else body[dispose]();
}

/** @param {import('./response.js').WireResponse} response */
function responseHead(response) {
  let headers;
  try {
    headers = Fields.fromList(response.headers.map(([name, value]) => [name, utf8(value)]));
  } catch (err) {
    throw new Error(`invalid header (${err?.payload?.tag ?? err})`);
  }
  const outgoing = new OutgoingResponse(headers);
  try {
    outgoing.setStatusCode(response.status);
  } catch {
    outgoing[dispose]();
    throw new Error('invalid status');
  }
  return outgoing;
}

/**
 * @param {any} stream an `output-stream`
 * @param {Uint8Array} bytes
 */
function write(stream, bytes) {
  for (let offset = 0; offset < bytes.length; offset += WRITE_CHUNK) {
    stream.blockingWriteAndFlush(bytes.subarray(offset, offset + WRITE_CHUNK));
  }
}

/** @param {any} err a thrown `stream-error` */
function streamErrorText(err) {
  const payload = err?.payload;
  if (payload?.tag === 'last-operation-failed') {
    try {
      return payload.val.toDebugString();
    } catch {
      return 'the last operation failed';
    }
  }
  return String(err);
}

/** @param {{ tag: string, val?: string }} method */
function methodName(method) {
  return method.tag === 'other' ? String(method.val).toUpperCase() : method.tag.toUpperCase();
}
