// The world's interfaces, as the SDK uses them inside the component. Modules import them as
// `#wit` (package.json "imports"): build.mjs bundles the component with the condition
// `infergate-component`, which resolves `#wit` here; plain Node (tests) resolves it to
// wit-node.js, where every one of them throws.

export {
  log as hostLog,
  readRequest as hostReadRequest,
  reportUsage as hostReportUsage,
  respond as hostRespond,
} from 'infergate:plugin/host@0.1.3';
export { models as llmModels, start as llmStart } from 'infergate:plugin/llm@0.1.3';
export { get as configGet, getAll as configGetAll } from 'wasi:config/store@0.2.0-rc.1';
export { Fields, OutgoingBody, OutgoingResponse, ResponseOutparam } from 'wasi:http/types@0.2.10';
export { loadByName as nnLoadByName } from 'wasi:nn/graph@0.2.0-rc-2024-10-28';
export { Tensor as NnTensor } from 'wasi:nn/tensor@0.2.0-rc-2024-10-28';
