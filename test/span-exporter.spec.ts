// The OTLP span exporter against collectors that refuse, shed load or hang: retried where OTLP/HTTP
// says a retry may succeed, dropped where it says not, and never holding more than its queue bound.
import assert from "node:assert/strict";
import { createServer } from "node:http";
import type { RequestListener } from "node:http";
import type { AddressInfo } from "node:net";
import { describe, it } from "node:test";
import {
  TRACE_EXPORT_FAILED_MSG,
  TRACE_QUEUE_FULL_MSG,
  createSpanExporter,
  retryAfterMs,
} from "../src/observability/telemetry/span-exporter.js";
import type { SpanExporterOptions } from "../src/observability/telemetry/span-exporter.js";
import { RecordedSpan } from "../src/observability/telemetry/span.js";
import { newTraceId } from "../src/observability/telemetry/trace-context.js";
import { startOtlpReceiver } from "./helpers/otlp-receiver.js";

/** A log that keeps its messages. */
function memoryLog(): SpanExporterOptions["log"] & { messages: string[] } {
  const messages: string[] = [];
  return { messages, warn: (_o, msg) => messages.push(msg), info: (_o, msg) => messages.push(msg) };
}

function options(url: string, log: SpanExporterOptions["log"], more: Partial<SpanExporterOptions> = {}) {
  return {
    url: `${url}/v1/traces`,
    headers: {},
    protocol: "http/protobuf" as const,
    timeoutMs: 2_000,
    scheduleDelayMs: 60_000,
    maxQueueSize: 100,
    maxExportBatchSize: 10,
    retryBaseMs: 10,
    log,
    resource: { "service.name": "t" },
    scope: { name: "t", version: "1" },
    ...more,
  };
}

function span(name: string): RecordedSpan {
  const s = new RecordedSpan(newTraceId(), "", "", name, 1, Date.now(), () => undefined);
  s.endMs = s.startMs + 1;
  return s;
}

/** A collector whose every request `handle` answers (or does not), on a free loopback port. */
async function rawCollector(handle: RequestListener): Promise<{ url: string; close(): Promise<void> }> {
  const server = createServer(handle);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    async close() {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}

describe("the span exporter", () => {
  it("tries an export again when the collector sheds load (503, 429), and logs nothing when it then takes it", async () => {
    const answers = [503, 429];
    let requests = 0;
    const rx = await startOtlpReceiver({
      status: () => {
        requests++;
        return answers.shift() ?? 200;
      },
    });
    const log = memoryLog();
    const exporter = createSpanExporter(options(rx.url, log));
    try {
      exporter.add(span("kept"));
      await exporter.forceFlush();
      assert.equal(requests, 3, "two refusals, then taken");
      assert.deepEqual(
        rx.spans.map((s) => s.name),
        ["kept"],
      );
      assert.deepEqual(log.messages, []);
      assert.equal(exporter.held, 0);
    } finally {
      await exporter.shutdown();
      await rx.close();
    }
  });

  it("drops an export the collector refuses (400) at once, and one still shed after three tries, logging once", async () => {
    let status = 400;
    let requests = 0;
    const rx = await startOtlpReceiver({
      status: () => {
        requests++;
        return status;
      },
    });
    const log = memoryLog();
    const exporter = createSpanExporter(options(rx.url, log));
    try {
      exporter.add(span("refused"));
      await exporter.forceFlush();
      assert.equal(requests, 1, "a refusal is final");
      status = 503;
      exporter.add(span("shed"));
      await exporter.forceFlush();
      assert.equal(requests, 4, "three tries, then dropped");
      assert.deepEqual(log.messages, [TRACE_EXPORT_FAILED_MSG]);
      assert.equal(exporter.held, 0);
      assert.equal(rx.spans.length, 0);
    } finally {
      await exporter.shutdown();
      await rx.close();
    }
  });

  it("holds at most maxQueueSize spans while the collector hangs, then exports what it held", async () => {
    const hung: (() => void)[] = [];
    let received = 0;
    const { url, close } = await rawCollector((req, res) => {
      req.resume();
      req.on("end", () => {
        received++;
        hung.push(() => res.writeHead(200).end());
      });
    });
    const log = memoryLog();
    const exporter = createSpanExporter(
      options(url, log, { maxQueueSize: 25, maxExportBatchSize: 5, timeoutMs: 30_000 }),
    );
    try {
      for (let i = 0; i < 200; i++) exporter.add(span(`s${i}`));
      assert.equal(exporter.held, 25, "spans in hung and queued exports count against the bound");
      assert.deepEqual(log.messages, [TRACE_QUEUE_FULL_MSG], "the drops are logged once");
      const flushed = exporter.forceFlush();
      // One export at a time: answer each as it comes.
      while (exporter.held > 0) {
        await new Promise((r) => setTimeout(r, 5));
        for (const answer of hung.splice(0)) answer();
      }
      await flushed;
      assert.equal(received, 5, "the 25 held spans left in 5 exports");
      exporter.add(span("after"));
      assert.equal(exporter.held, 1, "room again once the collector answered");
    } finally {
      // Shutdown exports what is still held (the "after" span): keep answering until it is done.
      const answering = setInterval(() => {
        for (const answer of hung.splice(0)) answer();
      }, 5);
      try {
        await exporter.shutdown();
      } finally {
        clearInterval(answering);
        await close();
      }
    }
  });

  it("stops retrying at shutdown: a pause before a retry is cut short and the export dropped", async () => {
    const rx = await startOtlpReceiver({ status: () => 503 });
    const log = memoryLog();
    const exporter = createSpanExporter(options(rx.url, log, { retryBaseMs: 60_000 }));
    try {
      exporter.add(span("lost"));
      void exporter.forceFlush();
      await new Promise((r) => setTimeout(r, 50));
      const started = performance.now();
      await exporter.shutdown();
      assert.ok(performance.now() - started < 10_000, "shutdown did not wait out the minute's pause");
      assert.equal(exporter.held, 0);
      assert.deepEqual(log.messages, [TRACE_EXPORT_FAILED_MSG]);
    } finally {
      await rx.close();
    }
  });

  it("takes an export answered 200 with an endless body, reading only the first 64 KiB of it", async () => {
    let sent = 0;
    const { url, close } = await rawCollector((req, res) => {
      req.resume();
      req.on("end", () => {
        res.writeHead(200, { "content-type": "application/x-protobuf" });
        const block = Buffer.alloc(16 * 1024);
        const pump = (): void => {
          while (!res.destroyed && sent < 64 * 1024 * 1024 && res.write(block)) sent += block.length;
          if (!res.destroyed && sent < 64 * 1024 * 1024) res.once("drain", pump);
        };
        pump();
      });
    });
    const log = memoryLog();
    const exporter = createSpanExporter(options(url, log));
    try {
      exporter.add(span("kept"));
      await exporter.forceFlush();
      assert.deepEqual(log.messages, [], "a 200 is a success, whatever follows it");
      assert.equal(exporter.held, 0);
      assert.ok(sent < 8 * 1024 * 1024, `the exporter stopped reading early (the collector wrote ${sent} bytes)`);
    } finally {
      await exporter.shutdown();
      await close();
    }
  });

  it("gives up on a collector that takes the request and never answers, after timeoutMs, logging once", async () => {
    const { url, close } = await rawCollector((req) => req.resume());
    const log = memoryLog();
    const exporter = createSpanExporter(options(url, log, { timeoutMs: 200, exportTimeoutMs: 200 }));
    try {
      exporter.add(span("lost"));
      const started = performance.now();
      await exporter.forceFlush();
      assert.ok(performance.now() - started >= 150, "it waited for the answer first");
      assert.deepEqual(log.messages, [TRACE_EXPORT_FAILED_MSG]);
      assert.equal(exporter.held, 0, "nothing is held for the silent collector");
    } finally {
      await exporter.shutdown();
      await close();
    }
  });

  it("reads Retry-After as seconds or a date, bounded to 30 s", () => {
    const now = Date.parse("2026-12-03T00:00:00Z");
    assert.equal(retryAfterMs("2", now), 2_000);
    assert.equal(retryAfterMs("0", now), 0);
    assert.equal(retryAfterMs("3600", now), 30_000);
    assert.equal(retryAfterMs("Thu, 03 Dec 2026 00:00:05 GMT", now), 5_000);
    assert.equal(retryAfterMs("Wed, 02 Dec 2026 00:00:05 GMT", now), 0, "a date past is now");
    assert.equal(retryAfterMs(undefined, now), undefined);
    assert.equal(retryAfterMs("soon", now), undefined);
  });
});
