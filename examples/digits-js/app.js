// `digits` in JavaScript: classifies an 8x8 grey-scale image of a handwritten digit (the
// scikit-learn "digits" layout: 64 values in 0..=16, row-major) with the model the operator
// grants as `digits` (input `pixels` f32 [1, 64], output `scores` f32 [1, 10] probabilities).
// Same route and JSON as the Rust plugin in plugins/digits.
import { HttpError, Model, Plugin, Tensor, s } from '../../plugins/sdk-js/infergate.js';

const PIXELS = 64;

const plugin = new Plugin({
  name: 'digits',
  version: '0.1.0',
  description: 'Classifies 8x8 images of handwritten digits',
  models: ['digits'],
});

plugin.post(
  '/classify',
  {
    summary: 'Classify an 8x8 image of a handwritten digit',
    request: s.object({
      pixels: s.array(s.number({ minimum: 0, maximum: 16 }), {
        minItems: PIXELS,
        maxItems: PIXELS,
        description: '64 pixel intensities in 0..=16, row-major 8x8',
      }),
    }),
    response: s.object({
      digit: s.integer({ minimum: 0, maximum: 9, description: 'The most likely digit' }),
      scores: s.array(s.number(), { description: 'Probability of each digit 0..=9' }),
    }),
  },
  (ctx, { pixels }) => {
    // The host validated the body against the schema; the model's input is checked anyway.
    if (pixels.length !== PIXELS) {
      throw HttpError.invalidRequest(`pixels must have exactly ${PIXELS} values, got ${pixels.length}`);
    }
    const outputs = Model.load('digits').run({ pixels: Tensor.f32([1, PIXELS], pixels) });
    const scores = outputs.get('scores').toArray();
    if (scores.length !== 10) throw HttpError.backend(`expected 10 scores, got ${scores.length}`);
    // The last of equal maxima, as the Rust plugin picks it.
    const digit = scores.reduce((best, score, i) => (score >= scores[best] ? i : best), 0);
    return { digit, scores };
  },
);

export const { incomingHandler, manifest } = plugin.exports();
