// JSON Schema builder: `s.object({...})`, `s.string()`, `s.array(item)`... Owns how request and
// response types are written down. Every builder returns a plain JSON Schema object (so a plain
// object written by hand is accepted wherever a builder's result is); objects are closed
// (`additionalProperties: false`) and list their non-optional properties as `required`.
// Pure JavaScript: no WIT imports, usable (and tested) outside wasm.

/** The dialect of the schemas in a manifest (what the Rust SDK emits too). */
export const DIALECT = 'https://json-schema.org/draft/2020-12/schema';

/** Marks a property schema as optional; symbols never reach JSON. */
const OPTIONAL = Symbol('infergate.optional');

/**
 * @typedef {Record<string, any>} JsonSchema
 * @typedef {{ description?: string, title?: string, default?: any, examples?: any[] }} Common
 */

/**
 * Copies the keyword options that are set (an `undefined` option is left out).
 * @param {JsonSchema} schema
 * @param {Record<string, any> | undefined} options
 * @returns {JsonSchema}
 */
function withOptions(schema, options) {
  for (const [key, value] of Object.entries(options ?? {})) {
    if (value !== undefined) schema[key] = value;
  }
  return schema;
}

/**
 * Whether a property schema was wrapped in `s.optional`.
 * @param {JsonSchema} schema
 */
export function isOptional(schema) {
  return Boolean(schema?.[OPTIONAL]);
}

export const s = {
  /**
   * A closed object: every property listed, those not wrapped in `s.optional` required.
   * @param {Record<string, JsonSchema>} properties
   * @param {Common & { additionalProperties?: boolean | JsonSchema, minProperties?: number, maxProperties?: number }} [options]
   */
  object(properties, options) {
    const props = {};
    const required = [];
    for (const [name, schema] of Object.entries(properties)) {
      if (schema === null || typeof schema !== 'object') {
        throw new TypeError(`s.object: property '${name}' is not a schema`);
      }
      const { [OPTIONAL]: optional, ...plain } = schema;
      props[name] = plain;
      if (!optional) required.push(name);
    }
    const schema = { type: 'object', properties: props };
    if (required.length > 0) schema.required = required;
    schema.additionalProperties = false;
    return withOptions(schema, options);
  },

  /** @param {Common & { minLength?: number, maxLength?: number, pattern?: string, format?: string }} [options] */
  string(options) {
    return withOptions({ type: 'string' }, options);
  },

  /** @param {Common & { minimum?: number, maximum?: number, exclusiveMinimum?: number, exclusiveMaximum?: number, multipleOf?: number }} [options] */
  number(options) {
    return withOptions({ type: 'number' }, options);
  },

  /** @param {Common & { minimum?: number, maximum?: number, exclusiveMinimum?: number, exclusiveMaximum?: number, multipleOf?: number }} [options] */
  integer(options) {
    return withOptions({ type: 'integer' }, options);
  },

  /** @param {Common} [options] */
  boolean(options) {
    return withOptions({ type: 'boolean' }, options);
  },

  /**
   * @param {JsonSchema} items the schema of every item
   * @param {Common & { minItems?: number, maxItems?: number, uniqueItems?: boolean }} [options]
   */
  array(items, options) {
    return withOptions({ type: 'array', items: strip(items) }, options);
  },

  /**
   * One of a fixed list of values (`s.enum(['fast', 'accurate'])`).
   * @param {Array<string | number | boolean | null>} values
   * @param {Common} [options]
   */
  enum(values, options) {
    if (!Array.isArray(values) || values.length === 0) {
      throw new TypeError('s.enum: expected a non-empty array of values');
    }
    const schema = values.every((v) => typeof v === 'string') ? { type: 'string' } : {};
    schema.enum = [...values];
    return withOptions(schema, options);
  },

  /**
   * The value or `null`.
   * @param {JsonSchema} schema
   */
  nullable(schema) {
    return { anyOf: [strip(schema), { type: 'null' }] };
  },

  /**
   * Any JSON value.
   * @param {Common} [options]
   */
  any(options) {
    return withOptions({}, options);
  },

  /**
   * A property that may be left out (only meaningful inside `s.object`).
   * @param {JsonSchema} schema
   */
  optional(schema) {
    return { ...schema, [OPTIONAL]: true };
  },
};

/** The schema without the optional marker (for positions where optional means nothing). */
function strip(schema) {
  const { [OPTIONAL]: _, ...plain } = schema;
  return plain;
}

/**
 * The JSON text of a route's schema as the manifest carries it: a root schema with `$schema`.
 * @param {JsonSchema | undefined} schema
 * @returns {string | undefined}
 */
export function schemaText(schema) {
  if (schema === undefined || schema === null) return undefined;
  if (typeof schema !== 'object' || Array.isArray(schema)) {
    throw new TypeError('a route schema must be a JSON Schema object');
  }
  return JSON.stringify({ $schema: DIALECT, ...strip(schema) });
}
