import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import type { AttributeValue, RecordedSpan } from "./span.js";

/**
 * OTLP trace export requests (opentelemetry-proto, collector/trace/v1 ExportTraceServiceRequest),
 * encoded directly: protobuf for OTLP/HTTP's default `http/protobuf`, JSON for `http/json`. One
 * resource and one instrumentation scope per request (this process, this gateway).
 */

/** What every span of a request shares. */
export interface ExportHeader {
  /** Resource attributes: service.name, service.version, ... */
  resource: Readonly<Record<string, AttributeValue>>;
  /** The instrumentation scope. */
  scope: { name: string; version: string };
}

/** Nanoseconds since the epoch of a tracing-clock time (ms with a fraction), exactly enough. */
export function toUnixNanos(ms: number): bigint {
  const whole = Math.floor(ms);
  return BigInt(whole) * 1_000_000n + BigInt(Math.round((ms - whole) * 1e6));
}

function anyValue(w: BinaryWriter, v: AttributeValue): void {
  if (typeof v === "string") w.tag(1, WireType.LengthDelimited).string(v);
  else if (typeof v === "boolean") w.tag(2, WireType.Varint).bool(v);
  else if (typeof v === "number") {
    if (Number.isSafeInteger(v)) w.tag(3, WireType.Varint).int64(v);
    else w.tag(4, WireType.Bit64).double(v);
  } else {
    w.tag(5, WireType.LengthDelimited).fork();
    for (const item of v) {
      w.tag(1, WireType.LengthDelimited).fork();
      anyValue(w, item);
      w.join();
    }
    w.join();
  }
}

/** Bytes of a varint holding `n` (a non-negative integer up to 2^53; negative int64s take 10). */
function varintSize(n: number): number {
  if (n < 0) return 10;
  let size = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 0x80);
    size++;
  }
  return size;
}

/** AnyValue's size when it has a fixed layout (string, bool, integer, double); undefined for arrays. */
function scalarSize(v: AttributeValue): number | undefined {
  if (typeof v === "string") {
    const n = Buffer.byteLength(v);
    return 1 + varintSize(n) + n;
  }
  if (typeof v === "boolean") return 2;
  if (typeof v === "number") return Number.isSafeInteger(v) ? 1 + varintSize(v) : 9;
  return undefined;
}

/**
 * One KeyValue. Scalars (nearly every attribute) are written with their lengths computed up
 * front: `fork`/`join` per key and value was most of the encoding's cost.
 */
function keyValue(w: BinaryWriter, field: number, key: string, value: AttributeValue): void {
  const any = scalarSize(value);
  if (any === undefined) {
    w.tag(field, WireType.LengthDelimited).fork();
    w.tag(1, WireType.LengthDelimited).string(key);
    w.tag(2, WireType.LengthDelimited).fork();
    anyValue(w, value);
    w.join();
    w.join();
    return;
  }
  const keyBytes = Buffer.byteLength(key);
  const size = 1 + varintSize(keyBytes) + keyBytes + 1 + varintSize(any) + any;
  w.tag(field, WireType.LengthDelimited).uint32(size);
  w.tag(1, WireType.LengthDelimited).string(key);
  w.tag(2, WireType.LengthDelimited).uint32(any);
  anyValue(w, value);
}

const hexBytes = (hex: string): Uint8Array => Buffer.from(hex, "hex");

function span(w: BinaryWriter, s: RecordedSpan): void {
  w.tag(2, WireType.LengthDelimited).fork();
  w.tag(1, WireType.LengthDelimited).bytes(hexBytes(s.traceId));
  w.tag(2, WireType.LengthDelimited).bytes(hexBytes(s.spanId));
  if (s.traceState !== "") w.tag(3, WireType.LengthDelimited).string(s.traceState);
  if (s.parentSpanId !== "") w.tag(4, WireType.LengthDelimited).bytes(hexBytes(s.parentSpanId));
  w.tag(5, WireType.LengthDelimited).string(s.name);
  w.tag(6, WireType.Varint).int32(s.kind);
  w.tag(7, WireType.Bit64).fixed64(toUnixNanos(s.startMs));
  w.tag(8, WireType.Bit64).fixed64(toUnixNanos(s.endMs));
  for (const [k, v] of s.attributes) keyValue(w, 9, k, v);
  for (const e of s.events ?? []) {
    w.tag(11, WireType.LengthDelimited).fork();
    w.tag(1, WireType.Bit64).fixed64(toUnixNanos(e.timeMs));
    w.tag(2, WireType.LengthDelimited).string(e.name);
    w.join();
  }
  if (s.status !== 0) {
    w.tag(15, WireType.LengthDelimited).fork();
    if (s.statusMessage !== "") w.tag(2, WireType.LengthDelimited).string(s.statusMessage);
    w.tag(3, WireType.Varint).int32(s.status);
    w.join();
  }
  w.join();
}

/** An ExportTraceServiceRequest in protobuf. */
export function encodeProtobuf(header: ExportHeader, spans: readonly RecordedSpan[]): Uint8Array {
  const w = new BinaryWriter();
  w.tag(1, WireType.LengthDelimited).fork(); // ResourceSpans
  w.tag(1, WireType.LengthDelimited).fork(); // Resource
  for (const [k, v] of Object.entries(header.resource)) keyValue(w, 1, k, v);
  w.join();
  w.tag(2, WireType.LengthDelimited).fork(); // ScopeSpans
  w.tag(1, WireType.LengthDelimited).fork(); // InstrumentationScope
  w.tag(1, WireType.LengthDelimited).string(header.scope.name);
  w.tag(2, WireType.LengthDelimited).string(header.scope.version);
  w.join();
  for (const s of spans) span(w, s);
  w.join();
  w.join();
  return w.finish();
}

type JsonAnyValue =
  | { stringValue: string }
  | { boolValue: boolean }
  | { intValue: string }
  | { doubleValue: number }
  | { arrayValue: { values: JsonAnyValue[] } };

function jsonValue(v: AttributeValue): JsonAnyValue {
  if (typeof v === "string") return { stringValue: v };
  if (typeof v === "boolean") return { boolValue: v };
  if (typeof v === "number") return Number.isSafeInteger(v) ? { intValue: String(v) } : { doubleValue: v };
  return { arrayValue: { values: v.map(jsonValue) } };
}

const jsonAttributes = (entries: Iterable<[string, AttributeValue]>): { key: string; value: JsonAnyValue }[] =>
  [...entries].map(([key, v]) => ({ key, value: jsonValue(v) }));

/** An ExportTraceServiceRequest in OTLP/JSON (ids as hex, 64-bit integers as strings). */
export function encodeJson(header: ExportHeader, spans: readonly RecordedSpan[]): string {
  return JSON.stringify({
    resourceSpans: [
      {
        resource: { attributes: jsonAttributes(Object.entries(header.resource)) },
        scopeSpans: [
          {
            scope: header.scope,
            spans: spans.map((s) => ({
              traceId: s.traceId,
              spanId: s.spanId,
              ...(s.traceState === "" ? {} : { traceState: s.traceState }),
              ...(s.parentSpanId === "" ? {} : { parentSpanId: s.parentSpanId }),
              name: s.name,
              kind: s.kind,
              startTimeUnixNano: String(toUnixNanos(s.startMs)),
              endTimeUnixNano: String(toUnixNanos(s.endMs)),
              attributes: jsonAttributes(s.attributes),
              events: (s.events ?? []).map((e) => ({ timeUnixNano: String(toUnixNanos(e.timeMs)), name: e.name })),
              status: s.status === 0 ? {} : { code: s.status, message: s.statusMessage },
            })),
          },
        ],
      },
    ],
  });
}
