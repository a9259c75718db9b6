import type { DescMethod } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import type { ConnectError, ContextValues } from "@connectrpc/connect";
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, TraceFlags, trace } from "@opentelemetry/api";
import type { Attributes, Context, Span, TextMapGetter, TextMapSetter, Tracer } from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import type { SpanExporter } from "@opentelemetry/sdk-trace";
import type { TracingConfig } from "../../config/observability-config.js";
import { errorReason } from "../../errors/gateway-error.js";
import { InferenceService } from "../../gen/ollama/gateway/v1/inference_pb.js";
import type { EmbeddingCache } from "../../services/embedding-cache.js";
import type { FailoverObserver } from "../../services/failover.js";
import { isUpstreamError } from "../../upstream/upstream-error.js";
import type { UpstreamExchange, UpstreamObserver } from "../../upstream/ollama-node.js";
import type { RpcInfo } from "../rpc-info.js";
import { codeLabel } from "./code-label.js";
import { createTracerProvider } from "./otel-sdk.js";
import type { ExportLog } from "./otel-sdk.js";
import { sampleCall } from "./sampling.js";
import { createTraceScope } from "./trace-scope.js";

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
  /** Where export failures go. */
  log: ExportLog;
  /** Replaces the OTLP exporter (tests). */
  exporter?: SpanExporter;
}

/**
 * OpenTelemetry traces of the gateway's calls (README, "Operating it", Tracing): one server span
 * per call, parented to the client's W3C `traceparent` on every protocol and path, with GenAI
 * attributes; child spans for the queue wait, each upstream request (an HTTP client span whose
 * context goes to Ollama in `traceparent`) and Embed cache lookups. Spans of a call are linked
 * through its trace context (see TraceScope). A call the sampler drops (`sampleCall`) costs no
 * span object at all: no children, no attributes, nothing exported; a trace context it came with
 * still travels to Ollama, not sampled, as W3C asks.
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
  /** Exports every span ended so far (tests). */
  forceFlush(): Promise<void>;
  /** Exports what is left and stops (the gateway's close). */
  shutdown(): Promise<void>;
}

const headerGetter: TextMapGetter<Headers> = {
  get: (carrier, key) => carrier.get(key) ?? undefined,
  keys: (carrier) => [...carrier.keys()],
};

const recordSetter: TextMapSetter<Record<string, string>> = {
  set: (carrier, key, value) => {
    carrier[key] = value;
  },
};

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

/**
 * A `performance.now()` instant on the wall clock (ms since the epoch), as the SDK times spans
 * started now: `performance.timeOrigin` plus it drifts from `Date.now()` over a process's life,
 * and a child timed on the other clock could seem to end after its next sibling started.
 */
function wallClock(instant: number): number {
  return Date.now() - (performance.now() - instant);
}

/** `error.type` of a failed upstream request: the HTTP status, or the error's code or name. */
function upstreamErrorType(e: unknown): string {
  if (isUpstreamError(e)) return e.kind === "http" ? String(e.status) : `upstream_${e.kind}`;
  const code = (e as { code?: unknown } | undefined)?.code;
  if (typeof code === "string") return code;
  return e instanceof Error ? e.name : "error";
}

/** Builds the tracer (loads the SDK) and the hooks and observers that use it. */
export function createGatewayTracing(options: GatewayTracingOptions): GatewayTracing {
  const provider = createTracerProvider(options.config, {
    version: options.version,
    log: options.log,
    exporter: options.exporter,
  });
  const tracer: Tracer = provider.getTracer("ollama-grpc-gateway", options.version);
  const propagator = new W3CTraceContextPropagator();
  const scope = createTraceScope();
  const addresses = new Map(
    options.nodes.map((n) => {
      const url = new URL(n.url);
      url.username = "";
      url.password = "";
      const port = url.port !== "" ? Number(url.port) : url.protocol === "https:" ? 443 : 80;
      return [n.name, { base: url.href.replace(/\/+$/, ""), host: url.hostname, port }] as const;
    }),
  );

  /** The running call's span if it records (a sampled call), else undefined. */
  const recording = (): { context: Context; span: Span } | undefined => {
    const context = scope.active();
    const span = context === undefined ? undefined : trace.getSpan(context);
    return span?.isRecording() ? { context: context!, span } : undefined;
  };

  const inject = (context: Context): Record<string, string> => {
    const headers: Record<string, string> = {};
    propagator.inject(context, headers, recordSetter);
    return headers;
  };

  function endServerSpan(span: Span, call: TracedCall, error: ConnectError | undefined): void {
    const info = call.info;
    if (info.model) span.setAttribute("gen_ai.request.model", info.model);
    if (info.node) span.setAttribute(ATTR.node, info.node);
    if (info.promptTokens > 0) span.setAttribute("gen_ai.usage.input_tokens", info.promptTokens);
    if (info.completionTokens > 0) span.setAttribute("gen_ai.usage.output_tokens", info.completionTokens);
    if (call.streaming) span.setAttribute(ATTR.messages, info.messages);
    const principal = options.principalOf?.(call.values);
    if (principal !== undefined) span.setAttribute(ATTR.principal, principal);
    const code = error === undefined ? 0 : error.code;
    span.setAttribute("rpc.grpc.status_code", code);
    if (error !== undefined) {
      const reason = errorReason(error);
      span.setAttribute("error.type", reason ?? codeLabel(code));
      if (reason !== undefined) span.setAttribute(ATTR.reason, reason);
      if (SERVER_ERRORS.has(error.code)) span.setStatus({ code: SpanStatusCode.ERROR, message: error.rawMessage });
    }
    span.end();
  }

  const upstream: UpstreamObserver = {
    start(node, method, path, body) {
      const context = scope.active();
      if (context === undefined) return undefined;
      const parent = trace.getSpan(context);
      if (parent === undefined) return undefined;
      if (!parent.isRecording()) {
        // Not sampled, with the caller's trace context: it travels on (its flags say "not sampled").
        return { headers: inject(context) };
      }
      const address = addresses.get(node);
      const model = (body as { model?: unknown } | undefined)?.model;
      const attributes: Attributes = {
        "http.request.method": method,
        [ATTR.node]: node,
      };
      if (address !== undefined) {
        attributes["url.full"] = address.base + path;
        attributes["server.address"] = address.host;
        attributes["server.port"] = address.port;
      }
      if (typeof model === "string") attributes["gen_ai.request.model"] = model;
      const span = tracer.startSpan(`${method} ${path}`, { kind: SpanKind.CLIENT, attributes }, context);
      const exchange: UpstreamExchange = {
        headers: inject(trace.setSpan(context, span)),
        responded(status) {
          span.setAttribute("http.response.status_code", status);
        },
        answered(final) {
          const served = final["model"];
          const reasons = finishReasons(final);
          const input = positive(final["prompt_eval_count"]);
          const output = positive(final["eval_count"]);
          for (const s of [span, parent]) {
            if (typeof served === "string") s.setAttribute("gen_ai.response.model", served);
            if (reasons !== undefined) s.setAttribute("gen_ai.response.finish_reasons", reasons);
          }
          if (input !== undefined) span.setAttribute("gen_ai.usage.input_tokens", input);
          if (output !== undefined) span.setAttribute("gen_ai.usage.output_tokens", output);
        },
        ended(error) {
          if (error !== undefined) {
            span.setAttribute("error.type", upstreamErrorType(error));
            span.setStatus({
              code: SpanStatusCode.ERROR,
              message: error instanceof Error ? error.message.slice(0, 500) : String(error),
            });
          }
          span.end();
        },
      };
      return exchange;
    },
  };

  const failover: FailoverObserver = {
    admitted(model, node, number, startedAt, queueMs) {
      const running = recording();
      if (running === undefined) return;
      tracer
        .startSpan(
          SPAN.queueWait,
          {
            startTime: wallClock(startedAt),
            attributes: {
              "gen_ai.request.model": model,
              [ATTR.node]: node,
              [ATTR.attempt]: number,
              [ATTR.queueMs]: queueMs,
            },
          },
          running.context,
        )
        .end();
    },
    refused(model, error, startedAt) {
      const running = recording();
      if (running === undefined) return;
      const reason = errorReason(error);
      const span = tracer.startSpan(
        SPAN.queueWait,
        { startTime: wallClock(startedAt), attributes: { "gen_ai.request.model": model } },
        running.context,
      );
      span.setAttribute("error.type", reason ?? codeLabel(error.code));
      if (reason !== undefined) span.setAttribute(ATTR.reason, reason);
      span.setStatus({ code: SpanStatusCode.ERROR, message: error.rawMessage });
      span.end();
    },
    firstMessage() {
      recording()?.span.addEvent(FIRST_MESSAGE_EVENT);
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
      const parent =
        header === null ? ROOT_CONTEXT : propagator.extract(ROOT_CONTEXT, call.requestHeader, headerGetter);
      const remote = header === null ? undefined : trace.getSpanContext(parent);
      const sampled = sampleCall(
        options.config.sampler,
        options.config.samplerRatio,
        remote === undefined
          ? undefined
          : { traceId: remote.traceId, sampled: (remote.traceFlags & TraceFlags.SAMPLED) !== 0 },
      );
      if (!sampled) {
        // Every call enters a context, traced or not, so none inherits the previous call's (TraceScope).
        scope.enter(parent);
        if (remote !== undefined) call.info.traceId = remote.traceId;
        return undefined;
      }
      const service = call.method.parent.typeName;
      const attributes: Attributes = {
        "rpc.system": call.protocolName === "connect" ? "connect_rpc" : "grpc",
        "rpc.service": service,
        "rpc.method": call.method.name,
        [ATTR.protocol]: call.protocolName,
        [ATTR.requestId]: call.info.requestId,
      };
      if (call.info.peer) attributes["network.peer.address"] = call.info.peer;
      const operation = service === InferenceService.typeName ? GEN_AI_OPERATIONS.get(call.method.name) : undefined;
      if (operation !== undefined) {
        attributes["gen_ai.operation.name"] = operation;
        attributes["gen_ai.provider.name"] = "ollama";
        attributes["gen_ai.system"] = "ollama";
      }
      const span = tracer.startSpan(`${service}/${call.method.name}`, { kind: SpanKind.SERVER, attributes }, parent);
      scope.enter(trace.setSpan(parent, span));
      call.info.traceId = span.spanContext().traceId;
      return (error) => endServerSpan(span, call, error);
    },
    upstream,
    failover,
    embeddingCache(cache) {
      return {
        async lookup(key, inputs, signal) {
          const running = recording();
          if (running === undefined) return cache.lookup(key, inputs, signal);
          const span = tracer.startSpan(
            SPAN.cacheLookup,
            { attributes: { [ATTR.cacheKind]: "emb", [ATTR.cacheInputs]: inputs.length } },
            running.context,
          );
          try {
            const found = await cache.lookup(key, inputs, signal);
            span.setAttribute(ATTR.cacheHits, found.filter((v) => v !== undefined).length);
            return found;
          } catch (e) {
            span.setStatus({ code: SpanStatusCode.ERROR, message: e instanceof Error ? e.message : String(e) });
            throw e;
          } finally {
            span.end();
          }
        },
        store: (key, inputs, vectors, signal) => cache.store(key, inputs, vectors, signal),
      };
    },
    forceFlush: () => provider.forceFlush(),
    shutdown: () => provider.shutdown(),
  };
}
