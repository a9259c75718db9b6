import { Code, ConnectError } from "@connectrpc/connect";
import type { Interceptor } from "@connectrpc/connect";
import { errorReason } from "../errors/gateway-error.js";
import type { Logger } from "./logger.js";
import { kRpcInfo } from "./rpc-info.js";
import type { RpcInfo } from "./rpc-info.js";
import { watchStream } from "../util/watch-stream.js";

/**
 * Starts one RPC's log line: call the returned function exactly once when the call ends, with
 * its error (undefined = OK). It writes the line and adds the request id to the error's
 * metadata (sent in the trailers), so a client can quote it.
 */
export type RpcLog = (method: string, info: RpcInfo | undefined, streaming: boolean) => (err?: unknown) => void;

/**
 * One line per RPC when it ends: request id, method, model, node, status code, duration and
 * (for streams) messages sent. Prompts are never logged. Server errors (INTERNAL, UNKNOWN) are
 * logged at error level with their cause; everything else at info. Shared by the interceptor
 * (connect-node) and the gRPC fast path, so both log the same lines.
 */
export function createRpcLog(log: Logger): RpcLog {
  return (method, info, streaming) => {
    const started = performance.now();
    return (err?: unknown): void => {
      const ms = Math.round((performance.now() - started) * 100) / 100;
      const line: Record<string, unknown> = {
        requestId: info?.requestId,
        method,
        ms,
      };
      if (info?.model) line["model"] = info.model;
      if (info?.node) line["node"] = info.node;
      if (streaming && info) line["messages"] = info.messages;
      if (err === undefined) {
        line["code"] = "ok";
        log.info(line, "rpc");
        return;
      }
      tagged(err, info?.requestId);
      const ce = ConnectError.from(err);
      line["code"] = Code[ce.code];
      const reason = errorReason(ce);
      if (reason) line["reason"] = reason;
      line["error"] = ce.rawMessage;
      if (ce.code === Code.Internal || ce.code === Code.Unknown) {
        line["cause"] = describeCause(ce.cause ?? err);
        log.error(line, "rpc");
      } else {
        log.info(line, "rpc");
      }
    };
  };
}

/**
 * The RPC log for calls served by connect-node. It also echoes the request id in the
 * `x-request-id` response header.
 */
export function loggingInterceptor(rpcLog: RpcLog): Interceptor {
  return (next) => async (req) => {
    const info = req.contextValues.get(kRpcInfo);
    const done = rpcLog(`${req.service.typeName}/${req.method.name}`, info, req.stream);
    let res;
    try {
      res = await next(req);
    } catch (e) {
      done(e);
      throw e;
    }
    if (info?.requestId) res.header.set("x-request-id", info.requestId);
    if (!res.stream) {
      done();
      return res;
    }
    return {
      ...res,
      message: watchStream(res.message, {
        onEnd: ({ error, abandoned }) =>
          // Abandoned: the client went away mid-stream.
          done(abandoned ? (req.signal.reason ?? new ConnectError("client went away", Code.Canceled)) : error),
      }),
    };
  };
}

/** Adds the request id to an error's trailers, so the client can quote it. */
function tagged(e: unknown, requestId: string | undefined): unknown {
  if (requestId && e instanceof ConnectError) e.metadata.set("x-request-id", requestId);
  return e;
}

function describeCause(cause: unknown): unknown {
  if (cause instanceof Error) return { name: cause.name, message: cause.message, stack: cause.stack };
  return cause;
}
