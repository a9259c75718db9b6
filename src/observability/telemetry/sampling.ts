import type { SamplerName } from "../../config/observability-config.js";

/**
 * Whether a call is traced, as OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG define it (the
 * OpenTelemetry SDK's samplers, decided here before any span exists): a call that is not traced
 * costs no span object at all, where the SDK would make a non-recording span with fresh ids for
 * every call it drops (README, "Tracing", cost). Pure.
 */

/** The trace context a call came with (its `traceparent`). */
export interface RemoteParent {
  /** 32 lowercase hex digits. */
  traceId: string;
  /** The `sampled` flag the caller set. */
  sampled: boolean;
}

/**
 * The SDK's trace-id ratio rule, so services sampling the same trace id at the same ratio agree:
 * the four 32-bit words of the id XORed together, compared with ratio × 2^32 − 1.
 */
export function traceIdBelowRatio(traceId: string, ratio: number): boolean {
  if (ratio >= 1) return true;
  if (ratio <= 0 || !/^[0-9a-f]{32}$/i.test(traceId)) return false;
  let acc = 0;
  for (let i = 0; i < 32; i += 8) acc = (acc ^ Number.parseInt(traceId.slice(i, i + 8), 16)) >>> 0;
  return acc < Math.floor(ratio * 0xffffffff);
}

/**
 * The decision for a call with `parent` (undefined: it brought no trace context). Roots of the
 * ratio samplers draw `random()` (the trace id does not exist yet; it is as random).
 */
export function sampleCall(
  sampler: SamplerName,
  ratio: number,
  parent: RemoteParent | undefined,
  random: () => number = Math.random,
): boolean {
  if (parent !== undefined && sampler.startsWith("parentbased_")) return parent.sampled;
  switch (sampler) {
    case "always_on":
    case "parentbased_always_on":
      return true;
    case "always_off":
    case "parentbased_always_off":
      return false;
    case "traceidratio":
    case "parentbased_traceidratio":
      if (parent !== undefined) return traceIdBelowRatio(parent.traceId, ratio);
      return ratio >= 1 || (ratio > 0 && random() < ratio);
  }
}
