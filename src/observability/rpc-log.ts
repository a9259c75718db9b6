import { Code } from "@connectrpc/connect";
import type { ConnectError } from "@connectrpc/connect";
import { isServerError } from "../errors/client-errors.js";
import { errorReason } from "../errors/gateway-error.js";
import type { Logger } from "./logger.js";
import type { RpcInfo } from "./rpc-info.js";

/**
 * Starts one RPC's log line: call the returned function exactly once when the call ends, with
 * the error the client is sent (undefined = OK). It only writes the line: what the client gets
 * (headers, trailers) is the pipeline's business, so the error is never modified.
 */
export type RpcLog = (method: string, info: RpcInfo, streaming: boolean) => (error: ConnectError | undefined) => void;

/**
 * One line per RPC when it ends: request id, trace id (when the call is traced), method, principal
 * (its name only, never a credential), model (and the model that served it when an alias or a
 * fallback chose another, with the fallback's reason), node, status code, duration and (for
 * streams) messages sent. Prompts are never logged. Server errors (INTERNAL, UNKNOWN) are
 * logged at error level with their cause; everything else at info, without a stack, including
 * INTERNAL errors the client caused with bytes the gateway cannot decode (`isServerError`). The
 * call pipeline's logging hook (`pipeline/logging-hook.ts`) calls it for both connect-node and
 * the gRPC fast path, so both write the same lines.
 */
export function createRpcLog(log: Logger): RpcLog {
  return (method, info, streaming) => {
    const started = performance.now();
    return (error) => {
      const ms = Math.round((performance.now() - started) * 100) / 100;
      const line: Record<string, unknown> = {
        requestId: info.requestId,
        method,
        ms,
      };
      if (info.principal) line["principal"] = info.principal;
      if (info.traceId) line["traceId"] = info.traceId;
      if (info.model) line["model"] = info.model;
      if (info.servedModel && info.servedModel !== info.model) line["servedModel"] = info.servedModel;
      if (info.fallbackReason) line["fallbackReason"] = info.fallbackReason;
      if (info.node) line["node"] = info.node;
      if (streaming) line["messages"] = info.messages;
      if (error === undefined) {
        line["code"] = "ok";
        log.info(line, "rpc");
        return;
      }
      line["code"] = Code[error.code];
      const reason = errorReason(error);
      if (reason) line["reason"] = reason;
      line["error"] = error.rawMessage;
      if (isServerError(error)) {
        line["cause"] = describeCause(error.cause ?? error);
        log.error(line, "rpc");
      } else {
        log.info(line, "rpc");
      }
    };
  };
}

function describeCause(cause: unknown): unknown {
  if (cause instanceof Error) return { name: cause.name, message: cause.message, stack: cause.stack };
  return cause;
}
