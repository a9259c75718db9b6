import type { RpcLog } from "../observability/rpc-log.js";
import type { CallHook } from "./pipeline.js";

/**
 * The one `rpc` log line per call (see `createRpcLog`): started when the call begins, written
 * when it ends, with the error the client got, including refusals by the hooks after it.
 */
export function loggingHook(rpcLog: RpcLog): CallHook {
  return {
    begin: (call) => rpcLog(`${call.method.parent.typeName}/${call.method.name}`, call.info, call.streaming),
  };
}
