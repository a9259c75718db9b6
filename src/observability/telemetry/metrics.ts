import type { DescMethod } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import type { ConnectError, ContextValues } from "@connectrpc/connect";
import { collectDefaultMetrics, Counter, Gauge, Registry } from "prom-client";
import type { Cache } from "../../cache/cache.js";
import { errorReason } from "../../errors/gateway-error.js";
import type { RedisLink } from "../../redis/redis-link.js";
import type { FleetState } from "../../routing/fleet-state.js";
import type { Scheduler } from "../../routing/scheduler.js";
import { MIN_LOAD_SAMPLE_MS } from "../../routing/wait-estimate.js";
import type { FailoverObserver } from "../../services/failover.js";
import { canonicalModelName } from "../../upstream/model-name.js";
import type { CircuitState, NodeHealth } from "../../upstream/node-health.js";
import type { UpstreamExchange, UpstreamObserver } from "../../upstream/ollama-node.js";
import type { RpcInfo } from "../rpc-info.js";
import { codeLabel } from "./code-label.js";
import { fastCounter, fastHistogram } from "./fast-series.js";
import type { CounterSeries, HistogramSeries } from "./fast-series.js";
import { createLabelBound, memoised } from "./label-bound.js";

/** Every metric name starts with this (README, "Operating it", Metrics). */
export const METRIC_PREFIX = "ollama_gateway_";

/** What the metrics hook reads from a call (a pipeline `Call` fits). */
export interface MeteredCall {
  /** The method called; its service is `method.parent`. */
  readonly method: DescMethod;
  /** "grpc", "grpc-web" or "connect". */
  readonly protocolName: string;
  /** Model, node and token counts, as the handler left them when the call ends. */
  readonly info: RpcInfo;
  /** The call's context values: where authentication leaves the principal. */
  readonly values: ContextValues;
}

/** The parts of the gateway read when Prometheus scrapes (nothing of it is touched per call). */
export interface MetricsSources {
  /** Queue depth per model. */
  scheduler: Pick<Scheduler, "queues">;
  /** Loaded models, slots and requests running, per node. */
  fleet: FleetState;
  /** Circuit state per node. */
  health: Pick<NodeHealth, "state">;
  /** Hits, misses and errors per kind; memory tier size. */
  cache: Pick<Cache, "stats">;
  /** The Redis link, when Redis is configured. */
  redis?: Pick<RedisLink, "stats">;
  /** Calls being handled now (the concurrency cap's gauge). */
  activeCalls(): number;
}

/** How the metrics are set up. */
export interface GatewayMetricsOptions {
  /** Distinct model labels before the rest fold into `other` (METRICS_MAX_MODELS). */
  maxModels: number;
  /** Distinct principal labels before the rest fold into `other` (METRICS_MAX_PRINCIPALS). */
  maxPrincipals: number;
  /** The name of a call's principal, when authentication set one. @default none: no per-principal series */
  principalOf?: (values: ContextValues) => string | undefined;
  /** The gateway's version, for `ollama_gateway_build_info`. */
  version: string;
  /** Also export the process and Node runtime metrics (prom-client's defaults). @default true */
  runtime?: boolean;
}

/**
 * The gateway's Prometheus metrics (prom-client) and the ways they are fed: the call pipeline's
 * hook (`beginCall`), the upstream and failover observers, and the gateway's state read at
 * scrape time (`watch`). Names, labels and meanings are the README's metrics table.
 *
 * Cost per call: label children are resolved once per (method, protocol, code, model) and kept,
 * so a call costs a few map lookups, one counter increment and one histogram observation, plus
 * one closure (its end). Everything that is state rather than an event (queues, slots, circuits,
 * cache counters) is read only when Prometheus scrapes.
 */
export interface GatewayMetrics {
  /** The registry `/metrics` renders (its own, never prom-client's global one). */
  readonly registry: Registry;
  /** Starts counting a call; call the result once when it ends, with the error it was sent (undefined = OK). */
  beginCall(call: MeteredCall): (error: ConnectError | undefined) => void;
  /** Tokens, tokens per second, model loads and Embed batch sizes from what Ollama answers. */
  readonly upstream: UpstreamObserver;
  /** Queue waits, time to first token, upstream errors, retries and failovers. */
  readonly failover: FailoverObserver;
  /** What to read at scrape time; before this, those metrics are absent. */
  watch(sources: MetricsSources): void;
}

/** Call durations: from a refused call (well under a millisecond) to a long generation. */
const DURATION_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];
/** Time to first token: prompt evaluation, queue waits and cold model loads. */
const TTFT_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120];
/** Generation speed: CPU-only small models to fast GPUs. */
const TOKENS_PER_SECOND_BUCKETS = [1, 2.5, 5, 10, 15, 20, 30, 40, 50, 75, 100, 150, 200, 300, 500, 1000];
/** Waits in the admission queue. */
const QUEUE_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
/** Model loads: seconds to minutes. */
const LOAD_BUCKETS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300];
/** Inputs per upstream /api/embed request (micro-batches hold up to 256). */
const BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];

/** Codes a refusal ends with: the gateway declined to serve the call (a reason says why). */
const REFUSAL_CODES: ReadonlySet<Code> = new Set([Code.ResourceExhausted, Code.Unauthenticated, Code.PermissionDenied]);
/** Admission refusals that prove the model exists (it was located before it was queued). */
const QUEUE_REASONS: ReadonlySet<string> = new Set(["QUEUE_FULL", "DEADLINE_TOO_SHORT", "QUEUE_WAIT_TOO_LONG"]);
const CIRCUIT_STATES: readonly CircuitState[] = ["closed", "half-open", "open"];
const PROTOCOLS = ["grpc", "grpc-web", "connect"] as const;

function protocolIndex(name: string): number {
  const i = PROTOCOLS.indexOf(name as (typeof PROTOCOLS)[number]);
  return i === -1 ? PROTOCOLS.length - 1 : i;
}

interface CallSeries {
  calls: CounterSeries;
  duration: HistogramSeries;
}

interface MethodSeries {
  readonly service: string;
  readonly name: string;
  /** [protocol][code] → model label → series. */
  readonly byProtocol: (Map<string, CallSeries> | undefined)[][];
}

interface ModelNodeSeries {
  ttft: HistogramSeries;
  tokensPerSecond: HistogramSeries;
  inputTokens: CounterSeries;
  outputTokens: CounterSeries;
  loads: CounterSeries;
  loadSeconds: HistogramSeries;
}

interface PrincipalSeries {
  calls: CounterSeries;
  inputTokens: CounterSeries;
  outputTokens: CounterSeries;
}

/** Series per label value, resolved once (the hot paths' lookups are one Map get). */
function perLabel<T>(make: (label: string) => T): (label: string) => T {
  const all = new Map<string, T>();
  return (label) => {
    let s = all.get(label);
    if (s === undefined) all.set(label, (s = make(label)));
    return s;
  };
}

/** Creates the registry and every metric (see GatewayMetrics). */
export function createGatewayMetrics(options: GatewayMetricsOptions): GatewayMetrics {
  const registry = new Registry();
  const registers = [registry];
  const p = METRIC_PREFIX;
  const models = createLabelBound(options.maxModels, { admitOnSight: false });
  const principals = createLabelBound(options.maxPrincipals, { admitOnSight: true });
  const canonical = memoised(canonicalModelName, 4 * options.maxModels + 64);
  /** The model label of a name as a client or Ollama wrote it ("" stays ""). */
  const modelLabel = (name: string): string => (name === "" ? "" : models.label(canonical(name)));
  const admitModel = (name: string): void => {
    if (name !== "") models.admit(canonical(name));
  };
  let sources: MetricsSources | undefined;

  if (options.runtime ?? true) collectDefaultMetrics({ register: registry });

  new Gauge({
    name: `${p}build_info`,
    help: "Always 1; the gateway's version and Node's as labels.",
    labelNames: ["version", "node_version"] as const,
    registers,
    aggregator: "max",
  }).set({ version: options.version, node_version: process.version }, 1);

  // --- calls (the pipeline hook) ---
  const calls = fastCounter({
    registry,
    name: `${p}calls_total`,
    help: "Calls that ended, by service, method, protocol, status code and model (refusals included).",
    labelNames: ["service", "method", "protocol", "code", "model"],
  });
  const duration = fastHistogram({
    registry,
    name: `${p}call_duration_seconds`,
    help: "Call duration from the first hook to the last message or the error, seconds.",
    labelNames: ["service", "method", "protocol", "code", "model"],
    buckets: DURATION_BUCKETS,
  });
  const refusals = fastCounter({
    registry,
    name: `${p}refusals_total`,
    help: "Calls refused (RESOURCE_EXHAUSTED, UNAUTHENTICATED, PERMISSION_DENIED) by ErrorInfo reason and model.",
    labelNames: ["reason", "model"],
  });
  new Gauge({
    name: `${p}calls_active`,
    help: "Calls being handled now (those counted against MAX_CONCURRENT_RPCS).",
    registers,
    collect() {
      if (sources !== undefined) this.set(sources.activeCalls());
    },
  });

  // --- per principal ---
  const principalCalls = fastCounter({
    registry,
    name: `${p}principal_calls_total`,
    help: "Calls per authenticated principal (at most METRICS_MAX_PRINCIPALS names, the rest as other).",
    labelNames: ["principal"],
  });
  const principalTokens = fastCounter({
    registry,
    name: `${p}principal_tokens_total`,
    help: "Tokens Ollama reported for a principal's calls, by type (input = prompt, output = completion).",
    labelNames: ["principal", "type"],
  });
  const principalRefusals = fastCounter({
    registry,
    name: `${p}principal_refusals_total`,
    help: "A principal's calls refused, by ErrorInfo reason.",
    labelNames: ["principal", "reason"],
  });

  // --- per model and node (upstream answers, the failover) ---
  const ttft = fastHistogram({
    registry,
    name: `${p}time_to_first_token_seconds`,
    help: "Streams: from the start of the upstream call (admission queue and retries included) to the first message sent, seconds.",
    labelNames: ["model", "node"],
    buckets: TTFT_BUCKETS,
  });
  const tokensPerSecond = fastHistogram({
    registry,
    name: `${p}output_tokens_per_second`,
    help: "Generation speed Ollama reported per request (eval_count / eval_duration).",
    labelNames: ["model", "node"],
    buckets: TOKENS_PER_SECOND_BUCKETS,
  });
  const tokens = fastCounter({
    registry,
    name: `${p}tokens_total`,
    help: "Tokens Ollama processed, by type: input (prompt_eval_count) and output (eval_count).",
    labelNames: ["model", "node", "type"],
  });
  const loads = fastCounter({
    registry,
    name: `${p}model_loads_total`,
    help: "Model loads seen in Ollama's answers (load_duration over 50 ms).",
    labelNames: ["model", "node"],
  });
  const loadSeconds = fastHistogram({
    registry,
    name: `${p}model_load_duration_seconds`,
    help: "Load time of the model loads seen (load_duration), seconds.",
    labelNames: ["model", "node"],
    buckets: LOAD_BUCKETS,
  });
  const upstreamErrors = fastCounter({
    registry,
    name: `${p}upstream_errors_total`,
    help: "Failed tries on a node, by ErrorInfo reason (every try, retried or not).",
    labelNames: ["model", "node", "reason"],
  });
  const retries = fastCounter({
    registry,
    name: `${p}retries_total`,
    help: "Failed tries that were tried again on another node (node = the one that failed).",
    labelNames: ["model", "node", "reason"],
  });
  const failovers = fastCounter({
    registry,
    name: `${p}failovers_total`,
    help: "Calls that needed more than one try: outcome recovered (a later try succeeded) or failed.",
    labelNames: ["model", "outcome"],
  });
  const embedBatch = fastHistogram({
    registry,
    name: `${p}embed_batch_inputs`,
    help: "Inputs per /api/embed request sent to Ollama (micro-batches of concurrent Embed calls).",
    labelNames: ["model"],
    buckets: BATCH_BUCKETS,
  });

  // --- admission ---
  const queueWait = fastHistogram({
    registry,
    name: `${p}queue_wait_seconds`,
    help: "Time a try waited in the admission queue for a slot, seconds.",
    labelNames: ["model"],
    buckets: QUEUE_BUCKETS,
  });
  new Gauge({
    name: `${p}queue_depth`,
    help: "Requests waiting in the admission queue, per model (0 for every model served so far with nobody waiting).",
    labelNames: ["model"] as const,
    registers,
    collect() {
      this.reset();
      if (sources === undefined) return;
      for (const model of models.values()) this.set({ model }, 0);
      for (const q of sources.scheduler.queues()) {
        admitModel(q.model);
        this.inc({ model: modelLabel(q.model) }, q.depth);
      }
    },
  });

  // --- nodes (read at scrape time) ---
  const forEachNode = (fn: (node: FleetState["nodes"][number]) => void): void => {
    if (sources !== undefined) for (const state of sources.fleet.nodes) fn(state);
  };
  new Gauge({
    name: `${p}node_circuit_state`,
    help: "1 for a node's current circuit state (closed, half-open, open), 0 for the others; with WORKERS > 1, the number of workers that see it.",
    labelNames: ["node", "state"] as const,
    registers,
    collect() {
      this.reset();
      forEachNode((s) => {
        const now = sources!.health.state(s.node.name);
        for (const state of CIRCUIT_STATES) this.set({ node: s.node.name, state }, state === now ? 1 : 0);
      });
    },
  });
  new Gauge({
    name: `${p}node_slots_configured`,
    help: "Parallel requests per loaded model configured for a node (OLLAMA_NUM_PARALLEL or the config file).",
    labelNames: ["node"] as const,
    registers,
    aggregator: "max",
    collect() {
      this.reset();
      forEachNode((s) => this.set({ node: s.node.name }, s.config.parallel));
    },
  });
  new Gauge({
    name: `${p}node_slots`,
    help: "Slots a loaded model gets on a node now: the configured ones, 1 for embedding-only models, fewer where learned.",
    labelNames: ["node", "model"] as const,
    registers,
    aggregator: "max",
    collect() {
      this.reset();
      forEachNode((s) => {
        for (const [model, m] of s.models) {
          admitModel(model);
          this.set({ node: s.node.name, model: modelLabel(model) }, sources!.fleet.slots(s, m.embeddingOnly));
        }
      });
    },
  });
  new Gauge({
    name: `${p}node_slots_in_use`,
    help: "Requests this gateway has running on a node, per model.",
    labelNames: ["node", "model"] as const,
    registers,
    collect() {
      this.reset();
      forEachNode((s) => {
        for (const [model, m] of s.models) this.inc({ node: s.node.name, model: modelLabel(model) }, m.inFlight);
      });
    },
  });
  new Gauge({
    name: `${p}node_models_loaded`,
    help: "Models the gateway believes are loaded on a node (its dispatches, corrected from /api/ps).",
    labelNames: ["node"] as const,
    registers,
    aggregator: "max",
    collect() {
      this.reset();
      forEachNode((s) => this.set({ node: s.node.name }, s.models.size));
    },
  });
  new Gauge({
    name: `${p}node_max_loaded_models`,
    help: "Models a node keeps loaded at once, as configured (OLLAMA_MAX_LOADED_MODELS or the config file).",
    labelNames: ["node"] as const,
    registers,
    aggregator: "max",
    collect() {
      this.reset();
      forEachNode((s) => this.set({ node: s.node.name }, s.config.maxLoadedModels));
    },
  });

  // --- cache and Redis (read at scrape time) ---
  const cacheCounter = (
    name: string,
    help: string,
    read: (k: { hits: number; memoryHits: number; misses: number; errors: number }, kind: string, c: Counter) => void,
    labelNames: readonly string[] = ["kind"],
  ): void => {
    new Counter({
      name: `${p}${name}`,
      help,
      labelNames,
      registers,
      collect() {
        this.reset();
        if (sources === undefined) return;
        for (const [kind, k] of Object.entries(sources.cache.stats().kinds)) read(k, kind, this);
      },
    });
  };
  cacheCounter(
    "cache_hits_total",
    "Cache hits per kind of entry (tags, ps, show, emb) and tier (memory, redis).",
    (k, kind, c) => {
      c.inc({ kind, tier: "memory" }, k.memoryHits);
      c.inc({ kind, tier: "redis" }, k.hits - k.memoryHits);
    },
    ["kind", "tier"],
  );
  cacheCounter("cache_misses_total", "Cache misses per kind of entry.", (k, kind, c) => c.inc({ kind }, k.misses));
  cacheCounter("cache_errors_total", "Failed or timed-out Redis reads per kind of entry.", (k, kind, c) =>
    c.inc({ kind }, k.errors),
  );
  new Gauge({
    name: `${p}cache_memory_entries`,
    help: "Entries in the in-process cache tier.",
    registers,
    collect() {
      if (sources !== undefined) this.set(sources.cache.stats().memoryEntries);
    },
  });
  new Gauge({
    name: `${p}cache_memory_bytes`,
    help: "Bytes in the in-process cache tier.",
    registers,
    collect() {
      if (sources !== undefined) this.set(sources.cache.stats().memoryBytes);
    },
  });
  /** Only with Redis configured (see `watch`): absent otherwise, rather than a misleading 0. */
  const watchRedis = (link: Pick<RedisLink, "stats">): void => {
    new Gauge({
      name: `${p}redis_up`,
      help: "1 while the Redis command connection is ready, 0 while not; absent without REDIS_URL.",
      registers,
      aggregator: "min",
      collect() {
        this.set(link.stats().commandReady ? 1 : 0);
      },
    });
  };

  // --- label children, resolved once and kept ---
  const byMethod = new Map<DescMethod, MethodSeries>();
  const callSeries = (method: DescMethod, protocol: string, code: Code | 0, model: string): CallSeries => {
    let m = byMethod.get(method);
    if (m === undefined) {
      m = { service: method.parent.typeName, name: method.name, byProtocol: PROTOCOLS.map(() => []) };
      byMethod.set(method, m);
    }
    const pi = protocolIndex(protocol);
    const byCode = m.byProtocol[pi]!;
    let byModel = byCode[code];
    if (byModel === undefined) byCode[code] = byModel = new Map();
    let s = byModel.get(model);
    if (s === undefined) {
      const labels = [m.service, m.name, PROTOCOLS[pi]!, codeLabel(code), model] as const;
      s = { calls: calls.series(...labels), duration: duration.series(...labels) };
      byModel.set(model, s);
    }
    return s;
  };

  const byNode = new Map<string, Map<string, ModelNodeSeries>>();
  const modelNodeSeries = (model: string, node: string): ModelNodeSeries => {
    let perModel = byNode.get(node);
    if (perModel === undefined) byNode.set(node, (perModel = new Map()));
    let s = perModel.get(model);
    if (s === undefined) {
      s = {
        ttft: ttft.series(model, node),
        tokensPerSecond: tokensPerSecond.series(model, node),
        inputTokens: tokens.series(model, node, "input"),
        outputTokens: tokens.series(model, node, "output"),
        loads: loads.series(model, node),
        loadSeconds: loadSeconds.series(model, node),
      };
      perModel.set(model, s);
    }
    return s;
  };

  const waitOf = perLabel((model) => queueWait.series(model));
  const batchOf = perLabel((model) => embedBatch.series(model));
  const byPrincipal = new Map<string, PrincipalSeries>();
  const principalSeries = (principal: string): PrincipalSeries => {
    let s = byPrincipal.get(principal);
    if (s === undefined) {
      s = {
        calls: principalCalls.series(principal),
        inputTokens: principalTokens.series(principal, "input"),
        outputTokens: principalTokens.series(principal, "output"),
      };
      byPrincipal.set(principal, s);
    }
    return s;
  };

  function endCall(call: MeteredCall, error: ConnectError | undefined, ms: number): void {
    const info = call.info;
    const model = modelLabel(info.model);
    const code = error === undefined ? 0 : error.code;
    const s = callSeries(call.method, call.protocolName, code, model);
    s.calls.inc();
    s.duration.observe(ms / 1000);
    let reason: string | undefined;
    if (error !== undefined && REFUSAL_CODES.has(error.code)) {
      reason = errorReason(error);
      if (reason !== undefined) refusals.series(reason, model).inc();
    }
    const name = options.principalOf?.(call.values);
    if (name === undefined) return;
    const principal = principals.label(name);
    const ps = principalSeries(principal);
    ps.calls.inc();
    if (info.promptTokens > 0) ps.inputTokens.inc(info.promptTokens);
    if (info.completionTokens > 0) ps.outputTokens.inc(info.completionTokens);
    if (reason !== undefined) principalRefusals.series(principal, reason).inc();
  }

  /** One exchange per node for the inference paths: the metrics keep nothing per request. */
  const answers = new Map<string, UpstreamExchange>();
  const answerWatcher = (node: string): UpstreamExchange => {
    let x = answers.get(node);
    if (x === undefined) {
      x = {
        answered(final) {
          const name = typeof final["model"] === "string" ? final["model"] : "";
          admitModel(name);
          const s = modelNodeSeries(modelLabel(name), node);
          const input = count(final["prompt_eval_count"]);
          const output = count(final["eval_count"]);
          if (input > 0) s.inputTokens.inc(input);
          if (output > 0) {
            s.outputTokens.inc(output);
            const evalNs = count(final["eval_duration"]);
            if (evalNs > 0) s.tokensPerSecond.observe(output / (evalNs / 1e9));
          }
          const loadMs = count(final["load_duration"]) / 1e6;
          if (loadMs > MIN_LOAD_SAMPLE_MS) {
            s.loads.inc();
            s.loadSeconds.observe(loadMs / 1000);
          }
        },
      };
      answers.set(node, x);
    }
    return x;
  };

  return {
    registry,
    beginCall(call) {
      const started = performance.now();
      return (error) => endCall(call, error, performance.now() - started);
    },
    upstream: {
      start(node, _method, path, body) {
        if (path === "/api/embed") {
          const b = body as { model?: unknown; input?: unknown } | undefined;
          if (Array.isArray(b?.input) && typeof b.model === "string") {
            batchOf(modelLabel(b.model)).observe(b.input.length);
          }
          return answerWatcher(node);
        }
        return path === "/api/generate" || path === "/api/chat" ? answerWatcher(node) : undefined;
      },
    },
    failover: {
      admitted({ model }, _node, _number, _startedAt, queueMs) {
        admitModel(model);
        waitOf(modelLabel(model)).observe(queueMs / 1000);
      },
      refused({ model }, error) {
        const reason = errorReason(error);
        if (reason !== undefined && QUEUE_REASONS.has(reason)) admitModel(model);
      },
      firstMessage({ model }, node, ms) {
        modelNodeSeries(modelLabel(model), node).ttft.observe(ms / 1000);
      },
      failed({ model }, node, error, retried) {
        const label = modelLabel(model);
        const reason = errorReason(error) ?? codeLabel(error.code);
        upstreamErrors.series(label, node, reason).inc();
        if (retried) retries.series(label, node, reason).inc();
      },
      failedOver({ model }, recovered) {
        failovers.series(modelLabel(model), recovered ? "recovered" : "failed").inc();
      },
    },
    watch(s) {
      if (sources === undefined && s.redis !== undefined) watchRedis(s.redis);
      sources = s;
    },
  };
}

/** A non-negative count or duration Ollama reported; 0 when absent or odd. */
function count(v: unknown): number {
  return typeof v === "number" && Number.isFinite(v) && v > 0 ? v : 0;
}
