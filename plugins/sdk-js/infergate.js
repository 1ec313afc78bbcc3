// infergate SDK for JavaScript: write infergate plugins (WebAssembly components for the
// `infergate:plugin/plugin` world, built with componentize-js by `build.mjs`).
//
// This file is the public entry; it owns `Plugin`, which ties the routes to the component's
// exports (`wasi:http/incoming-handler` and the `manifest`). The rest lives in src/:
//   schema.js   `s`, the JSON Schema builder for request and response types
//   router.js   route declarations, the manifest derived from them, dispatch (pure JS)
//   ctx.js      `Ctx`, what the host says about the request (pure JS)
//   errors.js   `HttpError` and the product's error shape (pure JS)
//   response.js `Reply`, `SseEvent`, response and SSE encoding (pure JS)
//   tensor.js   `Tensor`, `Output` (pure JS)
//   http.js     wasi:http and the host interface
//   nn.js       wasi:nn: `Model`, `nn`
//   llm.js      text generation: `llm`, `Generation`
//   config.js   wasi:config/store: `config`
//   wit.js      the world's interfaces (`#wit`) inside the component; wit-node.js: stubs for
//               plain Node, so this module also loads in a plugin's native tests
//
//   import { Plugin, s } from '../../plugins/sdk-js/infergate.js';   // or an absolute path
//   const plugin = new Plugin({ name: 'hello', version: '0.1.0', description: 'Greets people' });
//   plugin.post('/greet', { request: s.object({ name: s.string() }) }, (ctx, req) => ({ message: `Hello, ${req.name}!` }));
//   export const { incomingHandler, manifest } = plugin.exports();
//
// The module's top level runs once, when the component is built (componentize-js snapshots
// it): declare routes there, but call the host (models, llm, config) only inside handlers.

import { handle } from './src/http.js';
import { Router } from './src/router.js';

export { config } from './src/config.js';
export { Ctx } from './src/ctx.js';
export { HttpError } from './src/errors.js';
export { Generation, llm } from './src/llm.js';
export { Model, Outputs, nn } from './src/nn.js';
export { Reply, SseEvent } from './src/response.js';
export { s } from './src/schema.js';
export { Output, Tensor } from './src/tensor.js';

/** A plugin: its name, version, models and routes; `exports()` gives the component's exports. */
export class Plugin extends Router {
  /**
   * The objects the component exports; export them from the app's module:
   * `export const { incomingHandler, manifest } = plugin.exports();`
   */
  exports() {
    return {
      incomingHandler: {
        handle: (request, responseOut) => handle(this, request, responseOut),
      },
      manifest: {
        manifest: () => this.manifest(),
      },
    };
  }
}
