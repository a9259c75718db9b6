import { newSpanId } from "./trace-context.js";
import type { SpanContext } from "./trace-context.js";

/**
 * One span as the gateway records it: plain data, exported in batches (`span-exporter.ts`).
 * Times are milliseconds since the epoch on one clock (`now`), `performance.timeOrigin` plus
 * `performance.now()`, so spans of a call never seem out of order.
 */

/** OTLP span kinds used here. */
export const SpanKind = { INTERNAL: 1, SERVER: 2, CLIENT: 3 } as const;

/** OTLP status codes. */
export const StatusCode = { UNSET: 0, OK: 1, ERROR: 2 } as const;

/** What an attribute can hold here. */
export type AttributeValue = string | number | boolean | readonly string[];

/** The tracing clock: ms since the epoch, sub-millisecond precision. */
export function now(): number {
  return performance.timeOrigin + performance.now();
}

/** A `performance.now()` instant on the tracing clock. */
export function fromPerformance(instant: number): number {
  return performance.timeOrigin + instant;
}

/**
 * A recorded span; `end` hands it to the exporter, once (which encodes it at once: a span is
 * garbage as soon as it ended, never held until its batch leaves).
 */
export class RecordedSpan {
  readonly spanId = newSpanId();
  /**
   * The attributes in the order first set, flat: key, value, key, value... (one array, where a
   * Map per span was a hash table per span).
   */
  readonly attributes: AttributeValue[] = [];
  events: { name: string; timeMs: number }[] | undefined;
  /** Spans of other traces this one is tied to (an Embed batch's request and the calls it serves). */
  links: SpanContext[] | undefined;
  status: number = StatusCode.UNSET;
  statusMessage = "";
  endMs = 0;
  #ended = false;

  constructor(
    readonly traceId: string,
    /** The parent's span id, "" for a root. */
    readonly parentSpanId: string,
    /** The trace's `tracestate`, passed on. */
    readonly traceState: string,
    readonly name: string,
    readonly kind: number,
    readonly startMs: number,
    private readonly onEnd: (span: RecordedSpan) => void,
  ) {}

  /** This span as the parent of the next service's (what goes into `traceparent`). */
  get context(): SpanContext {
    return { traceId: this.traceId, spanId: this.spanId, sampled: true, traceState: this.traceState };
  }

  /** Sets (or replaces, in place) an attribute. */
  set(key: string, value: AttributeValue): this {
    const a = this.attributes;
    for (let i = 0; i < a.length; i += 2) {
      if (a[i] === key) {
        a[i + 1] = value;
        return this;
      }
    }
    a.push(key, value);
    return this;
  }

  /** Links this span to `other` (OTLP span links: no parent, a relation across traces). */
  link(other: SpanContext): void {
    (this.links ??= []).push(other);
  }

  /** Adds a timed event. */
  event(name: string, timeMs: number = now()): void {
    (this.events ??= []).push({ name, timeMs });
  }

  /** Marks the span failed, with a message. */
  fail(message: string): void {
    this.status = StatusCode.ERROR;
    this.statusMessage = message.slice(0, 500);
  }

  /** A child span starting now (or at `startMs`). */
  child(name: string, kind: number, startMs: number = now()): RecordedSpan {
    return new RecordedSpan(this.traceId, this.spanId, this.traceState, name, kind, startMs, this.onEnd);
  }

  /** Ends the span (later calls do nothing) and hands it to the exporter. */
  end(endMs: number = now()): void {
    if (this.#ended) return;
    this.#ended = true;
    this.endMs = Math.max(endMs, this.startMs);
    this.onEnd(this);
  }
}
