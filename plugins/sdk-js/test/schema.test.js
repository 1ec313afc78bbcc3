// The JSON Schema builder and the schema text a manifest carries.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { DIALECT, s, schemaText } from '../src/schema.js';

test('objects are closed and list their required properties', () => {
  const schema = s.object({
    name: s.string({ minLength: 1 }),
    mode: s.enum(['fast', 'accurate']),
    options: s.object({ count: s.integer({ minimum: 0 }), tags: s.optional(s.array(s.string())) }),
    note: s.optional(s.string({ description: 'free text' })),
  });
  assert.deepEqual(schema, {
    type: 'object',
    properties: {
      name: { type: 'string', minLength: 1 },
      mode: { type: 'string', enum: ['fast', 'accurate'] },
      options: {
        type: 'object',
        properties: { count: { type: 'integer', minimum: 0 }, tags: { type: 'array', items: { type: 'string' } } },
        required: ['count'],
        additionalProperties: false,
      },
      note: { type: 'string', description: 'free text' },
    },
    required: ['name', 'mode', 'options'],
    additionalProperties: false,
  });
});

test('an object of optional properties has no `required`', () => {
  assert.deepEqual(s.object({ a: s.optional(s.number()) }), {
    type: 'object',
    properties: { a: { type: 'number' } },
    additionalProperties: false,
  });
});

test('builders carry their keywords and leave unset ones out', () => {
  assert.deepEqual(s.number({ minimum: 0, maximum: undefined }), { type: 'number', minimum: 0 });
  assert.deepEqual(s.array(s.number({ minimum: 0, maximum: 16 }), { minItems: 64, maxItems: 64 }), {
    type: 'array',
    items: { type: 'number', minimum: 0, maximum: 16 },
    minItems: 64,
    maxItems: 64,
  });
  assert.deepEqual(s.enum([1, 2]), { enum: [1, 2] });
  assert.deepEqual(s.nullable(s.string()), { anyOf: [{ type: 'string' }, { type: 'null' }] });
  assert.deepEqual(s.boolean(), { type: 'boolean' });
  assert.deepEqual(s.any({ description: 'x' }), { description: 'x' });
  assert.throws(() => s.enum([]), TypeError);
  assert.throws(() => s.object({ a: 'string' }), /property 'a' is not a schema/);
});

test('the optional marker never reaches JSON', () => {
  const text = schemaText(s.optional(s.object({ a: s.optional(s.string()) })));
  assert.deepEqual(JSON.parse(text), {
    $schema: DIALECT,
    type: 'object',
    properties: { a: { type: 'string' } },
    additionalProperties: false,
  });
});

test('schema text is a root schema; plain objects are accepted as they are', () => {
  assert.equal(schemaText(undefined), undefined);
  const plain = { type: 'object', properties: { name: { type: 'string' } }, required: ['name'] };
  assert.deepEqual(JSON.parse(schemaText(plain)), { $schema: DIALECT, ...plain });
  const own = { $schema: 'http://json-schema.org/draft-07/schema#', type: 'string' };
  assert.deepEqual(JSON.parse(schemaText(own)), own);
  assert.throws(() => schemaText('string'), TypeError);
});
