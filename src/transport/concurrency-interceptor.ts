import type { Interceptor } from "@connectrpc/connect";
import { watchStream } from "../util/watch-stream.js";
import { gatewayOverloaded } from "../errors/domain-errors.js";

/** Current number of RPCs being handled, for status and tests. */
export interface ConcurrencyGauge {
  /** RPCs in progress. */
  readonly active: number;
  /**
   * Counts one call of `service` (a type name) that does not go through the interceptor (the
   * gRPC fast path); throws RESOURCE_EXHAUSTED past the cap. Returns its release, to call once.
   */
  enter(service: string): () => void;
}

/**
 * Caps the RPCs handled at once. Past the cap a call fails at once with
 * RESOURCE_EXHAUSTED and a RetryInfo instead of queueing without bound in
 * memory. A call counts until its last message was sent, it failed, or its
 * signal fired (connect-node aborts every RPC's signal when it ends, which
 * also covers a stream the client abandoned before reading anything).
 */
export function concurrencyInterceptor(max: number, exempt: ReadonlySet<string>): Interceptor & ConcurrencyGauge {
  let active = 0;
  const enter = (service: string): (() => void) => {
    if (exempt.has(service)) return () => {};
    if (active >= max) {
      throw gatewayOverloaded(max);
    }
    active++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      active--;
    };
  };
  const interceptor: Interceptor = (next) => async (req) => {
    if (exempt.has(req.service.typeName)) return next(req);
    const leave = enter(req.service.typeName);
    const release = (): void => {
      leave();
      req.signal.removeEventListener("abort", release);
    };
    req.signal.addEventListener("abort", release, { once: true });
    let res;
    try {
      res = await next(req);
    } catch (e) {
      release();
      throw e;
    }
    if (!res.stream) {
      release();
      return res;
    }
    return { ...res, message: watchStream(res.message, { onEnd: release }) };
  };
  return Object.assign(Object.defineProperty(interceptor, "active", { get: () => active }), { enter }) as Interceptor &
    ConcurrencyGauge;
}
