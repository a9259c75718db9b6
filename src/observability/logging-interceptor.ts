import { Code, ConnectError } from "@connectrpc/connect";
import type { Interceptor } from "@connectrpc/connect";
import { errorReason } from "../errors/gateway-error.js";
import type { Logger } from "./logger.js";
import { kRpcInfo } from "./rpc-info.js";
import { watchStream } from "../transport/watch-stream.js";

/**
 * Logs exactly one line per RPC when it ends: request id, method, model,
 * node, status code, duration and (for streams) messages sent. Prompts are
 * never logged. Server errors (INTERNAL, UNKNOWN) are logged at error level
 * with their cause; everything else at info.
 *
 * It also echoes the request id in the `x-request-id` response header so a
 * client can quote it.
 */
export function loggingInterceptor(log: Logger): Interceptor {
  return (next) => async (req) => {
    const started = performance.now();
    const info = req.contextValues.get(kRpcInfo);
    const method = `${req.service.typeName}/${req.method.name}`;
    const done = (err?: unknown): void => {
      const ms = Math.round((performance.now() - started) * 100) / 100;
      const line: Record<string, unknown> = {
        requestId: info?.requestId,
        method,
        ms,
      };
      if (info?.model) line["model"] = info.model;
      if (info?.node) line["node"] = info.node;
      if (req.stream && info) line["messages"] = info.messages;
      if (err === undefined) {
        line["code"] = "ok";
        log.info(line, "rpc");
        return;
      }
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
    let res;
    try {
      res = await next(req);
    } catch (e) {
      done(e);
      throw tagged(e, info?.requestId);
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
        mapError: (e) => tagged(e, info?.requestId),
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
