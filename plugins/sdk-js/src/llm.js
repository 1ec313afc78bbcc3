// Text generation on language models the host owns (`infergate:plugin/llm`), chunk by chunk.
// The host renders the chat template, tokenizes, checks the context and the tenant's budget,
// samples and counts the tokens; the plugin decides what the client sees. A `Generation` is
// iterable (text chunks, waiting for each); after the end it holds `finishReason` and `usage`.
// Leaving the loop early cancels it. Uses the world's interfaces (`#wit`): runs only inside the
// component.
//
//   const generation = llm.chat('smollm2-135m-instruct', [{ role: 'user', content: 'Hi!' }], { maxTokens: 32 });
//   for (const text of generation) yield text;
//   generation.usage; // { promptTokens, completionTokens }

import { llmModels, llmStart } from '#wit';

import { llmError } from './errors.js';
import { dispose } from './http.js';

const PARAMS = ['maxTokens', 'temperature', 'topP', 'topK', 'stop', 'seed', 'repetitionPenalty'];

/**
 * @typedef {object} GenerateOptions sampling parameters; unset ones take the host's default
 * @property {number} [maxTokens] the most tokens to generate (default: the rest of the context)
 * @property {number} [temperature] 0 is greedy (default 0.8)
 * @property {number} [topP]
 * @property {number} [topK]
 * @property {string[]} [stop] stop before any of these (at most 4, each at most 64 bytes)
 * @property {number} [seed] makes sampling reproducible
 * @property {number} [repetitionPenalty] 1.0 turns it off (the default)
 *
 * @typedef {{ role: 'system' | 'user' | 'assistant' | string, content: string }} Message
 * @typedef {{ promptTokens: number, completionTokens: number }} Usage
 */

/** @param {GenerateOptions} options */
function params(options = {}) {
  for (const key of Object.keys(options)) {
    if (!PARAMS.includes(key)) throw new TypeError(`unknown generation option \`${key}\` (expected one of ${PARAMS.join(', ')})`);
  }
  const { maxTokens, temperature, topP, topK, stop = [], seed, repetitionPenalty } = options;
  return { maxTokens, temperature, topP, topK, stop: [...stop], seed, repetitionPenalty };
}

/** Calls an llm function, turning its error variant into an HttpError. */
function call(f) {
  try {
    return f();
  } catch (err) {
    throw err?.payload?.tag !== undefined ? llmError(err.payload) : err;
  }
}

/** A running generation: iterate it for text chunks; `cancel()` (or leaving the loop) stops it. */
export class Generation {
  #inner;

  /** @param {any} inner the `generation` resource */
  constructor(inner) {
    this.#inner = inner;
    /** Tokens in the prompt, as the host counted them. @type {number} */
    this.promptTokens = inner.promptTokens();
    /** Why it ended, once it has: `'stop'` or `'length'`. @type {'stop' | 'length' | undefined} */
    this.finishReason = undefined;
    /** The tokens the host counted, once it has ended. @type {Usage | undefined} */
    this.usage = undefined;
  }

  /**
   * The next event, waiting for it: `{ text }`, or `{ done: true, finishReason, usage }` at the
   * end; `undefined` after the end or once cancelled.
   * @returns {{ text: string } | { done: true, finishReason: 'stop' | 'length', usage: Usage } | undefined}
   */
  read() {
    return this.#event(() => this.#inner.read());
  }

  /** Like `read`, without waiting: `undefined` when nothing new is ready yet. */
  tryRead() {
    return this.#event(() => this.#inner.tryRead());
  }

  /** A `wasi:io/poll` pollable, ready when `tryRead` has something. */
  subscribe() {
    return this.#inner.subscribe();
  }

  /** The text chunks, as the model produces them. @returns {Generator<string, void, undefined>} */
  *[Symbol.iterator]() {
    try {
      for (let event = this.read(); event !== undefined; event = this.read()) {
        if ('text' in event) yield event.text;
      }
    } finally {
      this.cancel();
    }
  }

  /** Waits for the whole text. */
  text() {
    let text = '';
    for (const chunk of this) text += chunk;
    return text;
  }

  /** Stops the generation (the host stops decoding at the next token); harmless after the end. */
  cancel() {
    this.#inner?.[dispose]();
    this.#inner = undefined;
  }

  #event(read) {
    if (this.#inner === undefined) return undefined;
    let event;
    try {
      event = call(read);
    } catch (err) {
      this.cancel();
      throw err;
    }
    if (event === undefined) {
      this.cancel();
      return undefined;
    }
    if (event.tag === 'text') return { text: event.val };
    const [finishReason, usage] = event.val;
    this.finishReason = finishReason;
    this.usage = { promptTokens: usage.promptTokens, completionTokens: usage.completionTokens };
    this.cancel();
    return { done: true, finishReason, usage: this.usage };
  }
}

/** @param {string | Message[]} messages */
function chatMessages(messages) {
  const list = typeof messages === 'string' ? [{ role: 'user', content: messages }] : messages;
  return list.map(({ role, content }) => ({ role: String(role), content: String(content) }));
}

export const llm = Object.freeze({
  /**
   * Starts a chat generation; a string is one user message. Errors: `model_not_found` (404),
   * `invalid_request` (400), `context_length_exceeded` (400), `too_many_generations` (429). A
   * budget that cannot cover the prompt plus `maxTokens` (429 `quota_exceeded`) or a full model
   * queue (503 `queue_full`) ends the call in the host before this returns.
   * @param {string} model
   * @param {string | Message[]} messages
   * @param {GenerateOptions} [options]
   */
  chat(model, messages, options) {
    const prompt = { tag: 'chat', val: chatMessages(messages) };
    return new Generation(call(() => llmStart(model, prompt, params(options))));
  },

  /**
   * Continues `text` as it is, without a chat template.
   * @param {string} model
   * @param {string} text
   * @param {GenerateOptions} [options]
   */
  complete(model, text, options) {
    return new Generation(call(() => llmStart(model, { tag: 'raw', val: String(text) }, params(options))));
  },

  /** The language models granted to this plugin. @returns {Array<{ name: string, contextLength: number }>} */
  models() {
    return llmModels().map(({ name, contextLength }) => ({ name, contextLength }));
  },
});
