import { randomUUID } from "node:crypto";
import { ExportResultCode } from "@opentelemetry/core";
import { OTLPTraceExporter as OtlpJsonExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { OTLPTraceExporter as OtlpProtobufExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { defaultResource, resourceFromAttributes } from "@opentelemetry/resources";
import { AlwaysOnSampler, BatchSpanProcessor, TracerProvider } from "@opentelemetry/sdk-trace";
import type { SpanExporter } from "@opentelemetry/sdk-trace";
import type { TracingConfig } from "../../config/observability-config.js";

/**
 * The OpenTelemetry SDK as the gateway uses it: one TracerProvider per gateway (never the global
 * one, so several gateways in one process do not mix), a batch span processor and the OTLP/HTTP
 * exporter, all from `TracingConfig` (the standard OTEL_* variables). Loaded only when tracing is
 * on. The SDK lines are pinned to 2.x / 0.2xx: the next ones need Node 22.15 (README, "Tracing").
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

/** `exporter` reporting failed exports to `log`, once per streak of failures (the SDK itself is silent). */
export function reportingExporter(exporter: SpanExporter, log: ExportLog): SpanExporter {
  let failing = false;
  return {
    export(spans, done) {
      exporter.export(spans, (result) => {
        if (result.code !== ExportResultCode.SUCCESS) {
          if (!failing) log.warn({ spans: spans.length, err: result.error?.message }, TRACE_EXPORT_FAILED_MSG);
          failing = true;
        } else if (failing) {
          failing = false;
          log.info({}, TRACE_EXPORT_RECOVERED_MSG);
        }
        done(result);
      });
    },
    shutdown: () => exporter.shutdown(),
    forceFlush: () => exporter.forceFlush?.() ?? Promise.resolve(),
  };
}

/** What the provider is built from besides the configuration. */
export interface ProviderOptions {
  /** The gateway's version (`service.version`). */
  version: string;
  /** Where export failures go. */
  log: ExportLog;
  /** Replaces the OTLP exporter (tests of the SDK wiring). @default the OTLP/HTTP exporter of `config.protocol` */
  exporter?: SpanExporter;
}

/**
 * Builds the tracer provider; `config.endpoint` must be set. Its sampler keeps every span it is
 * asked to start: whether a call is traced is decided before, by `sampleCall` (OTEL_TRACES_SAMPLER's
 * rules), so a call that is not traced never reaches the SDK.
 */
export function createTracerProvider(config: TracingConfig, options: ProviderOptions): TracerProvider {
  const Exporter = config.protocol === "http/json" ? OtlpJsonExporter : OtlpProtobufExporter;
  const exporter =
    options.exporter ??
    new Exporter({ url: config.endpoint, headers: { ...config.headers }, timeoutMillis: config.timeoutMs });
  const resource = defaultResource().merge(
    resourceFromAttributes({
      "service.instance.id": randomUUID(),
      ...config.resourceAttributes,
      "service.name": config.serviceName,
      "service.version": options.version,
    }),
  );
  return new TracerProvider({
    resource,
    sampler: new AlwaysOnSampler(),
    spanProcessors: [
      new BatchSpanProcessor({
        exporter: reportingExporter(exporter, options.log),
        scheduledDelayMillis: config.scheduleDelayMs,
        maxQueueSize: config.maxQueueSize,
        maxExportBatchSize: config.maxExportBatchSize,
        exportTimeoutMillis: config.exportTimeoutMs,
      }),
    ],
  });
}
