import { randomUUID } from "node:crypto";
import type { DescMethod } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import type { ConnectError, ContextValues } from "@connectrpc/connect";
import type { TracingConfig } from "../../config/observability-config.js";
import { errorReason } from "../../errors/gateway-error.js";
import { InferenceService } from "../../gen/ollama/gateway/v1/inference_pb.js";
import type { EmbeddingCache } from "../../services/embedding-cache.js";
import type { FailoverObserver } from "../../services/failover.js";
import { isUpstreamError } from "../../upstream/upstream-error.js";
import type { UpstreamExchange, UpstreamObserver } from "../../upstream/ollama-node.js";
import { watcherOf, watchersOf, watchSignal } from "../../util/signal-lineage.js";
import type { RpcInfo } from "../rpc-info.js";
import { codeLabel } from "./code-label.js";
import { sampleCall } from "./sampling.js";
import { fromPerformance, now, RecordedSpan, SpanKind } from "./span.js";
import type { AttributeValue } from "./span.js";
import { createSpanExporter } from "./span-exporter.js";
import type { ExportLog } from "./span-exporter.js";
import { newTraceId, parseTraceparent, traceHeaders } from "./trace-context.js";
import type { SpanContext } from "./trace-context.js";

/** Attribute names of our own (not in the OpenTelemetry semantic conventions). */
export const ATTR = {
  node: "ollama_gateway.node",
  requestId: "ollama_gateway.request_id",
  protocol: "ollama_gateway.protocol",
  principal: "ollama_gateway.principal",
  reason: "ollama_gateway.error.reason",
  messages: "ollama_gateway.messages",
  attempt: "ollama_gateway.attempt",
  queueMs: "ollama_gateway.queue_ms",
  cacheKind: "ollama_gateway.cache.kind",
  cacheInputs: "ollama_gateway.cache.inputs",
  cacheHits: "ollama_gateway.cache.hits",
} as const;

/** Span names of the children (the server span is `service/method`, an upstream request `METHOD /path`). */
export const SPAN = { queueWait: "queue wait", cacheLookup: "cache lookup" } as const;

/** The event on the server span when a stream's first message reaches the client. */
export const FIRST_MESSAGE_EVENT = "first message";

/** What the tracing hook reads from a call (a pipeline `Call` fits). */
export interface TracedCall {
  readonly method: DescMethod;
  /** "grpc", "grpc-web" or "connect". */
  readonly protocolName: string;
  /** Where `traceparent` / `tracestate` come from. */
  readonly requestHeader: Headers;
  /** Request id (set before), model, node, tokens (set by the handler); the trace id is written here. */
  readonly info: RpcInfo;
  /** Where authentication leaves the principal. */
  readonly values: ContextValues;
  /** Streams also report the messages sent. */
  readonly streaming: boolean;
  /** The call's signal: the layers below find the call's trace by it (`watcherOf`). */
  readonly signal: AbortSignal;
}

/** How tracing is set up. */
export interface GatewayTracingOptions {
  /** The OTEL_* settings; `endpoint` must be set. */
  config: TracingConfig;
  /** The gateway's version (`service.version`). */
  version: string;
  /** The nodes, for the HTTP client spans' `server.address`, `server.port` and `url.full`. */
  nodes: readonly { name: string; url: string }[];
  /** The name of a call's principal, when authentication set one. @default none */
  principalOf?: (values: ContextValues) => string | undefined;
  /** Where export trouble goes. */
  log: ExportLog;
}

/**
 * OpenTelemetry traces of the gateway's calls (README, "Operating it", Tracing): one server span
 * per call, parented to the client's W3C `traceparent` on every protocol and path, with GenAI
 * attributes; child spans for the queue wait, each upstream request (an HTTP client span whose
 * context goes to Ollama in `traceparent`) and Embed cache lookups; exported over OTLP/HTTP.
 *
 * Hand-instrumented rather than on the OpenTelemetry SDK (README, "Tracing", has the measurements):
 * spans are plain records encoded straight into OTLP, and the layers below find a call's span
 * from the AbortSignal they were handed (`watcherOf`), not through AsyncLocalStorage, whose hooks
 * would tax every promise of every call. A call the sampler drops costs no span object at all; a
 * trace context it came with still travels to Ollama, not sampled, as W3C asks.
 */
export interface GatewayTracing {
  /** Starts a call's server span; the result (undefined for a call not sampled) ends it. */
  beginCall(call: TracedCall): ((error: ConnectError | undefined) => void) | undefined;
  /** HTTP client spans for upstream requests, and their `traceparent`. */
  readonly upstream: UpstreamObserver;
  /** Queue-wait spans; the first message as an event on the server span. */
  readonly failover: FailoverObserver;
  /** `cache` with a span around each lookup of a traced call. */
  embeddingCache(cache: EmbeddingCache): EmbeddingCache;
  /** Exports every span ended so far. */
  forceFlush(): Promise<void>;
  /** Exports what is left and stops (the gateway's close). */
  shutdown(): Promise<void>;
}

/** A call's trace: its server span when sampled; else the context it came with, passed on as is. */
class CallTrace {
  constructor(
    readonly span: RecordedSpan | undefined,
    readonly remote: SpanContext | undefined,
  ) {}
}

/** The GenAI operation of each inference method (OpenTelemetry GenAI semantic conventions). */
const GEN_AI_OPERATIONS: ReadonlyMap<string, string> = new Map([
  [InferenceService.method.generate.name, "text_completion"],
  [InferenceService.method.chat.name, "chat"],
  [InferenceService.method.embed.name, "embeddings"],
]);

/** Codes that mark a server span as failed (the semantic conventions for gRPC servers); others leave it unset. */
const SERVER_ERRORS: ReadonlySet<Code> = new Set([
  Code.Unknown,
  Code.DeadlineExceeded,
  Code.Unimplemented,
  Code.Internal,
  Code.Unavailable,
  Code.DataLoss,
]);

/**
 * Services whose calls are not traced: health probes come every few seconds from every
 * orchestrator and load balancer and would drown the traces (they are still counted and logged).
 * They never call upstream, so they need no trace context either.
 */
const UNTRACED: ReadonlySet<string> = new Set(["grpc.health.v1.Health"]);

/** Ollama's `done_reason` as the GenAI finish reasons. */
function finishReasons(final: Record<string, unknown>): string[] | undefined {
  const r = final["done_reason"];
  return typeof r === "string" && r !== "" ? [r] : undefined;
}

function positive(v: unknown): number | undefined {
  return typeof v === "number" && Number.isFinite(v) && v > 0 ? Math.trunc(v) : undefined;
}

/** `error.type` of a failed upstream request: the HTTP status, or the error's code or name. */
function upstreamErrorType(e: unknown): string {
  if (isUpstreamError(e)) return e.kind === "http" ? String(e.status) : `upstream_${e.kind}`;
  const code = (e as { code?: unknown } | undefined)?.code;
  if (typeof code === "string") return code;
  return e instanceof Error ? e.name : "error";
}

/** Builds tracing: the exporter, and the hook and observers that record spans into it. */
export function createGatewayTracing(options: GatewayTracingOptions): GatewayTracing {
  const { config } = options;
  const exporter = createSpanExporter({
    url: config.endpoint!,
    headers: config.headers,
    protocol: config.protocol,
    timeoutMs: Math.min(config.timeoutMs, config.exportTimeoutMs),
    exportTimeoutMs: config.exportTimeoutMs,
    scheduleDelayMs: config.scheduleDelayMs,
    maxQueueSize: config.maxQueueSize,
    maxExportBatchSize: config.maxExportBatchSize,
    log: options.log,
    resource: {
      "service.instance.id": randomUUID(),
      "telemetry.sdk.language": "nodejs",
      "telemetry.sdk.name": "ollama-grpc-gateway",
      "telemetry.sdk.version": options.version,
      ...config.resourceAttributes,
      "service.name": config.serviceName,
      "service.version": options.version,
    },
    scope: { name: "ollama-grpc-gateway", version: options.version },
  });
  const record = (span: RecordedSpan): void => exporter.add(span);
  /** A call's trace from a signal its work runs under; one failed lookup for a call not followed. */
  const traceOf = (signal: AbortSignal): CallTrace | undefined => {
    const trace = watcherOf(signal);
    return trace instanceof CallTrace ? trace : undefined;
  };
  const addresses = new Map(
    options.nodes.map((n) => {
      const url = new URL(n.url);
      url.username = "";
      url.password = "";
      const port = url.port !== "" ? Number(url.port) : url.protocol === "https:" ? 443 : 80;
      return [n.name, { base: url.href.replace(/\/+$/, ""), host: url.hostname, port }] as const;
    }),
  );

  function endServerSpan(span: RecordedSpan, call: TracedCall, error: ConnectError | undefined): void {
    const info = call.info;
    if (info.model) span.set("gen_ai.request.model", info.model);
    if (info.node) span.set(ATTR.node, info.node);
    if (info.promptTokens > 0) span.set("gen_ai.usage.input_tokens", info.promptTokens);
    if (info.completionTokens > 0) span.set("gen_ai.usage.output_tokens", info.completionTokens);
    if (call.streaming) span.set(ATTR.messages, info.messages);
    const principal = options.principalOf?.(call.values);
    if (principal !== undefined) span.set(ATTR.principal, principal);
    const code = error === undefined ? 0 : error.code;
    span.set("rpc.grpc.status_code", code);
    if (error !== undefined) {
      const reason = errorReason(error);
      span.set("error.type", reason ?? codeLabel(code));
      if (reason !== undefined) span.set(ATTR.reason, reason);
      if (SERVER_ERRORS.has(error.code)) span.fail(error.rawMessage);
    }
    span.end();
  }

  const upstream: UpstreamObserver = {
    start(node, method, path, body, signal) {
      let trace = traceOf(signal);
      if (trace === undefined) return undefined;
      // An Embed batch's request serves several calls: it is a child of the first one traced,
      // linked both ways with the others (their spans are still open, waiting for it).
      const batch = watchersOf(signal);
      if (batch !== undefined) {
        for (const t of batch) {
          if (t instanceof CallTrace && t.span !== undefined) {
            trace = t;
            break;
          }
        }
      }
      const parent = trace.span;
      // Not sampled, with the caller's trace context: it travels on as it came.
      if (parent === undefined) return trace.remote === undefined ? undefined : { headers: traceHeaders(trace.remote) };
      const span = parent.child(`${method} ${path}`, SpanKind.CLIENT);
      span.set("http.request.method", method).set(ATTR.node, node);
      const address = addresses.get(node);
      if (address !== undefined) {
        span
          .set("url.full", address.base + path)
          .set("server.address", address.host)
          .set("server.port", address.port);
      }
      const model = (body as { model?: unknown } | undefined)?.model;
      if (typeof model === "string") span.set("gen_ai.request.model", model);
      if (batch !== undefined) {
        for (const t of batch) {
          if (t === trace || !(t instanceof CallTrace) || t.span === undefined) continue;
          span.link(t.span.context);
          t.span.link(span.context);
        }
      }
      const exchange: UpstreamExchange = {
        headers: traceHeaders(span.context),
        responded(status) {
          span.set("http.response.status_code", status);
        },
        answered(final) {
          const served = final["model"];
          const reasons = finishReasons(final);
          for (const s of [span, parent]) {
            if (typeof served === "string") s.set("gen_ai.response.model", served);
            if (reasons !== undefined) s.set("gen_ai.response.finish_reasons", reasons);
          }
          const input = positive(final["prompt_eval_count"]);
          const output = positive(final["eval_count"]);
          if (input !== undefined) span.set("gen_ai.usage.input_tokens", input);
          if (output !== undefined) span.set("gen_ai.usage.output_tokens", output);
        },
        ended(error) {
          if (error !== undefined) {
            span.set("error.type", upstreamErrorType(error));
            span.fail(error instanceof Error ? error.message : String(error));
          }
          span.end();
        },
      };
      return exchange;
    },
  };

  const failover: FailoverObserver = {
    admitted(req, node, number, startedAt, queueMs) {
      const parent = traceOf(req.signal)?.span;
      if (parent === undefined) return;
      const attributes: [string, AttributeValue][] = [
        ["gen_ai.request.model", req.model],
        [ATTR.node, node],
        [ATTR.attempt, number],
        [ATTR.queueMs, queueMs],
      ];
      const span = parent.child(SPAN.queueWait, SpanKind.INTERNAL, fromPerformance(startedAt));
      for (const [k, v] of attributes) span.set(k, v);
      span.end();
    },
    refused(req, error, startedAt) {
      const parent = traceOf(req.signal)?.span;
      if (parent === undefined) return;
      const reason = errorReason(error);
      const span = parent.child(SPAN.queueWait, SpanKind.INTERNAL, fromPerformance(startedAt));
      span.set("gen_ai.request.model", req.model).set("error.type", reason ?? codeLabel(error.code));
      if (reason !== undefined) span.set(ATTR.reason, reason);
      span.fail(error.rawMessage);
      span.end();
    },
    firstMessage(req) {
      traceOf(req.signal)?.span?.event(FIRST_MESSAGE_EVENT);
    },
    failed() {
      // The failed try's client span already carries the error.
    },
    failedOver() {},
  };

  return {
    beginCall(call) {
      if (UNTRACED.has(call.method.parent.typeName)) return undefined;
      // Only a call that brings a trace context pays for reading it.
      const header = call.requestHeader.get("traceparent");
      const remote = header === null ? undefined : parseTraceparent(header, call.requestHeader.get("tracestate"));
      if (!sampleCall(config.sampler, config.samplerRatio, remote)) {
        if (remote !== undefined) {
          watchSignal(call.signal, new CallTrace(undefined, remote));
          call.info.traceId = remote.traceId;
        }
        return undefined;
      }
      const service = call.method.parent.typeName;
      const span = new RecordedSpan(
        remote?.traceId ?? newTraceId(),
        remote?.spanId ?? "",
        remote?.traceState ?? "",
        `${service}/${call.method.name}`,
        SpanKind.SERVER,
        now(),
        record,
      );
      span
        .set("rpc.system", call.protocolName === "connect" ? "connect_rpc" : "grpc")
        .set("rpc.service", service)
        .set("rpc.method", call.method.name)
        .set(ATTR.protocol, call.protocolName)
        .set(ATTR.requestId, call.info.requestId);
      if (call.info.peer) span.set("network.peer.address", call.info.peer);
      const operation = service === InferenceService.typeName ? GEN_AI_OPERATIONS.get(call.method.name) : undefined;
      if (operation !== undefined) {
        span
          .set("gen_ai.operation.name", operation)
          .set("gen_ai.provider.name", "ollama")
          .set("gen_ai.system", "ollama");
      }
      watchSignal(call.signal, new CallTrace(span, remote));
      call.info.traceId = span.traceId;
      return (error) => endServerSpan(span, call, error);
    },
    upstream,
    failover,
    embeddingCache(cache) {
      return {
        async lookup(key, inputs, signal) {
          const parent = signal === undefined ? undefined : traceOf(signal)?.span;
          if (parent === undefined) return cache.lookup(key, inputs, signal);
          const span = parent.child(SPAN.cacheLookup, SpanKind.INTERNAL);
          span.set(ATTR.cacheKind, "emb").set(ATTR.cacheInputs, inputs.length);
          try {
            const found = await cache.lookup(key, inputs, signal);
            span.set(ATTR.cacheHits, found.filter((v) => v !== undefined).length);
            return found;
          } catch (e) {
            span.fail(e instanceof Error ? e.message : String(e));
            throw e;
          } finally {
            span.end();
          }
        },
        store: (key, inputs, vectors, signal) => cache.store(key, inputs, vectors, signal),
      };
    },
    forceFlush: () => exporter.forceFlush(),
    shutdown: () => exporter.shutdown(),
  };
}
