import { AsyncLocalStorage } from "node:async_hooks";
import type { Context } from "@opentelemetry/api";

/**
 * The trace context of the call whose code is running, so the layers below the pipeline (the
 * failover, upstream requests, the embedding cache) parent their spans to the call's server span
 * without every function passing it along.
 *
 * The tracing hook *enters* the call's context (`AsyncLocalStorage.enterWith`) rather than
 * running the rest of the call inside it, because the hook only begins a call: both paths invoke
 * the handler after the pipeline returns, in the same synchronous turn, so the handler and every
 * promise it creates inherit it. What runs later in that same turn (the next call on the same
 * HTTP/2 read) enters its own first; every call, traced or not, enters one, so no call inherits
 * another's. Only exists while tracing is on: with tracing off no AsyncLocalStorage is created.
 */
export interface TraceScope {
  /** The running call's context, if one was entered. */
  active(): Context | undefined;
  /** Makes `context` the running call's, for this synchronous turn and everything it starts. */
  enter(context: Context): void;
}

/** Creates a scope (one per gateway). */
export function createTraceScope(): TraceScope {
  const storage = new AsyncLocalStorage<Context>();
  return {
    active: () => storage.getStore(),
    enter: (context) => storage.enterWith(context),
  };
}
