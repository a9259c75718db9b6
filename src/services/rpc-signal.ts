import type { HandlerContext } from "@connectrpc/connect";
import { maxDeadlinePassed } from "../errors/domain-errors.js";
import { deriveSignal } from "../util/signal-lineage.js";

/**
 * The signal that bounds one RPC's work: the client's deadline, cancel and
 * server shutdown (all in `ctx.signal`), plus the gateway's own upper bound
 * `maxMs`, which also applies when the client sent no deadline, so nothing
 * runs forever. The extra timer is cleared when the RPC ends (connect-node
 * aborts `ctx.signal` after every RPC), so no timer outlives its request.
 */
export function rpcSignal(ctx: HandlerContext, maxMs: number): AbortSignal {
  const remaining = ctx.timeoutMs();
  if (remaining !== undefined && remaining <= maxMs) return ctx.signal;
  if (ctx.signal.aborted) return ctx.signal;
  const controller = new AbortController();
  deriveSignal(controller.signal, ctx.signal);
  const timer = setTimeout(() => controller.abort(maxDeadlinePassed()), maxMs);
  ctx.signal.addEventListener(
    "abort",
    () => {
      clearTimeout(timer);
      controller.abort(ctx.signal.reason);
    },
    { once: true },
  );
  return controller.signal;
}
