import { Agent as HttpAgent, request as httpRequest } from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import type { OtlpProtocol } from "../../config/observability-config.js";
import { encodeJson, SpanBatch } from "./otlp-encoding.js";
import type { ExportHeader } from "./otlp-encoding.js";
import type { RecordedSpan } from "./span.js";

/**
 * Ended spans to an OTLP/HTTP collector in batches, as OpenTelemetry's batch span processor does
 * (OTEL_BSP_*): a span waits at most `scheduleDelayMs`, a full batch goes at once, one export at
 * a time, and past `maxQueueSize` waiting spans new ones are dropped (counted, logged once per
 * streak) rather than held in memory. A failed export is dropped and logged once per streak of
 * failures; nothing here ever throws into a call.
 */

/** Where export trouble is reported; a pino logger fits. */
export interface ExportLog {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

/** Logged (warn) when an export fails after working (or at the first failure); once per streak. */
export const TRACE_EXPORT_FAILED_MSG = "trace export failed; spans are dropped until the collector answers";
/** Logged (info) when exports work again after a failure. */
export const TRACE_EXPORT_RECOVERED_MSG = "trace export works again";
/** Logged (warn) when the export queue is full and spans are dropped; once per streak. */
export const TRACE_QUEUE_FULL_MSG = "trace export queue full; new spans are dropped";

/** How spans are exported. */
export interface SpanExporterOptions extends ExportHeader {
  /** The traces endpoint (the full URL, `/v1/traces` included). */
  url: string;
  /** Extra request headers (OTEL_EXPORTER_OTLP_HEADERS). */
  headers: Readonly<Record<string, string>>;
  /** Encoding. */
  protocol: OtlpProtocol;
  /** Bound of one export request, ms. */
  timeoutMs: number;
  /** Longest a span waits before it is exported, ms. */
  scheduleDelayMs: number;
  /** Spans held for export at most. */
  maxQueueSize: number;
  /** Spans per export request at most. */
  maxExportBatchSize: number;
  log: ExportLog;
}

/** A running exporter. */
export interface SpanExporter {
  /** Queues an ended span (protobuf: encodes it at once; the span object is not kept). */
  add(span: RecordedSpan): void;
  /** Exports everything queued so far and resolves when done (failures are logged, not thrown). */
  forceFlush(): Promise<void>;
  /** Exports what is left, then drops any later span and closes its connections. */
  shutdown(): Promise<void>;
}

/** Creates the exporter. */
export function createSpanExporter(o: SpanExporterOptions): SpanExporter {
  const url = new URL(o.url);
  const https = url.protocol === "https:";
  const agent = https
    ? new HttpsAgent({ keepAlive: true, maxSockets: 2 })
    : new HttpAgent({ keepAlive: true, maxSockets: 2 });
  const contentType = o.protocol === "http/json" ? "application/json" : "application/x-protobuf";
  /** Protobuf: the spans waiting, encoded as they ended. */
  const encoded = o.protocol === "http/json" ? undefined : new SpanBatch(o);
  /** JSON: the spans waiting. */
  let queue: RecordedSpan[] = [];
  const waiting = (): number => (encoded === undefined ? queue.length : encoded.size);
  let timer: NodeJS.Timeout | undefined;
  /** The exports in order: each starts when the one before it ended. */
  let chain: Promise<void> = Promise.resolve();
  let failing = false;
  let dropping = false;
  let stopped = false;
  let lastError: string | undefined;

  function post(body: Uint8Array | string): Promise<number> {
    return new Promise((resolve) => {
      const req = (https ? httpsRequest : httpRequest)(
        url,
        {
          method: "POST",
          agent,
          headers: { ...o.headers, "content-type": contentType, "content-length": Buffer.byteLength(body) },
          timeout: o.timeoutMs,
        },
        (res) => {
          res.resume();
          res.on("end", () => resolve(res.statusCode ?? 0));
          res.on("error", () => resolve(0));
        },
      );
      req.on("timeout", () => req.destroy(new Error(`no answer within ${o.timeoutMs} ms`)));
      req.on("error", (e) => {
        lastError = e.message;
        resolve(0);
      });
      req.end(body);
    });
  }

  async function send(body: Uint8Array | string, spans: number): Promise<void> {
    lastError = undefined;
    const status = await post(body);
    if (status >= 200 && status < 300) {
      if (failing) o.log.info({}, TRACE_EXPORT_RECOVERED_MSG);
      failing = false;
      return;
    }
    if (!failing) o.log.warn({ spans, status, err: lastError }, TRACE_EXPORT_FAILED_MSG);
    failing = true;
  }

  /** Moves everything waiting into export requests, in order. */
  function flushQueued(): Promise<void> {
    if (timer !== undefined) clearTimeout(timer);
    timer = undefined;
    if (encoded !== undefined) {
      // Never more than a batch waits: `add` sends a full one at once.
      if (encoded.size > 0) {
        const spans = encoded.size;
        const body = encoded.finish();
        chain = chain.then(() => send(body, spans));
      }
      return chain;
    }
    while (queue.length > 0) {
      const batch = queue.length <= o.maxExportBatchSize ? queue : queue.slice(0, o.maxExportBatchSize);
      queue = queue.length <= o.maxExportBatchSize ? [] : queue.slice(o.maxExportBatchSize);
      chain = chain.then(() => send(encodeJson(o, batch), batch.length));
    }
    return chain;
  }

  return {
    add(span) {
      if (stopped) return;
      if (waiting() >= o.maxQueueSize) {
        if (!dropping) o.log.warn({ maxQueueSize: o.maxQueueSize }, TRACE_QUEUE_FULL_MSG);
        dropping = true;
        return;
      }
      dropping = false;
      if (encoded !== undefined) encoded.add(span);
      else queue.push(span);
      if (waiting() >= o.maxExportBatchSize) void flushQueued();
      else if (timer === undefined) {
        timer = setTimeout(() => void flushQueued(), o.scheduleDelayMs);
        timer.unref();
      }
    },
    forceFlush: () => flushQueued(),
    async shutdown() {
      await flushQueued();
      stopped = true;
      agent.destroy();
    },
  };
}
