import { randomFillSync } from "node:crypto";

/**
 * W3C Trace Context (README, "Tracing"): the `traceparent` and `tracestate`
 * headers a call comes with and the gateway sends to Ollama, and new span and trace ids.
 */

/** A span's identity as it travels between services. */
export interface SpanContext {
  /** 32 lowercase hex digits, not all zero. */
  readonly traceId: string;
  /** 16 lowercase hex digits, not all zero. */
  readonly spanId: string;
  /** The `sampled` trace flag. */
  readonly sampled: boolean;
  /** The `tracestate` header, passed on unchanged ("" for none). */
  readonly traceState: string;
}

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?$/;
const ZERO_TRACE = "0".repeat(32);
const ZERO_SPAN = "0".repeat(16);
/** Longest `tracestate` passed on (the spec allows 32 entries of at most 256 characters). */
const MAX_TRACESTATE = 8192;

/**
 * Parses `traceparent` (and `tracestate`) as W3C says: version 00 exactly, a later version by its
 * first four fields (version ff is invalid); all-zero ids are invalid. Undefined when invalid.
 */
export function parseTraceparent(header: string, tracestate: string | null): SpanContext | undefined {
  const m = TRACEPARENT.exec(header.trim().toLowerCase());
  if (m === null) return undefined;
  const [, version, traceId, spanId, flags] = m;
  if (version === "ff" || (version === "00" && header.trim().length !== 55)) return undefined;
  if (traceId === ZERO_TRACE || spanId === ZERO_SPAN) return undefined;
  const state = tracestate?.trim() ?? "";
  return {
    traceId: traceId!,
    spanId: spanId!,
    sampled: (Number.parseInt(flags!, 16) & 1) === 1,
    traceState: state.length <= MAX_TRACESTATE ? state : "",
  };
}

/** The `traceparent` header of a span context (version 00). */
export function formatTraceparent(context: Pick<SpanContext, "traceId" | "spanId" | "sampled">): string {
  return `00-${context.traceId}-${context.spanId}-${context.sampled ? "01" : "00"}`;
}

/** The headers that carry `context` to the next service. */
export function traceHeaders(context: SpanContext): Record<string, string> {
  const headers: Record<string, string> = { traceparent: formatTraceparent(context) };
  if (context.traceState !== "") headers["tracestate"] = context.traceState;
  return headers;
}

/** Random bytes drawn in blocks, so a new id is a slice of a buffer rather than a system call. */
const POOL_BYTES = 4096;
const pool = Buffer.alloc(POOL_BYTES);
let used = POOL_BYTES;

function randomHex(bytes: number): string {
  for (;;) {
    if (used + bytes > POOL_BYTES) {
      randomFillSync(pool);
      used = 0;
    }
    const start = used;
    used += bytes;
    // An all-zero id is invalid: draw again (once in 2^64 at worst).
    for (let i = start; i < used; i++) if (pool[i] !== 0) return pool.toString("hex", start, used);
  }
}

/** A new random trace id. */
export const newTraceId = (): string => randomHex(16);

/** A new random span id. */
export const newSpanId = (): string => randomHex(8);
