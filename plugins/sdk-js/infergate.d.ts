// Types of the infergate JavaScript SDK (infergate.js). Request bodies are typed from their
// schema: with `request: s.object({ name: s.string() })` a handler's body is `{ name: string }`.

declare const OPTIONAL: unique symbol;

/** A JSON Schema; `T` is the type of the values it accepts (phantom, for inference only). */
export interface Schema<T = unknown> {
  readonly __type?: T;
  [keyword: string]: unknown;
}

/** A property schema wrapped in `s.optional`. */
export interface OptionalSchema<T = unknown> extends Schema<T> {
  readonly [OPTIONAL]: true;
}

/** The type a schema accepts; `any` for a plain, hand-written schema. */
export type Infer<S> = S extends { readonly __type?: infer T } ? (unknown extends T ? any : T) : any;

type Simplify<T> = { [K in keyof T]: T[K] } & {};
type RequiredKeys<P> = { [K in keyof P]: P[K] extends OptionalSchema ? never : K }[keyof P];
type OptionalKeys<P> = { [K in keyof P]: P[K] extends OptionalSchema ? K : never }[keyof P];
export type ObjectOf<P extends Record<string, Schema>> = Simplify<
  { [K in RequiredKeys<P>]: Infer<P[K]> } & { [K in OptionalKeys<P>]?: Infer<P[K]> }
>;

interface Common {
  description?: string;
  title?: string;
  default?: unknown;
  examples?: unknown[];
}
interface Numeric extends Common {
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  multipleOf?: number;
}

/** The JSON Schema builder. Objects are closed (`additionalProperties: false`). */
export declare const s: {
  object<P extends Record<string, Schema>>(
    properties: P,
    options?: Common & { additionalProperties?: boolean | Schema; minProperties?: number; maxProperties?: number },
  ): Schema<ObjectOf<P>>;
  string(options?: Common & { minLength?: number; maxLength?: number; pattern?: string; format?: string }): Schema<string>;
  number(options?: Numeric): Schema<number>;
  integer(options?: Numeric): Schema<number>;
  boolean(options?: Common): Schema<boolean>;
  array<I extends Schema>(items: I, options?: Common & { minItems?: number; maxItems?: number; uniqueItems?: boolean }): Schema<Infer<I>[]>;
  enum<const V extends readonly (string | number | boolean | null)[]>(values: V, options?: Common): Schema<V[number]>;
  nullable<I extends Schema>(schema: I): Schema<Infer<I> | null>;
  any(options?: Common): Schema<any>;
  optional<I extends Schema>(schema: I): OptionalSchema<Infer<I>>;
};

export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error';

/** The context of the request being handled. Plugins see identity, never credentials. */
export interface TestContextOptions {
  requestId?: string;
  keyId?: string;
  scopes?: string[];
  /** Claim values; the Ctx passes them on as JSON text, as the host does. */
  claims?: Record<string, unknown>;
  route?: string;
  params?: Record<string, string>;
  method?: string;
  path?: string;
  /** The raw query string, without `?`. */
  query?: string;
  headers?: Record<string, string>;
  /** An object is sent as JSON. */
  body?: Uint8Array | string | object;
  log?: (level: LogLevel, message: string, fields: Array<[string, string]>) => void;
  reportUsage?: (tokensIn: number, tokensOut: number) => void;
}

export declare class Ctx {
  /** A context for native tests (`node --test`), where there is no host. */
  static forTests(tenant?: string, options?: TestContextOptions): Ctx;
  readonly requestId: string;
  readonly tenant: string;
  readonly keyId: string | undefined;
  readonly scopes: string[];
  hasScope(scope: string): boolean;
  /** (name, JSON text) pairs. */
  readonly claims: Array<[string, string]>;
  /** One claim as JSON text (`'"alice"'`, `'42'`). */
  claim(name: string): string | undefined;
  /** One claim, parsed. */
  claimValue(name: string): unknown;
  /** The matched template, as declared (`/items/{id}`). */
  readonly route: string;
  readonly params: Record<string, string>;
  param(name: string): string | undefined;
  readonly method: string;
  readonly path: string;
  readonly queryString: string | undefined;
  /** The first value of a query parameter, percent-decoded. */
  query(name: string): string | undefined;
  header(name: string): string | undefined;
  readonly headers: Array<[string, string]>;
  readonly body: Uint8Array;
  text(): string;
  /** The body as JSON; malformed JSON is a 400 `invalid_request`. */
  json(): unknown;
  reportUsage(tokensIn: number, tokensOut: number): void;
  log(level: LogLevel, message: string, fields?: Record<string, unknown>): void;
  logTrace(message: string, fields?: Record<string, unknown>): void;
  logDebug(message: string, fields?: Record<string, unknown>): void;
  logInfo(message: string, fields?: Record<string, unknown>): void;
  logWarn(message: string, fields?: Record<string, unknown>): void;
  logError(message: string, fields?: Record<string, unknown>): void;
}

/** An error a handler throws; answered with its status and the product's error body. */
export declare class HttpError extends Error {
  constructor(status: number, code: string, message: string, options?: { headers?: Record<string, string> });
  readonly status: number;
  readonly code: string;
  readonly headers: Record<string, string>;
  /** 422 `invalid_request`. */
  static invalidRequest(message: string): HttpError;
  /** 400 `invalid_request`. */
  static badRequest(message: string): HttpError;
  /** 404 `not_found`. */
  static notFound(message: string): HttpError;
  /** 404 `model_not_found`. */
  static modelNotFound(name: string): HttpError;
  /** 500 `backend_error`. */
  static backend(message: string): HttpError;
  /** 500 `internal_error`. */
  static internal(message: string): HttpError;
  toJSONText(requestId: string): string;
}

export interface ReplyOptions {
  status?: number;
  headers?: Record<string, string>;
  contentType?: string;
}

/** A response with its own status, headers or a body that is not JSON. */
export declare class Reply {
  constructor(status: number, body: Uint8Array, headers?: Record<string, string>);
  readonly status: number;
  static json(value: unknown, options?: ReplyOptions): Reply;
  static text(text: string, options?: ReplyOptions): Reply;
  static bytes(bytes: Uint8Array, options?: ReplyOptions): Reply;
  static empty(status?: number, headers?: Record<string, string>): Reply;
}

/** A server-sent event with a name or an id. */
export declare class SseEvent {
  constructor(data: unknown, options?: { event?: string; id?: string });
}

export interface RouteOptions<Req extends Schema | undefined = undefined> {
  summary?: string;
  /** The body's schema; the host rejects other bodies with 422 `invalid_request`. */
  request?: Req;
  /** A successful response's schema, for the API docs. */
  response?: Schema;
  scopes?: string[];
  /** The handler is a generator (`function*`); each value it yields is one SSE event. */
  streaming?: boolean;
}

type Result = unknown | Promise<unknown>;
type BodyHandler<Req> = (ctx: Ctx, body: Req extends Schema ? Infer<Req> : undefined) => Result;
type NoBodyHandler = (ctx: Ctx) => Result;
export type Method = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

export interface PluginInfo {
  /** 1-64 characters of a-z, 0-9, `-` or `_`; the plugin is mounted at `/{name}`. */
  name: string;
  version?: string;
  description?: string;
  /** Models the plugin opens with wasi:nn; the operator must grant each. */
  models?: string[];
}

export interface RouteManifest {
  method: Method;
  path: string;
  summary: string;
  requestSchema: string | undefined;
  responseSchema: string | undefined;
  streaming: boolean;
  scopes: string[];
}

export interface PluginManifest {
  name: string;
  version: string;
  description: string;
  routes: RouteManifest[];
  models: string[];
}

/** A plugin: its routes, its manifest and the component's exports. */
export declare class Plugin {
  constructor(info: PluginInfo);
  readonly name: string;
  readonly version: string;
  readonly description: string;
  readonly models: string[];
  get(path: string, handler: NoBodyHandler): this;
  get(path: string, options: RouteOptions<undefined>, handler: NoBodyHandler): this;
  delete(path: string, handler: NoBodyHandler): this;
  delete(path: string, options: RouteOptions<undefined>, handler: NoBodyHandler): this;
  post<Req extends Schema | undefined = undefined>(path: string, options: RouteOptions<Req>, handler: BodyHandler<Req>): this;
  post(path: string, handler: BodyHandler<undefined>): this;
  put<Req extends Schema | undefined = undefined>(path: string, options: RouteOptions<Req>, handler: BodyHandler<Req>): this;
  put(path: string, handler: BodyHandler<undefined>): this;
  patch<Req extends Schema | undefined = undefined>(path: string, options: RouteOptions<Req>, handler: BodyHandler<Req>): this;
  patch(path: string, handler: BodyHandler<undefined>): this;
  route(method: Method, path: string, options: RouteOptions<Schema | undefined>, handler: (ctx: Ctx, body: any) => Result): this;
  manifest(): PluginManifest;
  /** `export const { incomingHandler, manifest } = plugin.exports();` */
  exports(): {
    incomingHandler: { handle(request: unknown, responseOut: unknown): void | Promise<void> };
    manifest: { manifest(): PluginManifest };
  };
}

export type TensorType = 'FP32' | 'FP64' | 'I32' | 'I64' | 'U8';

/** An input tensor: dimensions, element type and little-endian bytes. */
export declare class Tensor {
  constructor(dims: number[], type: TensorType, data: Uint8Array);
  readonly dims: number[];
  readonly type: TensorType;
  readonly data: Uint8Array;
  static of(type: TensorType, dims: number[], values: ArrayLike<number> | ArrayLike<bigint>): Tensor;
  static f32(dims: number[], values: ArrayLike<number>): Tensor;
  static f64(dims: number[], values: ArrayLike<number>): Tensor;
  static i32(dims: number[], values: ArrayLike<number>): Tensor;
  static i64(dims: number[], values: ArrayLike<number | bigint>): Tensor;
  static u8(dims: number[], values: ArrayLike<number>): Tensor;
}

/** One output tensor, copied out of the host. */
export declare class Output {
  readonly name: string;
  readonly dims: number[];
  readonly type: string;
  readonly data: Uint8Array;
  toF32(): Float32Array;
  toF64(): Float64Array;
  toI32(): Int32Array;
  toI64(): BigInt64Array;
  toU8(): Uint8Array;
  /** Plain numbers for JSON; f32 values as their shortest decimal. */
  toArray(): number[];
}

export declare class Outputs {
  /** A missing output is a 500 `backend_error`. */
  get(name: string): Output;
  names(): string[];
}

/** A model opened with wasi:nn `load-by-name`. */
export declare class Model {
  /** A model not granted to this plugin is a 404 `model_not_found`. */
  static load(name: string): Model;
  readonly name: string;
  run(inputs: Record<string, Tensor> | Array<[string, Tensor]>): Outputs;
  close(): void;
}

export declare const nn: {
  load(name: string): Model;
  Model: typeof Model;
  Tensor: typeof Tensor;
};

export interface Message {
  role: 'system' | 'user' | 'assistant' | (string & {});
  content: string;
}

export interface GenerateOptions {
  maxTokens?: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  stop?: string[];
  seed?: number;
  repetitionPenalty?: number;
}

export interface Usage {
  promptTokens: number;
  completionTokens: number;
}

export type FinishReason = 'stop' | 'length';

/** A running generation: iterate it for text chunks; leaving the loop cancels it. */
export declare class Generation implements Iterable<string> {
  readonly promptTokens: number;
  /** Set once the generation has ended. */
  readonly finishReason: FinishReason | undefined;
  /** Set once the generation has ended. */
  readonly usage: Usage | undefined;
  [Symbol.iterator](): Generator<string, void, undefined>;
  read(): { text: string } | { done: true; finishReason: FinishReason; usage: Usage } | undefined;
  tryRead(): { text: string } | { done: true; finishReason: FinishReason; usage: Usage } | undefined;
  subscribe(): unknown;
  text(): string;
  cancel(): void;
}

export declare const llm: {
  /** A string is one user message. */
  chat(model: string, messages: string | Message[], options?: GenerateOptions): Generation;
  complete(model: string, text: string, options?: GenerateOptions): Generation;
  models(): Array<{ name: string; contextLength: number }>;
};

export declare const config: {
  get(key: string): string | undefined;
  /** A missing key is a 500 `plugin_misconfigured`. */
  require(key: string): string;
  all(): Record<string, string>;
};
