import type { UpstreamOptions } from "../upstream/ollama-node.js";
import type { AuthFileConfig, PrincipalEntry } from "./auth-file.js";
import type { LimitsConfig } from "./limits-config.js";
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
  /**
   * GPU memory the node's loaded models share, bytes, when the operator knows it (config file
   * only): the starting point of the learned capacity, which what Ollama does still corrects.
   * @default undefined (learned)
   */
  vramBytes?: number | undefined;
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
   * How long a new connection has to identify itself: its first bytes, then an HTTP/1.1
   * request's headers (counted from the request's first byte) or the HTTP/2 preface and SETTINGS
   * exchange. Slowloris clients are cut off after this. Env HTTP_HEADERS_TIMEOUT_MS. @default 10000
   */
  httpHeadersTimeoutMs: number;
  /**
   * HTTP/1.1: longest time to receive a whole request, headers and body (4 MiB at a slow
   * 100 kB/s fits). At least `httpHeadersTimeoutMs`. Env HTTP_REQUEST_TIMEOUT_MS. @default 60000
   */
  httpRequestTimeoutMs: number;
  /**
   * An HTTP/2 connection without an open stream for this long is closed with GOAWAY (clients
   * reconnect on their next call). PINGs do not count as use. Generous so gRPC channels that
   * sit idle between calls are not churned. Env HTTP2_IDLE_TIMEOUT_MS. @default 300000 (5 min)
   */
  http2IdleTimeoutMs: number;
  /**
   * Each HTTP/2 connection gets a PING this often; one not answered within `http2PingTimeoutMs`
   * marks the connection dead (client gone, or the session shut by a protocol error) and it is
   * destroyed. Env HTTP2_PING_INTERVAL_MS. @default 5000
   */
  http2PingIntervalMs: number;
  /** How long a PING may go unanswered. Env HTTP2_PING_TIMEOUT_MS. @default 5000 */
  http2PingTimeoutMs: number;
  /**
   * Open client connections (all protocols) per gateway process; further ones are closed at
   * accept. Keep it below the descriptor limit (`ulimit -n`) minus the upstream connections.
   * Env MAX_CONNECTIONS. @default 10000
   */
  maxConnections: number;
  /**
   * Open connections from one client address; 0 = no limit. Leave it off behind a proxy or
   * sidecar, where every connection comes from the same address. Env MAX_CONNECTIONS_PER_IP. @default 0
   */
  maxConnectionsPerIp: number;
  /**
   * Health Watch streams open at once; they are exempt from the call cap and never end on
   * their own, so they have this bound instead. Env HEALTH_MAX_WATCHERS. @default 1000
   */
  healthMaxWatchers: number;
  /**
   * Time a call's request body has to arrive, from its headers; a call whose body has not
   * arrived by then ends with DEADLINE_EXCEEDED (reason REQUEST_BODY_TIMEOUT). Env
   * REQUEST_BODY_TIMEOUT_MS. @default 10000
   */
  requestBodyTimeoutMs: number;
  /**
   * Calls waiting for their request body at once (they are not counted against
   * `maxConcurrentRpcs` until it arrives); one more sheds the call silent longest with
   * RESOURCE_EXHAUSTED. Env REQUEST_BODY_MAX_WAITING. @default 4096
   */
  requestBodyMaxWaiting: number;
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
  /**
   * Per-principal rate limits and token quotas: the config file's `limits` section, with the
   * default request limit from env RATE_LIMIT_RPS / RATE_LIMIT_BURST. @default none (off)
   */
  limits: LimitsConfig;
  /** RATE_LIMIT_RPS and RATE_LIMIT_BURST as given at start, for parsing `limits` again on reload. */
  rateLimitEnv: { readonly RATE_LIMIT_RPS: string | undefined; readonly RATE_LIMIT_BURST: string | undefined };
  /** The JSON config file (nodes, modelNumCtx, principals, roles...). Env GATEWAY_CONFIG_FILE. @default none */
  configFile: string | undefined;
  /**
   * How often the config file (and the TLS and JWT key files) are checked for changes, which are
   * then applied without a restart (principals, keys, permissions; certificates); SIGHUP checks
   * at once. 0 = only on SIGHUP. Env CONFIG_WATCH_INTERVAL_MS. @default 2000
   */
  configWatchIntervalMs: number;
  /** Who may call, and what. */
  auth: AuthConfig;
  /** TLS on the port; undefined = plaintext (h2c and HTTP/1.1). */
  tls: TlsConfig | undefined;
  /** The Prometheus endpoint (METRICS_*); off unless METRICS_PORT is set. */
  metrics: MetricsConfig;
  /** Trace export (the standard OTEL_* variables); off unless an OTLP endpoint is set. */
  tracing: TracingConfig;
}

/** How a caller may prove who it is. */
export type AuthMode = "api-key" | "jwt" | "mtls";

/** Authentication and permissions (README "Authentication" and "Permissions"). */
export interface AuthConfig {
  /**
   * The credentials accepted; empty = authentication off (every call anonymous, no permission
   * checks). Env AUTH_MODE: `off`, or a comma list of `api-key`, `jwt`, `mtls`.
   * @default off, or api-key when API_KEYS or the config file's principals hold keys
   */
  modes: readonly AuthMode[];
  /** Reflection needs credentials too (health never does). Env AUTH_REFLECTION (open|authenticated). @default open */
  restrictReflection: boolean;
  /** Principals, keys, roles and default permissions: the config file's, with API_KEYS' principals. Reloaded. */
  file: AuthFileConfig;
  /** The principals of API_KEYS, kept for reloads of the file. Env API_KEYS: `name:sha256hex,...`. */
  envPrincipals: readonly PrincipalEntry[];
  /** JWT verification; undefined unless AUTH_MODE has jwt. */
  jwt: JwtConfig | undefined;
}

/** How bearer JWTs are verified. */
export interface JwtConfig {
  /** Where the issuer publishes its keys. Env JWT_JWKS_URL (this or JWT_KEY_FILE). */
  jwksUrl: string | undefined;
  /** A PEM public key or a JWKS JSON file, re-read when it changes. Env JWT_KEY_FILE. */
  keyFile: string | undefined;
  /** Accepted `iss` values (one must match). Env JWT_ISSUER, comma list. Required. */
  issuers: readonly string[];
  /** Accepted `aud` values (one must be in the token's). Env JWT_AUDIENCE, comma list. Required. */
  audiences: readonly string[];
  /** Accepted `alg` values. Env JWT_ALGORITHMS, comma list. @default every asymmetric JWS algorithm */
  algorithms: readonly string[];
  /** Tolerated clock difference for exp, nbf and iat, in seconds. Env JWT_CLOCK_SKEW_S. @default 30 */
  clockSkewS: number;
  /** The claim naming the principal (a dotted path reaches into objects). Env JWT_PRINCIPAL_CLAIM. @default "sub" */
  principalClaim: string;
  /** The claim listing the token's roles (array, or space-separated string). Env JWT_ROLES_CLAIM. @default "roles" */
  rolesClaim: string;
  /** Least time between two JWKS fetches for unknown `kid`s. Env JWT_JWKS_COOLDOWN_MS. @default 30000 */
  jwksCooldownMs: number;
  /** JWKS refreshed in the background once older than this. Env JWT_JWKS_MAX_AGE_MS. @default 600000 */
  jwksMaxAgeMs: number;
  /** Verified tokens remembered until their expiry (bounded). Env JWT_CACHE_ENTRIES. @default 10000 */
  cacheEntries: number;
}

/** TLS on the gateway's port (README "TLS"). */
export interface TlsConfig {
  /** PEM certificate chain. Env TLS_CERT_FILE. */
  certFile: string;
  /** PEM private key. Env TLS_KEY_FILE. */
  keyFile: string;
  /** PEM CA bundle that client certificates are verified against (mTLS); undefined = none asked. Env TLS_CLIENT_CA_FILE. */
  clientCaFile: string | undefined;
}

/** One model an alias sends traffic to, with its share. */
export interface AliasTarget {
  /** The model served (an installed model's name, as written in the config file). */
  readonly model: string;
  /** Relative share of the alias's calls (e.g. 90 and 10 for a canary); > 0. */
  readonly weight: number;
}

/** A model name clients use that the gateway resolves to real models (README, "Model aliases"). */
export interface ModelAlias {
  /** The name as configured (what ListModels shows and the log line's `model` says). */
  readonly name: string;
  /** The weighted targets; at least one. */
  readonly targets: readonly AliasTarget[];
  /** Models tried in this order when the picked target cannot be admitted (never after a message was sent). */
  readonly fallbacks: readonly string[];
}

/** The aliases in force, by canonical name; replaced whole by a config reload. */
export type AliasMap = ReadonlyMap<string, ModelAlias>;

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
  /**
   * Model aliases by canonical name: weighted targets, sticky per session key, and fallbacks
   * (README, "Model aliases"). Config file `aliases` only; reloaded. @default none
   */
  aliases: AliasMap;
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
  httpHeadersTimeoutMs: 10_000,
  httpRequestTimeoutMs: 60_000,
  http2IdleTimeoutMs: 5 * 60 * 1000,
  http2PingIntervalMs: 5_000,
  http2PingTimeoutMs: 5_000,
  maxConnections: 10_000,
  maxConnectionsPerIp: 0,
  healthMaxWatchers: 1000,
  requestBodyTimeoutMs: 10_000,
  requestBodyMaxWaiting: 4096,
  embedBatchWindowMs: 2,
  grpcFastPath: true,
  configWatchIntervalMs: 2_000,
  jwt: {
    algorithms: ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"],
    clockSkewS: 30,
    principalClaim: "sub",
    rolesClaim: "roles",
    jwksCooldownMs: 30_000,
    jwksMaxAgeMs: 10 * 60 * 1000,
    cacheEntries: 10_000,
  },
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
