// `#wit` outside the component (plain Node: unit tests, a plugin's own tests): the same
// names as wit.js, each throwing, so the SDK loads natively and handlers that do not call the
// host can be tested with `Ctx.forTests()`.

function unavailable(name) {
  return function () {
    throw new Error(`${name} exists only inside the component (build it with build.mjs)`);
  };
}

export const hostLog = unavailable('infergate:plugin/host.log');
export const hostReadRequest = unavailable('infergate:plugin/host.read-request');
export const hostReportUsage = unavailable('infergate:plugin/host.report-usage');
export const hostRespond = unavailable('infergate:plugin/host.respond');
export const llmModels = unavailable('infergate:plugin/llm.models');
export const llmStart = unavailable('infergate:plugin/llm.start');
export const configGet = unavailable('wasi:config/store.get');
export const configGetAll = unavailable('wasi:config/store.get-all');
export const Fields = unavailable('wasi:http/types.fields');
export const OutgoingBody = unavailable('wasi:http/types.outgoing-body');
export const OutgoingResponse = unavailable('wasi:http/types.outgoing-response');
export const ResponseOutparam = unavailable('wasi:http/types.response-outparam');
export const nnLoadByName = unavailable('wasi:nn/graph.load-by-name');
export const NnTensor = unavailable('wasi:nn/tensor.tensor');
