import { Pool } from "undici";
import type { OtlpProtocol } from "../../config/observability-config.js";
import { sleep } from "../../util/sleep.js";
import { encodeJson, SpanBatch } from "./otlp-encoding.js";
import type { ExportHeader } from "./otlp-encoding.js";
import type { RecordedSpan } from "./span.js";

/**
 * Ended spans to an OTLP/HTTP collector in batches, as OpenTelemetry's batch span processor does
 * (OTEL_BSP_*): a span waits at most `scheduleDelayMs`, a full batch goes at once, one export at
 * a time, and past `maxQueueSize` spans held (waiting for a batch, or in exports not yet done)
 * new ones are dropped (logged once per streak) rather than held in memory, however slow the
 * collector. An export the collector may take later (OTLP/HTTP's retryable answers: 429, 502,
 * 503, 504, or no answer) is tried again after a pause, as its `Retry-After` asks or 1 s then 2 s,
 * within `exportTimeoutMs`; one that still fails, or is refused, is dropped and logged once per
 * streak of failures. Nothing here ever throws into a call.
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
  /** Bound of one export, its retries included, ms (OTEL_BSP_EXPORT_TIMEOUT). @default 30000 */
  exportTimeoutMs?: number;
  /** The first pause before a retry, ms; doubled for the next. @default 1000 */
  retryBaseMs?: number;
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
  /** Exports what is left (once each, no retries), then drops any later span and closes its connections. */
  shutdown(): Promise<void>;
  /** Spans held: waiting for their batch, and in exports not done yet (at most `maxQueueSize`). */
  readonly held: number;
}

/** The collector's answers worth a retry (OTLP/HTTP); 0 stands for no answer at all. */
const RETRYABLE = new Set([0, 429, 502, 503, 504]);
/** Tries of one export at most, the first included. */
const MAX_TRIES = 3;
/** Longest pause a `Retry-After` may ask for, ms. */
const MAX_RETRY_AFTER_MS = 30_000;

/** How much of a collector's answer is read; the rest is dropped with the connection. */
const MAX_ANSWER_BYTES = 64 * 1024;

/** The pause a `Retry-After` header asks for (seconds, or an HTTP date), ms; undefined when none or unreadable. */
export function retryAfterMs(header: string | undefined, now = Date.now()): number | undefined {
  if (header === undefined || header.trim() === "") return undefined;
  const seconds = Number(header);
  const ms = Number.isFinite(seconds) ? seconds * 1000 : Date.parse(header) - now;
  if (!Number.isFinite(ms)) return undefined;
  return Math.min(Math.max(0, ms), MAX_RETRY_AFTER_MS);
}

/** Creates the exporter. */
export function createSpanExporter(o: SpanExporterOptions): SpanExporter {
  const url = new URL(o.url);
  const path = url.pathname + url.search;
  // undici, as for Ollama, not node:http: a second HTTP client stack in the process makes Node's
  // stream and socket internals polymorphic, and every call pays for that once the first export
  // has run (about 8 % more gateway CPU per call in a paired benchmark, sampled or not).
  const pool = new Pool(url.origin, {
    connections: 2,
    connect: { timeout: o.timeoutMs },
    headersTimeout: o.timeoutMs,
    bodyTimeout: o.timeoutMs,
  });
  const contentType = o.protocol === "http/json" ? "application/json" : "application/x-protobuf";
  /** Protobuf: the spans waiting, encoded as they ended. */
  const encoded = o.protocol === "http/json" ? undefined : new SpanBatch(o);
  /** JSON: the spans waiting. */
  let queue: RecordedSpan[] = [];
  /** Spans waiting for their batch. */
  const open = (): number => (encoded === undefined ? queue.length : encoded.size);
  /** Spans in export requests queued or under way. */
  let exporting = 0;
  const exportTimeoutMs = o.exportTimeoutMs ?? 30_000;
  const retryBaseMs = o.retryBaseMs ?? 1_000;
  /** Aborted by `shutdown`: no more pauses for retries. */
  const stopping = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  /** The exports in order: each starts when the one before it ended. */
  let chain: Promise<void> = Promise.resolve();
  let failing = false;
  let dropping = false;
  let stopped = false;
  let lastError: string | undefined;

  async function post(body: Uint8Array | string): Promise<{ status: number; retryAfter: string | undefined }> {
    try {
      // No signal: the pool's timeouts bound the export, and a timeout signal is one more shape.
      const res = await pool.request({
        method: "POST",
        path,
        headers: { ...o.headers, "content-type": contentType, "content-length": String(Buffer.byteLength(body)) },
        body,
      });
      const header = res.headers["retry-after"];
      // Read (and drop) the answer as the answers of Ollama are read, up to a bound.
      let size = 0;
      for await (const chunk of res.body) if ((size += (chunk as Buffer).length) > MAX_ANSWER_BYTES) break;
      return { status: res.statusCode, retryAfter: Array.isArray(header) ? header[0] : header };
    } catch (e) {
      lastError = e instanceof Error ? e.message : String(e);
      return { status: 0, retryAfter: undefined };
    }
  }

  async function send(body: Uint8Array | string, spans: number): Promise<void> {
    const until = Date.now() + exportTimeoutMs;
    let status = 0;
    try {
      for (let tries = 1; ; tries++) {
        lastError = undefined;
        const answer = await post(body);
        status = answer.status;
        if (status >= 200 && status < 300) {
          if (failing) o.log.info({}, TRACE_EXPORT_RECOVERED_MSG);
          failing = false;
          return;
        }
        if (tries >= MAX_TRIES || !RETRYABLE.has(status) || stopping.signal.aborted) break;
        const wait = retryAfterMs(answer.retryAfter) ?? retryBaseMs * 2 ** (tries - 1);
        if (Date.now() + wait >= until) break;
        await sleep(wait, stopping.signal, { unref: true });
      }
    } catch {
      // shutdown cut the pause short: this batch is dropped
    } finally {
      exporting -= spans;
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
        exporting += spans;
        chain = chain.then(() => send(body, spans));
      }
      return chain;
    }
    while (queue.length > 0) {
      const batch = queue.length <= o.maxExportBatchSize ? queue : queue.slice(0, o.maxExportBatchSize);
      queue = queue.length <= o.maxExportBatchSize ? [] : queue.slice(o.maxExportBatchSize);
      exporting += batch.length;
      chain = chain.then(() => send(encodeJson(o, batch), batch.length));
    }
    return chain;
  }

  return {
    add(span) {
      if (stopped) return;
      if (open() + exporting >= o.maxQueueSize) {
        if (!dropping) o.log.warn({ maxQueueSize: o.maxQueueSize }, TRACE_QUEUE_FULL_MSG);
        dropping = true;
        return;
      }
      dropping = false;
      if (encoded !== undefined) encoded.add(span);
      else queue.push(span);
      if (open() >= o.maxExportBatchSize) void flushQueued();
      else if (timer === undefined) {
        timer = setTimeout(() => void flushQueued(), o.scheduleDelayMs);
        timer.unref();
      }
    },
    forceFlush: () => flushQueued(),
    async shutdown() {
      stopping.abort();
      await flushQueued();
      stopped = true;
      await pool.destroy();
    },
    get held() {
      return open() + exporting;
    },
  };
}
