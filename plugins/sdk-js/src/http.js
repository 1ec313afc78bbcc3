// The wasi:http side: reading an incoming request (method, path, query, headers, body), asking
// the router for the response, and writing it back; plus the host services
// (`infergate:plugin/host`) a request's `Ctx` uses. Uses the world's interfaces (`#wit`): runs
// only inside the component.
//
// The request is read whole with `host.read-request`, and a whole response is sent with
// `host.respond`: one host call each, where `wasi:http`'s resources take about twenty. A streamed
// response goes through `wasi:http` (as in the Rust SDK): it is handed to `response-outparam.set`
// *before* its body is written (the host reads the body as it streams), and its bytes go out
// through `blocking-write-and-flush` in chunks of at most 4096 bytes, one or more calls per
// streamed chunk, then `outgoing-body.finish`.

import {
  Fields,
  OutgoingBody,
  OutgoingResponse,
  ResponseOutparam,
  hostLog,
  hostReadRequest,
  hostReportUsage,
  hostRespond,
} from '#wit';

import { HttpError, isOutOfMemory } from './errors.js';
import { errorResponse } from './router.js';
import { utf8 } from './response.js';

/** The most `blocking-write-and-flush` accepts in one call. */
const WRITE_CHUNK = 4096;
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
  incoming[dispose]();
  const wire = hostReadRequest();
  const host = wire.context;
  let response;
  try {
    response = router.respond(host, readRequest(wire), services);
  } catch (err) {
    response = errorResponse(err, host.requestId, logError);
  }
  if (response instanceof Promise) return response.then((r) => answer(r, outparam, host.requestId));
  answer(response, outparam, host.requestId);
}

/** @param {string} message */
function logError(message) {
  hostLog('error', message, []);
}

/**
 * The request as the router takes it.
 * @param {any} wire what `host.read-request` returned
 * @returns {import('./ctx.js').WireRequest}
 */
function readRequest(wire) {
  const pathWithQuery = wire.pathWithQuery || '/';
  const q = pathWithQuery.indexOf('?');
  const path = q < 0 ? pathWithQuery : pathWithQuery.slice(0, q);
  const query = q < 0 ? undefined : pathWithQuery.slice(q + 1);
  /** @type {Array<[string, string]>} */
  const headers = wire.headers.map(([name, value]) => [name, latin1.decode(value)]);
  return { method: wire.method, path, query, headers, body: wire.body };
}

/**
 * Answers: a whole body in one host call, a streamed one through `wasi:http`.
 * @param {import('./response.js').WireResponse} response
 * @param {any} outparam
 * @param {string} requestId
 */
function answer(response, outparam, requestId) {
  if (response.chunks) {
    send(response, outparam, requestId);
    return;
  }
  try {
    respond(response);
  } catch (err) {
    respond(invalidResponse(response, err?.payload ?? err?.message ?? String(err), requestId));
  }
  outparam[dispose]();
}

/**
 * The error answer, logged, for a response the host refused (a bad status or header).
 * @param {import('./response.js').WireResponse} response
 * @param {string} detail
 * @param {string} requestId
 */
function invalidResponse(response, detail, requestId) {
  const error = HttpError.internal(`the plugin made an invalid response (status ${response.status}): ${detail}`);
  logError(error.message);
  return errorResponse(error, requestId, logError);
}

/** @param {import('./response.js').WireResponse} response */
function respond(response) {
  hostRespond(
    response.status,
    response.headers.map(([name, value]) => [name, utf8(value)]),
    response.body,
  );
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
    response = invalidResponse(response, err?.payload?.tag ?? err?.message ?? String(err), requestId);
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
