import { createServer } from "node:http";
import type { IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";
import { BinaryReader } from "@bufbuild/protobuf/wire";
import type { WireType } from "@bufbuild/protobuf/wire";

// An OTLP/HTTP trace receiver for tests: a plain HTTP server that
// decodes each export request itself, field by field, with the field numbers of
// opentelemetry-proto (collector/trace/v1 and trace/v1), so the spans the gateway encodes
// are checked by a decoder that shares no code with it.

/** An attribute value as OTLP's AnyValue carries it. */
export type AttributeValue = string | boolean | number | bigint | AttributeValue[] | undefined;

/** One span as received. Ids are lowercase hex ("" for no parent). */
export interface ReceivedSpan {
  traceId: string;
  spanId: string;
  parentSpanId: string;
  traceState: string;
  name: string;
  /** 1 internal, 2 server, 3 client, 4 producer, 5 consumer. */
  kind: number;
  startNs: bigint;
  endNs: bigint;
  attributes: Record<string, AttributeValue>;
  events: { name: string; timeNs: bigint }[];
  /** Span links: spans of other traces this one is tied to. */
  links: { traceId: string; spanId: string; traceState: string }[];
  /** 0 unset, 1 ok, 2 error. */
  status: { code: number; message: string };
  resource: Record<string, AttributeValue>;
  scope: { name: string; version: string };
}

/** A running receiver. */
export interface OtlpReceiver {
  /** Base URL, e.g. `http://127.0.0.1:4318`: set it as OTEL_EXPORTER_OTLP_ENDPOINT. */
  readonly url: string;
  /** Every span received so far, in arrival order. */
  readonly spans: ReceivedSpan[];
  /** Every export request: path, content type and headers. */
  readonly requests: { path: string; contentType: string; headers: IncomingHttpHeaders }[];
  /** Resolves with the received spans once `check` holds for them (checked on every arrival); rejects after `ms`. */
  until(check: (spans: readonly ReceivedSpan[]) => boolean, ms?: number): Promise<ReceivedSpan[]>;
  close(): Promise<void>;
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex");

/** Reads the length-delimited messages of `field` (and calls `other` for the rest) from one message. */
function fields(bytes: Uint8Array, on: (field: number, wire: WireType, r: BinaryReader) => boolean): void {
  const r = new BinaryReader(bytes);
  while (r.pos < r.len) {
    const [field, wire] = r.tag();
    // Unknown protobuf fields are stepped over (BinaryReader.skip is the wire reader's, not a test's).
    if (!on(field, wire, r)) r.skip(wire, field);
  }
}

function anyValue(bytes: Uint8Array): AttributeValue {
  let value: AttributeValue;
  fields(bytes, (f, _w, r) => {
    switch (f) {
      case 1:
        value = r.string();
        return true;
      case 2:
        value = r.bool();
        return true;
      case 3: {
        const v = BigInt(r.int64());
        value = v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
        return true;
      }
      case 4:
        value = r.double();
        return true;
      case 5: {
        const list: AttributeValue[] = [];
        fields(r.bytes(), (g, _w2, r2) => {
          if (g !== 1) return false;
          list.push(anyValue(r2.bytes()));
          return true;
        });
        value = list;
        return true;
      }
      default:
        return false;
    }
  });
  return value;
}

function keyValue(bytes: Uint8Array, into: Record<string, AttributeValue>): void {
  let key = "";
  let value: AttributeValue;
  fields(bytes, (f, _w, r) => {
    if (f === 1) key = r.string();
    else if (f === 2) value = anyValue(r.bytes());
    else return false;
    return true;
  });
  into[key] = value;
}

function span(bytes: Uint8Array, resource: Record<string, AttributeValue>, scope: ReceivedSpan["scope"]): ReceivedSpan {
  const s: ReceivedSpan = {
    traceId: "",
    spanId: "",
    parentSpanId: "",
    traceState: "",
    name: "",
    kind: 0,
    startNs: 0n,
    endNs: 0n,
    attributes: {},
    events: [],
    links: [],
    status: { code: 0, message: "" },
    resource,
    scope,
  };
  fields(bytes, (f, _w, r) => {
    switch (f) {
      case 1:
        s.traceId = hex(r.bytes());
        return true;
      case 2:
        s.spanId = hex(r.bytes());
        return true;
      case 3:
        s.traceState = r.string();
        return true;
      case 4:
        s.parentSpanId = hex(r.bytes());
        return true;
      case 5:
        s.name = r.string();
        return true;
      case 6:
        s.kind = r.int32();
        return true;
      case 7:
        s.startNs = BigInt(r.fixed64());
        return true;
      case 8:
        s.endNs = BigInt(r.fixed64());
        return true;
      case 9:
        keyValue(r.bytes(), s.attributes);
        return true;
      case 11: {
        const event = { name: "", timeNs: 0n };
        fields(r.bytes(), (g, _w2, r2) => {
          if (g === 1) event.timeNs = BigInt(r2.fixed64());
          else if (g === 2) event.name = r2.string();
          else return false;
          return true;
        });
        s.events.push(event);
        return true;
      }
      case 13: {
        const link = { traceId: "", spanId: "", traceState: "" };
        fields(r.bytes(), (g, _w2, r2) => {
          if (g === 1) link.traceId = hex(r2.bytes());
          else if (g === 2) link.spanId = hex(r2.bytes());
          else if (g === 3) link.traceState = r2.string();
          else return false;
          return true;
        });
        s.links.push(link);
        return true;
      }
      case 15:
        fields(r.bytes(), (g, _w2, r2) => {
          if (g === 2) s.status.message = r2.string();
          else if (g === 3) s.status.code = r2.int32();
          else return false;
          return true;
        });
        return true;
      default:
        return false;
    }
  });
  return s;
}

/** Decodes an ExportTraceServiceRequest (protobuf) into its spans. */
export function decodeTraceExport(body: Uint8Array): ReceivedSpan[] {
  const out: ReceivedSpan[] = [];
  fields(body, (f, _w, r) => {
    if (f !== 1) return false;
    const resource: Record<string, AttributeValue> = {};
    const scopeSpans: Uint8Array[] = [];
    fields(r.bytes(), (g, _w2, r2) => {
      if (g === 1) {
        fields(r2.bytes(), (h, _w3, r3) => {
          if (h !== 1) return false;
          keyValue(r3.bytes(), resource);
          return true;
        });
      } else if (g === 2) scopeSpans.push(r2.bytes());
      else return false;
      return true;
    });
    for (const ss of scopeSpans) {
      const scope = { name: "", version: "" };
      const spans: Uint8Array[] = [];
      fields(ss, (g, _w2, r2) => {
        if (g === 1) {
          fields(r2.bytes(), (h, _w3, r3) => {
            if (h === 1) scope.name = r3.string();
            else if (h === 2) scope.version = r3.string();
            else return false;
            return true;
          });
        } else if (g === 2) spans.push(r2.bytes());
        else return false;
        return true;
      });
      for (const b of spans) out.push(span(b, resource, scope));
    }
    return true;
  });
  return out;
}

interface JsonValue {
  stringValue?: string;
  boolValue?: boolean;
  intValue?: string;
  doubleValue?: number;
  arrayValue?: { values: JsonValue[] };
}

function jsonValue(v: JsonValue): AttributeValue {
  if (v.stringValue !== undefined) return v.stringValue;
  if (v.boolValue !== undefined) return v.boolValue;
  if (v.intValue !== undefined) return Number(v.intValue);
  if (v.doubleValue !== undefined) return v.doubleValue;
  return v.arrayValue?.values.map(jsonValue);
}

const jsonAttributes = (list: { key: string; value: JsonValue }[] = []): Record<string, AttributeValue> =>
  Object.fromEntries(list.map((kv) => [kv.key, jsonValue(kv.value)]));

/** Decodes an ExportTraceServiceRequest in OTLP/JSON into its spans. */
export function decodeTraceExportJson(body: string): ReceivedSpan[] {
  const parsed = JSON.parse(body) as {
    resourceSpans: {
      resource?: { attributes?: { key: string; value: JsonValue }[] };
      scopeSpans: {
        scope?: { name?: string; version?: string };
        spans: {
          traceId: string;
          spanId: string;
          parentSpanId?: string;
          traceState?: string;
          name: string;
          kind: number;
          startTimeUnixNano: string;
          endTimeUnixNano: string;
          attributes?: { key: string; value: JsonValue }[];
          events?: { name: string; timeUnixNano: string }[];
          links?: { traceId: string; spanId: string; traceState?: string }[];
          status?: { code?: number; message?: string };
        }[];
      }[];
    }[];
  };
  return parsed.resourceSpans.flatMap((rs) =>
    rs.scopeSpans.flatMap((ss) =>
      ss.spans.map((s) => ({
        traceId: s.traceId,
        spanId: s.spanId,
        parentSpanId: s.parentSpanId ?? "",
        traceState: s.traceState ?? "",
        name: s.name,
        kind: s.kind,
        startNs: BigInt(s.startTimeUnixNano),
        endNs: BigInt(s.endTimeUnixNano),
        attributes: jsonAttributes(s.attributes),
        events: (s.events ?? []).map((e) => ({ name: e.name, timeNs: BigInt(e.timeUnixNano) })),
        links: (s.links ?? []).map((l) => ({ traceId: l.traceId, spanId: l.spanId, traceState: l.traceState ?? "" })),
        status: { code: s.status?.code ?? 0, message: s.status?.message ?? "" },
        resource: jsonAttributes(rs.resource?.attributes),
        scope: { name: ss.scope?.name ?? "", version: ss.scope?.version ?? "" },
      })),
    ),
  );
}

/** Starts a receiver on a free loopback port; `status` is what it answers (200, or e.g. 503 to test failures). */
export async function startOtlpReceiver(options: { status?: () => number } = {}): Promise<OtlpReceiver> {
  const spans: ReceivedSpan[] = [];
  const requests: OtlpReceiver["requests"] = [];
  const waiters = new Set<() => void>();
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const contentType = req.headers["content-type"] ?? "";
      requests.push({ path: req.url ?? "", contentType, headers: req.headers });
      const status = options.status?.() ?? 200;
      if (status === 200 && contentType.startsWith("application/x-protobuf")) {
        spans.push(...decodeTraceExport(Buffer.concat(chunks)));
      } else if (status === 200 && contentType.startsWith("application/json")) {
        spans.push(...decodeTraceExportJson(Buffer.concat(chunks).toString("utf8")));
      }
      // An empty ExportTraceServiceResponse: full success.
      res.writeHead(status, { "content-type": "application/x-protobuf" }).end();
      for (const w of [...waiters]) w();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    spans,
    requests,
    until(check, ms = 15_000) {
      if (check(spans)) return Promise.resolve([...spans]);
      return new Promise((resolve, reject) => {
        const waiter = (): void => {
          if (!check(spans)) return;
          clearTimeout(timer);
          waiters.delete(waiter);
          resolve([...spans]);
        };
        const timer = setTimeout(() => {
          waiters.delete(waiter);
          reject(new Error(`the expected spans did not arrive within ${ms} ms; got ${spans.length}`));
        }, ms);
        waiters.add(waiter);
      });
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
