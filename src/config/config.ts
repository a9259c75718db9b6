import type { UpstreamOptions } from "../upstream/ollama-node.js";
import type { MetricsConfig, TracingConfig } from "./observability-config.js";

/** One Ollama node the gateway routes to. */
export interface NodeConfig {
  /** Unique name used in logs, metrics and errors. @default "node-<n>" or the URL's host:port */
  name: string;
  /** Base URL of the node's Ollama API. */
  url: string;
  /** Parallel requests per loaded model on this node (its OLLAMA_NUM_PARALLEL). @default 1 */
  parallel: number;
  /** Models the node keeps loaded at once (its OLLAMA_MAX_LOADED_MODELS). @default 3 */
  maxLoadedModels: number;
  /** Relative share of traffic among equally good nodes. @default 1 */
  weight: number;
}

/** Everything the gateway can be configured with; `loadConfig` fills the defaults. */
export interface GatewayConfig {
  /** Interface to listen on. Env HOST. @default "0.0.0.0" */
  host: string;
  /** Port serving gRPC, gRPC-Web and Connect. Env PORT. @default 50051 */
  port: number;
  /** The Ollama fleet. Env OLLAMA_URL or OLLAMA_URLS. @default one node at http://127.0.0.1:11434 */
  nodes: NodeConfig[];
  /**
   * Gateway processes sharing the port (node:cluster), to use every core;
   * 1 = a single process. Env WORKERS. @default 1
   */
  workers: number;
  /** pino level. Env LOG_LEVEL. @default "info" */
  logLevel: "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";
  /** Largest request or response message, per message. Env MAX_MESSAGE_BYTES. @default 4 MiB */
  maxMessageBytes: number;
  /**
   * Upper bound for any RPC's deadline; RPCs without a deadline get it too,
   * so nothing runs forever. Env MAX_DEADLINE_MS. @default 1800000 (30 min)
   */
  maxDeadlineMs: number;
  /** RPCs (all methods) handled at once before RESOURCE_EXHAUSTED. Env MAX_CONCURRENT_RPCS. @default 2048 */
  maxConcurrentRpcs: number;
  /** On SIGTERM, how long running streams may finish before being cancelled. Env SHUTDOWN_GRACE_MS. @default 10000 */
  shutdownGraceMs: number;
  /** How often each node is probed with `GET /api/version`. Env HEALTH_PROBE_INTERVAL_MS. @default 2000 */
  probeIntervalMs: number;
  /** Timeout of one probe. Env HEALTH_PROBE_TIMEOUT_MS. @default 1000 */
  probeTimeoutMs: number;
  /**
   * HTTP/1.1 keep-alive idle timeout; above common sidecar idle timeouts to
   * avoid the reuse-while-closing race. Env HTTP1_KEEP_ALIVE_TIMEOUT_MS. @default 65000
   */
  http1KeepAliveTimeoutMs: number;
  /** HTTP/2 streams per connection. Env HTTP2_MAX_CONCURRENT_STREAMS. @default 1000 */
  http2MaxConcurrentStreams: number;
  /**
   * Concurrent Embed calls for one model and node arriving within this many
   * ms are sent to Ollama as one request; 0 = off. Env EMBED_BATCH_WINDOW_MS. @default 2
   */
  embedBatchWindowMs: number;
  /**
   * Serve gRPC Generate, Chat and Embed (binary, uncompressed requests) straight on the HTTP/2
   * stream instead of through connect-node: the same behaviour at a fraction of the CPU and
   * memory per call. Off = connect-node serves every call (for comparison, or if a client
   * misbehaves with it). Env GRPC_FAST_PATH. @default true
   */
  grpcFastPath: boolean;
  /** Connections to Ollama nodes. */
  upstream: UpstreamOptions;
  /** The metadata and embedding cache. */
  cache: CacheConfig;
  /** Admission queue, node choice and failure handling. */
  routing: RoutingConfig;
  /** The Prometheus endpoint (METRICS_*); off unless METRICS_PORT is set. */
  metrics: MetricsConfig;
  /** Trace export (the standard OTEL_* variables); off unless an OTLP endpoint is set. */
  tracing: TracingConfig;
}

/** How requests wait for, and are spread over, the fleet. */
export interface RoutingConfig {
  /** Requests waiting for one model. Env QUEUE_MAX_PER_MODEL. @default 256 */
  maxQueuedPerModel: number;
  /** Requests waiting in all. Env QUEUE_MAX_TOTAL. @default 2048 */
  maxQueuedTotal: number;
  /** Consecutive failures that open a node's circuit. Env CIRCUIT_FAILURE_THRESHOLD. @default 5 */
  circuitFailureThreshold: number;
  /** How long an open circuit stays open before a trial request. Env CIRCUIT_OPEN_MS. @default 5000 */
  circuitOpenMs: number;
  /** Tries per request before its first message (first one included). Env RETRY_MAX_ATTEMPTS. @default 3 */
  retryMaxAttempts: number;
  /**
   * Longest a request may wait in the gateway's queue, whatever its deadline: a latency budget
   * that sheds overload early (RESOURCE_EXHAUSTED, reason QUEUE_WAIT_TOO_LONG) instead of
   * letting every request wait out its deadline. 0 = the deadline alone. Env QUEUE_MAX_WAIT_MS. @default 0
   */
  maxQueueWaitMs: number;
  /**
   * Move models between nodes as demand shifts: a model loaded nowhere, or one whose oldest
   * waiting request has waited longer than a model load takes, gets a node drained for it.
   * Env REBALANCE (on|off). @default true
   */
  rebalance: boolean;
  /**
   * num_ctx forced per model (canonical name, or `*` for any), so clients
   * asking for different context sizes cannot make Ollama reload the model.
   * Env MODEL_NUM_CTX, e.g. `llama3.2:latest=8192,*=4096`; or `modelNumCtx` in the config file. @default none
   */
  numCtx: Map<string, number>;
}

/** Where cached metadata and embeddings live, and for how long. */
export interface CacheConfig {
  /**
   * Redis shared by all gateway replicas: redis://, rediss://,
   * redis+sentinel://h1:26379,h2:26379/master, redis+cluster://h1:6379,h2:6379.
   * Unset = in-process memory only. Env REDIS_URL.
   */
  redisUrl: string | undefined;
  /** Longest a Redis command may take before the gateway answers without it. Env REDIS_COMMAND_TIMEOUT_MS. @default 250 */
  redisCommandTimeoutMs: number;
  /** Entries in the in-process tier. Env CACHE_MEMORY_MAX_ENTRIES. @default 50000 */
  memoryMaxEntries: number;
  /** Bytes in the in-process tier. Env CACHE_MEMORY_MAX_BYTES. @default 256 MiB */
  memoryMaxBytes: number;
  /** Installed models per node. Env CACHE_TAGS_TTL_MS. @default 30000 */
  tagsTtlMs: number;
  /** Loaded models per node. Env CACHE_PS_TTL_MS. @default 2000 */
  psTtlMs: number;
  /** Model descriptions, by digest (a digest never changes). Env CACHE_SHOW_TTL_MS. @default 86400000 */
  showTtlMs: number;
  /** Cache Embed results. Env EMBED_CACHE (on|off). @default true */
  embeddings: boolean;
  /** How long a cached vector lives. Env EMBED_CACHE_TTL_MS. @default 604800000 (7 days) */
  embeddingsTtlMs: number;
}

/** Default values, in one place so docs, tests and `loadConfig` agree. */
export const DEFAULTS = {
  host: "0.0.0.0",
  port: 50051,
  ollamaUrl: "http://127.0.0.1:11434",
  logLevel: "info",
  workers: 1,
  maxMessageBytes: 4 * 1024 * 1024,
  maxDeadlineMs: 30 * 60 * 1000,
  maxConcurrentRpcs: 2048,
  shutdownGraceMs: 10_000,
  probeIntervalMs: 2_000,
  probeTimeoutMs: 1_000,
  http1KeepAliveTimeoutMs: 65_000,
  http2MaxConcurrentStreams: 1000,
  embedBatchWindowMs: 2,
  grpcFastPath: true,
  nodeParallel: 1,
  nodeMaxLoadedModels: 3,
  nodeWeight: 1,
  cache: {
    redisCommandTimeoutMs: 250,
    memoryMaxEntries: 50_000,
    memoryMaxBytes: 256 * 1024 * 1024,
    tagsTtlMs: 30_000,
    psTtlMs: 2_000,
    showTtlMs: 24 * 3600 * 1000,
    embeddings: true,
    embeddingsTtlMs: 7 * 24 * 3600 * 1000,
  },
  routing: {
    maxQueuedPerModel: 256,
    maxQueuedTotal: 2048,
    circuitFailureThreshold: 5,
    circuitOpenMs: 5_000,
    retryMaxAttempts: 3,
    maxQueueWaitMs: 0,
    rebalance: true,
  },
  upstream: {
    connections: 64,
    connectTimeoutMs: 5_000,
    idleTimeoutMs: 10 * 60 * 1000,
    maxLineBytes: 8 * 1024 * 1024,
    maxResponseBytes: 64 * 1024 * 1024,
  },
} as const satisfies Record<string, unknown>;
