import type { AttributeValue, RecordedSpan } from "./span.js";

/**
 * OTLP trace export requests (opentelemetry-proto, collector/trace/v1 ExportTraceServiceRequest),
 * encoded directly: protobuf for OTLP/HTTP's default `http/protobuf`, JSON for `http/json`. One
 * resource and one instrumentation scope per request (this process, this gateway).
 *
 * Protobuf is written by hand into one growing buffer (`SpanBatch`): a span is encoded the moment
 * it ends and only its bytes wait for the batch to leave, so no span object outlives its call
 * (held for up to OTEL_BSP_SCHEDULE_DELAY, every span was promoted to the old generation before
 * it was collected). Ids go in straight from their hex, times as two 32-bit halves (no BigInt),
 * lengths patched in after the content (no fork/join).
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

const LEN = 2; // wire type: length-delimited
const VARINT = 0;
const BIT64 = 1;
const TWO_32 = 0x1_0000_0000;

/** The value of the hex digit at `i` (0-9, a-f). */
function nibble(hex: string, i: number): number {
  const c = hex.charCodeAt(i);
  return c <= 0x39 ? c - 0x30 : c - 0x57;
}

/** Writes non-negative `n` (up to 2^53) as a varint at `p`; returns the position after it. */
function putVarint(buf: Buffer, p: number, n: number): number {
  while (n >= 0x80) {
    buf[p++] = (n % 0x80) | 0x80;
    n = Math.floor(n / 0x80);
  }
  buf[p++] = n;
  return p;
}

/** A growing byte buffer with the protobuf writes spans need. */
class ProtoWriter {
  buf: Buffer;
  pos = 0;

  constructor(size: number) {
    this.buf = Buffer.allocUnsafe(size);
  }

  /** Room for `n` more bytes. */
  room(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const grown = Buffer.allocUnsafe(size);
    this.buf.copy(grown, 0, 0, this.pos);
    this.buf = grown;
  }

  /** A varint of a non-negative safe integer (a negative one as int64 does: ten bytes). */
  varint(n: number): void {
    this.room(10);
    if (n < 0) {
      let v = BigInt.asUintN(64, BigInt(n));
      while (v >= 0x80n) {
        this.buf[this.pos++] = Number(v & 0x7fn) | 0x80;
        v >>= 7n;
      }
      this.buf[this.pos++] = Number(v);
      return;
    }
    this.pos = putVarint(this.buf, this.pos, n);
  }

  tag(field: number, wire: number): void {
    this.varint((field << 3) | wire);
  }

  /** Starts a length-delimited field's content (one byte kept for its length); `close` ends it. */
  open(field: number): number {
    this.tag(field, LEN);
    this.room(1);
    return this.pos++;
  }

  /** Writes the length of the content begun at `at`, moving the content when it needs more than one byte. */
  close(at: number): void {
    const n = this.pos - at - 1;
    if (n < 0x80) {
      this.buf[at] = n;
      return;
    }
    let extra = 0;
    for (let v = n; v >= 0x80; v = Math.floor(v / 0x80)) extra++;
    this.room(extra);
    this.buf.copyWithin(at + 1 + extra, at + 1, this.pos);
    this.pos += extra;
    putVarint(this.buf, at, n);
  }

  string(field: number, s: string): void {
    const at = this.open(field);
    this.room(s.length * 3);
    const buf = this.buf;
    let p = this.pos;
    // Short ASCII (nearly every key and value) byte by byte: a call into Buffer's native write
    // costs more than the copy.
    if (s.length <= 64) {
      for (let i = 0; i < s.length; i++) {
        const c = s.charCodeAt(i);
        if (c >= 0x80) {
          p = -1;
          break;
        }
        buf[p++] = c;
      }
    } else p = -1;
    this.pos = p !== -1 ? p : this.pos + buf.write(s, this.pos, "utf8");
    this.close(at);
  }

  /** Bytes given as lowercase hex (ids, always valid). */
  hex(field: number, hex: string): void {
    const at = this.open(field);
    this.room(hex.length >> 1);
    const buf = this.buf;
    for (let i = 0; i < hex.length; i += 2) buf[this.pos++] = (nibble(hex, i) << 4) | nibble(hex, i + 1);
    this.close(at);
  }

  /** A fixed64 of the nanoseconds of a tracing-clock time (`toUnixNanos`, exactly). */
  nanos(field: number, ms: number): void {
    this.tag(field, BIT64);
    this.room(8);
    const whole = Math.floor(ms);
    const frac = Math.round((ms - whole) * 1e6);
    // whole × 10^6 + frac, in halves: whole = a·2^20 + b keeps every product below 2^53.
    const a = Math.floor(whole / 0x100000);
    const b = whole - a * 0x100000;
    const high = a * 1e6; // × 2^20
    const low = b * 1e6 + frac;
    const l = (high % 0x1000) * 0x100000 + low;
    const carry = Math.floor(l / TWO_32);
    this.buf.writeUInt32LE(l - carry * TWO_32, this.pos);
    this.buf.writeUInt32LE(Math.floor(high / 0x1000) + carry, this.pos + 4);
    this.pos += 8;
  }

  double(field: number, v: number): void {
    this.tag(field, BIT64);
    this.room(8);
    this.pos = this.buf.writeDoubleLE(v, this.pos);
  }

  bytes(data: Uint8Array): void {
    this.room(data.length);
    this.buf.set(data, this.pos);
    this.pos += data.length;
  }
}

/** An AnyValue's fields. */
function anyValue(w: ProtoWriter, v: AttributeValue): void {
  if (typeof v === "string") w.string(1, v);
  else if (typeof v === "boolean") {
    w.tag(2, VARINT);
    w.varint(v ? 1 : 0);
  } else if (typeof v === "number") {
    if (Number.isSafeInteger(v)) {
      w.tag(3, VARINT);
      w.varint(v);
    } else w.double(4, v);
  } else {
    const array = w.open(5);
    for (const item of v) {
      const value = w.open(1);
      anyValue(w, item);
      w.close(value);
    }
    w.close(array);
  }
}

/**
 * The encoded `key` field of attribute names seen so far: the gateway's own, a few dozen, so a
 * span copies each key's bytes rather than encoding it again. Bounded all the same.
 */
const KEYS = new Map<string, Buffer>();
const MAX_KEYS = 256;

function key(w: ProtoWriter, name: string): void {
  let bytes = KEYS.get(name);
  if (bytes === undefined) {
    const k = new ProtoWriter(name.length * 3 + 8);
    k.string(1, name);
    bytes = Buffer.from(k.buf.subarray(0, k.pos));
    if (KEYS.size < MAX_KEYS) KEYS.set(name, bytes);
  }
  w.bytes(bytes);
}

/** One KeyValue as field `field`. */
function keyValue(w: ProtoWriter, field: number, name: string, value: AttributeValue): void {
  const kv = w.open(field);
  key(w, name);
  const v = w.open(2);
  anyValue(w, value);
  w.close(v);
  w.close(kv);
}

/** One span, as a ScopeSpans' `spans` field. */
function span(w: ProtoWriter, s: RecordedSpan): void {
  const at = w.open(2);
  w.hex(1, s.traceId);
  w.hex(2, s.spanId);
  if (s.traceState !== "") w.string(3, s.traceState);
  if (s.parentSpanId !== "") w.hex(4, s.parentSpanId);
  w.string(5, s.name);
  w.tag(6, VARINT);
  w.varint(s.kind);
  w.nanos(7, s.startMs);
  w.nanos(8, s.endMs);
  const a = s.attributes;
  for (let i = 0; i < a.length; i += 2) keyValue(w, 9, a[i] as string, a[i + 1]!);
  for (const e of s.events ?? []) {
    const event = w.open(11);
    w.nanos(1, e.timeMs);
    w.string(2, e.name);
    w.close(event);
  }
  for (const l of s.links ?? []) {
    const link = w.open(13);
    w.hex(1, l.traceId);
    w.hex(2, l.spanId);
    if (l.traceState !== "") w.string(3, l.traceState);
    w.close(link);
  }
  if (s.status !== 0) {
    const status = w.open(15);
    if (s.statusMessage !== "") w.string(2, s.statusMessage);
    w.tag(3, VARINT);
    w.varint(s.status);
    w.close(status);
  }
  w.close(at);
}

/** The part of every request before its spans: a Resource and an InstrumentationScope, encoded. */
function headerBytes(header: ExportHeader): { resource: Buffer; scope: Buffer } {
  const r = new ProtoWriter(1024);
  const resource = r.open(1);
  for (const [k, v] of Object.entries(header.resource)) keyValue(r, 1, k, v);
  r.close(resource);
  const s = new ProtoWriter(256);
  const scope = s.open(1);
  s.string(1, header.scope.name);
  s.string(2, header.scope.version);
  s.close(scope);
  return { resource: Buffer.from(r.buf.subarray(0, r.pos)), scope: Buffer.from(s.buf.subarray(0, s.pos)) };
}

/**
 * Spans encoded as they end, waiting in one buffer for their export request (protobuf). `finish`
 * makes the request of those added since the last `finish` and starts over in the same buffer.
 */
export class SpanBatch {
  readonly #header: { resource: Buffer; scope: Buffer };
  readonly #spans = new ProtoWriter(16 * 1024);
  /** Spans added since the last `finish`. */
  size = 0;

  constructor(header: ExportHeader) {
    this.#header = headerBytes(header);
  }

  /** Encodes an ended span into the batch. */
  add(s: RecordedSpan): void {
    span(this.#spans, s);
    this.size++;
  }

  /** The ExportTraceServiceRequest of the spans added so far (a copy); the batch is empty after. */
  finish(): Uint8Array {
    const { resource, scope } = this.#header;
    const spans = this.#spans.buf.subarray(0, this.#spans.pos);
    const w = new ProtoWriter(resource.length + scope.length + spans.length + 32);
    const resourceSpans = w.open(1);
    w.bytes(resource);
    const scopeSpans = w.open(2);
    w.bytes(scope);
    w.bytes(spans);
    w.close(scopeSpans);
    w.close(resourceSpans);
    this.#spans.pos = 0;
    this.size = 0;
    return w.buf.subarray(0, w.pos);
  }
}

/** An ExportTraceServiceRequest in protobuf. */
export function encodeProtobuf(header: ExportHeader, spans: readonly RecordedSpan[]): Uint8Array {
  const batch = new SpanBatch(header);
  for (const s of spans) batch.add(s);
  return batch.finish();
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

/** A span's attributes as entries. */
function* attributeEntries(s: RecordedSpan): Generator<[string, AttributeValue]> {
  const a = s.attributes;
  for (let i = 0; i < a.length; i += 2) yield [a[i] as string, a[i + 1]!];
}

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
              attributes: jsonAttributes(attributeEntries(s)),
              events: (s.events ?? []).map((e) => ({ timeUnixNano: String(toUnixNanos(e.timeMs)), name: e.name })),
              links: (s.links ?? []).map((l) => ({
                traceId: l.traceId,
                spanId: l.spanId,
                ...(l.traceState === "" ? {} : { traceState: l.traceState }),
              })),
              status: s.status === 0 ? {} : { code: s.status, message: s.statusMessage },
            })),
          },
        ],
      },
    ],
  });
}
