import type { Authenticator } from "../auth/authenticator.js";
import type { Limiter } from "../limits/limiter.js";
import type { Logger } from "../observability/logger.js";
import { authenticationHook, permissionsHook } from "./auth-hook.js";
import { createRpcLog } from "../observability/rpc-log.js";
import { concurrencyCap } from "./concurrency-cap.js";
import type { ConcurrencyCap } from "./concurrency-cap.js";
import { loggingHook } from "./logging-hook.js";
import type { Call } from "./call.js";
import { createPipeline } from "./pipeline.js";
import type { CallEnd, Pipeline, WaitingCallHook } from "./pipeline.js";
import { rateLimitHook } from "./rate-limit-hook.js";
import { requestIdHook } from "./request-id.js";

/** Counts calls (Prometheus metrics, `observability/telemetry/metrics.ts`). */
export interface CallMeter {
  /** Starts counting a call; the result runs once when it ends. */
  beginCall(call: Call): CallEnd;
}

/** Traces calls (OpenTelemetry, `observability/telemetry/tracing.ts`). */
export interface CallTracer {
  /** Starts a call's server span and makes its context the running one; the result (if any) ends the span. */
  beginCall(call: Call): CallEnd | undefined;
}

/** What the gateway's pipeline is built from. */
export interface GatewayPipelineOptions {
  /** Where the `rpc` lines go. */
  log: Logger;
  /** Calls handled at once before GATEWAY_OVERLOADED (`MAX_CONCURRENT_RPCS`). */
  maxConcurrentRpcs: number;
  /** Makes the id of a call that brings none. @default `sequentialRequestIds()`: random per process, then a counter */
  newRequestId?: () => string;
  /** Authentication and permissions; undefined = off (no hooks 3 and 4 at all, so no cost). */
  auth?: Authenticator;
  /** Per-principal rate limits and token quotas (`rateLimitHook`). @default none: no hook */
  limiter?: Limiter;
  /** Metrics (METRICS_PORT); undefined = no hook at all, so no cost. */
  metrics?: CallMeter;
  /** Tracing (an OTLP endpoint); undefined = no hook at all, so no cost. */
  tracing?: CallTracer;
}

/** The gateway's pipeline, and the cap's gauge for the status RPC. */
export interface GatewayPipeline {
  /** Handed to both paths: `pipelineInterceptor(pipeline)` for connect-node, and the gRPC fast path. */
  readonly pipeline: Pipeline;
  /** Calls counted against `MAX_CONCURRENT_RPCS` right now. */
  readonly cap: ConcurrencyCap;
}

/**
 * The gateway's call hooks, in the one order both paths run them. A hook's `begin` runs after
 * those above it and its end before theirs, so a hook sees (and its end reports) every refusal
 * by the hooks below it:
 *
 * 1. request id: first, so the log line and every answer, refusals included, carry the id;
 * 2. logging: wraps everything below, so the one line reports any refusal by them (an
 *    unauthenticated or rate-limited call is logged like any other) and the whole duration.
 *    Tracing begins just before it (the line carries the trace id; the server span covers the
 *    whole call and every refusal below) and metrics just after it (a refused call is counted
 *    with its reason), both only when configured;
 * 3. authentication (`auth-hook.ts`): who calls; UNAUTHENTICATED otherwise. Exemptions (health
 *    probes, open reflection) come from `exemptionsOf`, the table the cap uses. Before the rate
 *    limits, so unauthenticated calls cannot spend anyone's allowance;
 * 4. permissions (`auth-hook.ts`): may this identity call this method with this `x-priority`;
 *    needs 3. The model is checked by the handlers, which know it (`authorizeModel`);
 * 5. rate limits: per identity, so after 3; before the cap, so a client over its limit never
 *    takes a slot others are waiting for (`rateLimitHook`);
 * 6. concurrency cap: last, so only calls every check above admitted take a slot.
 */
export function createGatewayPipeline(options: GatewayPipelineOptions): GatewayPipeline {
  const cap = concurrencyCap(options.maxConcurrentRpcs);
  const { metrics, tracing } = options;
  const hooks: WaitingCallHook[] = [
    requestIdHook(options.newRequestId),
    ...(tracing === undefined ? [] : [{ begin: (call: Call) => tracing.beginCall(call) }]),
    loggingHook(createRpcLog(options.log)),
    ...(metrics === undefined ? [] : [{ begin: (call: Call) => metrics.beginCall(call) }]),
    ...(options.auth === undefined ? [] : [authenticationHook(options.auth), permissionsHook()]),
    ...(options.limiter === undefined ? [] : [rateLimitHook(options.limiter)]),
    cap,
  ];
  return { pipeline: createPipeline(hooks), cap };
}
