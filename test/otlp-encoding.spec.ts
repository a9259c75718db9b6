// The hand-written OTLP protobuf encoder, checked against an independent decoder
// (test/helpers/otlp-receiver.ts, on protobuf-es's wire reader) over many random spans: every
// field, lengths that need several varint bytes, buffers that must grow, and batches reused.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { SpanBatch, encodeProtobuf, toUnixNanos } from "../src/observability/telemetry/otlp-encoding.js";
import { RecordedSpan } from "../src/observability/telemetry/span.js";
import type { AttributeValue } from "../src/observability/telemetry/span.js";
import { newSpanId, newTraceId } from "../src/observability/telemetry/trace-context.js";
import { createRng } from "../src/simulator/prng.js";
import { decodeTraceExport } from "./helpers/otlp-receiver.js";
import type { ReceivedSpan } from "./helpers/otlp-receiver.js";

/** A seeded random source (the simulator's), so a failure repeats. */
function prng(seed: number): () => number {
  const rng = createRng("otlp-encoding", seed);
  return () => rng.next();
}

const header = {
  resource: { "service.name": "ogw-test", "service.version": "1.2.3", "host.cores": 2 },
  scope: { name: "ollama-grpc-gateway", version: "1.2.3" },
};

/** Random text: ASCII mostly, sometimes multi-byte, sometimes long (lengths of two and three varint bytes). */
function text(rnd: () => number): string {
  const lengths = [0, 1, 5, 63, 64, 65, 127, 128, 300, 20_000];
  const n = lengths[Math.floor(rnd() * lengths.length)]!;
  const alphabet = rnd() < 0.7 ? "abcdefghij klmnopqrstuvwxyz.:/_-0123456789" : "aé€😀ü\u0000z";
  const chars = [...alphabet];
  let s = "";
  while (s.length < n) s += chars[Math.floor(rnd() * chars.length)];
  return s;
}

function value(rnd: () => number): AttributeValue {
  const r = rnd();
  if (r < 0.3) return text(rnd);
  if (r < 0.4) return rnd() < 0.5;
  if (r < 0.6) return Math.floor((rnd() - 0.5) * 2 ** (1 + Math.floor(rnd() * 53)));
  if (r < 0.75) return (rnd() - 0.5) * 1e6;
  if (r < 0.8) return Number.MAX_SAFE_INTEGER;
  if (r < 0.85) return Number.MIN_SAFE_INTEGER;
  return Array.from({ length: Math.floor(rnd() * 4) }, () => text(rnd));
}

/** A random ended span (recorded, not exported: its end goes nowhere). */
function randomSpan(rnd: () => number): RecordedSpan {
  // Times from 1970 to about 2200, with sub-millisecond fractions.
  const start = rnd() * 7.3e12;
  const s = new RecordedSpan(
    newTraceId(),
    rnd() < 0.3 ? "" : newSpanId(),
    rnd() < 0.5 ? "" : `vendor=${text(rnd)}`,
    text(rnd) || "span",
    1 + Math.floor(rnd() * 3),
    start,
    () => undefined,
  );
  const attributes = Math.floor(rnd() * 12);
  for (let i = 0; i < attributes; i++) s.set(`attr.${Math.floor(rnd() * 8)}.${i % 3}`, value(rnd));
  if (rnd() < 0.4)
    s.events = Array.from({ length: 1 + Math.floor(rnd() * 3) }, () => ({
      name: text(rnd),
      timeMs: start + rnd() * 1e4,
    }));
  if (rnd() < 0.3) {
    for (let i = 0; i < 1 + Math.floor(rnd() * 3); i++) {
      s.link({ traceId: newTraceId(), spanId: newSpanId(), sampled: true, traceState: rnd() < 0.5 ? "" : "k=v" });
    }
  }
  if (rnd() < 0.5) {
    s.status = 1 + Math.floor(rnd() * 2);
    if (rnd() < 0.5) s.statusMessage = text(rnd);
  }
  s.endMs = start + rnd() * 1e5;
  return s;
}

/** What the decoder should read back for `s`. */
function expected(s: RecordedSpan): Omit<ReceivedSpan, "resource" | "scope"> {
  const attributes: Record<string, unknown> = {};
  for (let i = 0; i < s.attributes.length; i += 2) {
    const v = s.attributes[i + 1]!;
    attributes[s.attributes[i] as string] = Array.isArray(v) ? [...v] : v;
  }
  return {
    traceId: s.traceId,
    spanId: s.spanId,
    parentSpanId: s.parentSpanId,
    traceState: s.traceState,
    name: s.name,
    kind: s.kind,
    startNs: toUnixNanos(s.startMs),
    endNs: toUnixNanos(s.endMs),
    attributes: attributes as ReceivedSpan["attributes"],
    events: (s.events ?? []).map((e) => ({ name: e.name, timeNs: toUnixNanos(e.timeMs) })),
    links: (s.links ?? []).map((l) => ({ traceId: l.traceId, spanId: l.spanId, traceState: l.traceState })),
    status: { code: s.status, message: s.statusMessage },
  };
}

function assertDecodes(body: Uint8Array, spans: readonly RecordedSpan[]): void {
  const got = decodeTraceExport(body);
  assert.equal(got.length, spans.length);
  got.forEach((g, i) => {
    const { resource, scope, ...rest } = g;
    assert.deepEqual(resource, header.resource);
    assert.deepEqual(scope, header.scope);
    assert.deepEqual(rest, expected(spans[i]!), `span ${i}`);
  });
}

describe("the OTLP protobuf encoder", () => {
  it("writes every field of 2,000 random spans as an independent decoder reads them", () => {
    const rnd = prng(20261203);
    for (let round = 0; round < 200; round++) {
      const spans = Array.from({ length: 1 + Math.floor(rnd() * 19) }, () => randomSpan(rnd));
      assertDecodes(encodeProtobuf(header, spans), spans);
    }
  });

  it("starts each batch over in the same buffer: a finished request keeps its bytes", () => {
    const rnd = prng(7);
    const batch = new SpanBatch(header);
    const first = Array.from({ length: 50 }, () => randomSpan(rnd));
    for (const s of first) batch.add(s);
    assert.equal(batch.size, 50);
    const firstBody = batch.finish();
    assert.equal(batch.size, 0);
    const second = Array.from({ length: 3 }, () => randomSpan(rnd));
    for (const s of second) batch.add(s);
    const secondBody = batch.finish();
    assertDecodes(firstBody, first);
    assertDecodes(secondBody, second);
    assertDecodes(batch.finish(), []);
  });

  it("encodes times to the nanosecond as the BigInt arithmetic does, up to the year 2200", () => {
    const rnd = prng(99);
    const times = [0, 0.000001, 0.5, 1, 1_048_575.999999, 1_048_576, 1_764_720_000_123.456, 7.3e12];
    for (let i = 0; i < 500; i++) times.push(rnd() * 7.3e12);
    const spans = times.map((t) => {
      const s = new RecordedSpan(newTraceId(), "", "", "t", 1, t, () => undefined);
      s.endMs = t;
      return s;
    });
    decodeTraceExport(encodeProtobuf(header, spans)).forEach((g, i) => {
      assert.equal(g.startNs, toUnixNanos(times[i]!), `start of ${times[i]}`);
      assert.equal(g.endNs, toUnixNanos(times[i]!));
    });
  });
});
