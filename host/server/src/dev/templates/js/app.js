// {{name}}: an infergate plugin. `POST /{{name}}/greet {"name": "Ada"}` answers
// `{"message": "Hello, Ada! (tenant acme)"}`.
import { Plugin, HttpError, s } from '{{home}}/plugins/sdk-js/infergate.js';

const plugin = new Plugin({ name: '{{name}}', version: '0.1.0', description: 'Greets people' });

export function greet(ctx, req) {
  if (!req.name.trim()) throw HttpError.invalidRequest('name must not be empty');
  return { message: `Hello, ${req.name}! (tenant ${ctx.tenant})` };
}

plugin.post('/greet', {
  summary: 'Greet someone',
  request: s.object({ name: s.string() }),
  response: s.object({ message: s.string() }),
}, greet);

export const { incomingHandler, manifest } = plugin.exports();
