// The smallest infergate plugin in JavaScript: `POST /hello/greet {"name": "Ada"}`.
import { Plugin, s } from '../../plugins/sdk-js/infergate.js';

const plugin = new Plugin({ name: 'hello', version: '0.1.0', description: 'Greets people' });

plugin.post(
  '/greet',
  {
    summary: 'Greet someone',
    request: s.object({ name: s.string() }),
    response: s.object({ message: s.string() }),
  },
  (ctx, req) => ({ message: `Hello, ${req.name}! (tenant ${ctx.tenant})` }),
);

export const { incomingHandler, manifest } = plugin.exports();
