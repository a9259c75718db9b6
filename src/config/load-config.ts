import { accessSync, constants as fsConstants, readFileSync } from "node:fs";
import { parseRedisUrl } from "../redis/redis-target.js";
import { canonicalModelName } from "../upstream/model-name.js";
import { DEFAULTS } from "./config.js";
import type {
  AliasMap,
  AuthConfig,
  AuthMode,
  GatewayConfig,
  JwtConfig,
  ModelAlias,
  NodeConfig,
  TlsConfig,
} from "./config.js";
import { parseApiKeysEnv, parseAuthFile } from "./auth-file.js";
import type { AuthFileConfig } from "./auth-file.js";
import type { LimitsConfig } from "./limits-config.js";
import { parseLimits } from "./limits-config.js";
import { parseMetricsConfig, parseTracingConfig, redactTracingConfig } from "./observability-config.js";

/** The environment could not be turned into a valid config; `problems` says why, one line each. */
export class ConfigError extends Error {
  override readonly name = "ConfigError";
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  - ${problems.join("\n  - ")}`);
  }
}

const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;

/**
 * Reads the gateway's config from environment variables, validates every
 * value and reports all problems at once, so a bad deployment fails at start
 * with a clear message instead of misbehaving later.
 */
export function loadConfig(env: Record<string, string | undefined> = process.env): GatewayConfig {
  const problems: string[] = [];
  const int = (key: string, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER): number => {
    const raw = env[key]?.trim();
    if (raw === undefined || raw === "") return fallback;
    const n = Number(raw);
    if (!Number.isInteger(n) || n < min || n > max) {
      problems.push(`${key}=${JSON.stringify(raw)} must be a whole number from ${min} to ${max}`);
      return fallback;
    }
    return n;
  };

  const onOff = (key: string, fallback: boolean): boolean => {
    const raw = env[key]?.trim().toLowerCase();
    if (raw === undefined || raw === "") return fallback;
    if (["on", "true", "1", "yes"].includes(raw)) return true;
    if (["off", "false", "0", "no"].includes(raw)) return false;
    problems.push(`${key}=${JSON.stringify(raw)} must be on or off`);
    return fallback;
  };

  const logLevel = (env["LOG_LEVEL"]?.trim() || DEFAULTS.logLevel) as GatewayConfig["logLevel"];
  if (!LOG_LEVELS.includes(logLevel)) {
    problems.push(`LOG_LEVEL=${JSON.stringify(logLevel)} must be one of ${LOG_LEVELS.join(", ")}`);
  }

  const parallel = int("OLLAMA_NUM_PARALLEL", DEFAULTS.nodeParallel, 1, 1024);
  const maxLoadedModels = int("OLLAMA_MAX_LOADED_MODELS", DEFAULTS.nodeMaxLoadedModels, 1, 1024);
  const file = readConfigFile(env["GATEWAY_CONFIG_FILE"], problems);
  const nodes = [...fileNodes(file, problems, { parallel, maxLoadedModels })];
  if (nodes.length === 0 || env["OLLAMA_URL"] || env["OLLAMA_URLS"]) {
    for (const n of parseNodes(env, problems, { parallel, maxLoadedModels })) {
      if (nodes.some((m) => m.name === n.name)) problems.push(`node name ${JSON.stringify(n.name)} is used twice`);
      else nodes.push(n);
    }
  }
  const numCtx = new Map<string, number>();
  for (const [model, value] of Object.entries(fileNumCtx(file, problems)))
    numCtx.set(model === "*" ? "*" : canonicalModelName(model), value);
  for (const part of (env["MODEL_NUM_CTX"] ?? "").split(",")) {
    if (!part.trim()) continue;
    const [model, raw] = part.split("=").map((x) => x.trim());
    const value = Number(raw);
    if (!model || !Number.isInteger(value) || value < 256 || value > 10_000_000) {
      problems.push(`MODEL_NUM_CTX entry ${JSON.stringify(part.trim())} must be model=tokens (256 or more)`);
    } else {
      numCtx.set(model === "*" ? "*" : canonicalModelName(model), value);
    }
  }

  const configFile = env["GATEWAY_CONFIG_FILE"]?.trim() || undefined;
  const auth = parseAuth(env, file, problems, int);
  const tls = parseTls(env, problems);
  if (auth.modes.includes("mtls") && tls?.clientCaFile === undefined) {
    problems.push("AUTH_MODE mtls needs TLS_CERT_FILE, TLS_KEY_FILE and TLS_CLIENT_CA_FILE");
  }

  const host = env["HOST"]?.trim() || DEFAULTS.host;
  const port = int("PORT", DEFAULTS.port, 0, 65535);
  const config: GatewayConfig = {
    host,
    port,
    nodes,
    workers: int("WORKERS", DEFAULTS.workers, 1, 256),
    logLevel,
    maxMessageBytes: int("MAX_MESSAGE_BYTES", DEFAULTS.maxMessageBytes, 1024, 1024 * 1024 * 1024),
    maxDeadlineMs: int("MAX_DEADLINE_MS", DEFAULTS.maxDeadlineMs, 1000, 7 * 24 * 3600 * 1000),
    maxConcurrentRpcs: int("MAX_CONCURRENT_RPCS", DEFAULTS.maxConcurrentRpcs, 1, 1_000_000),
    shutdownGraceMs: int("SHUTDOWN_GRACE_MS", DEFAULTS.shutdownGraceMs, 0, 3600 * 1000),
    probeIntervalMs: int("HEALTH_PROBE_INTERVAL_MS", DEFAULTS.probeIntervalMs, 50, 3600 * 1000),
    probeTimeoutMs: int("HEALTH_PROBE_TIMEOUT_MS", DEFAULTS.probeTimeoutMs, 10, 60 * 1000),
    http1KeepAliveTimeoutMs: int("HTTP1_KEEP_ALIVE_TIMEOUT_MS", DEFAULTS.http1KeepAliveTimeoutMs, 1000, 3600 * 1000),
    http2MaxConcurrentStreams: int("HTTP2_MAX_CONCURRENT_STREAMS", DEFAULTS.http2MaxConcurrentStreams, 1, 1_000_000),
    httpHeadersTimeoutMs: int("HTTP_HEADERS_TIMEOUT_MS", DEFAULTS.httpHeadersTimeoutMs, 100, 3600 * 1000),
    httpRequestTimeoutMs: int("HTTP_REQUEST_TIMEOUT_MS", DEFAULTS.httpRequestTimeoutMs, 100, 24 * 3600 * 1000),
    http2IdleTimeoutMs: int("HTTP2_IDLE_TIMEOUT_MS", DEFAULTS.http2IdleTimeoutMs, 100, 24 * 3600 * 1000),
    http2PingIntervalMs: int("HTTP2_PING_INTERVAL_MS", DEFAULTS.http2PingIntervalMs, 100, 3600 * 1000),
    http2PingTimeoutMs: int("HTTP2_PING_TIMEOUT_MS", DEFAULTS.http2PingTimeoutMs, 100, 3600 * 1000),
    maxConnections: int("MAX_CONNECTIONS", DEFAULTS.maxConnections, 1, 10_000_000),
    maxConnectionsPerIp: int("MAX_CONNECTIONS_PER_IP", DEFAULTS.maxConnectionsPerIp, 0, 10_000_000),
    healthMaxWatchers: int("HEALTH_MAX_WATCHERS", DEFAULTS.healthMaxWatchers, 0, 1_000_000),
    requestBodyTimeoutMs: int("REQUEST_BODY_TIMEOUT_MS", DEFAULTS.requestBodyTimeoutMs, 100, 3600 * 1000),
    requestBodyMaxWaiting: int("REQUEST_BODY_MAX_WAITING", DEFAULTS.requestBodyMaxWaiting, 1, 10_000_000),
    embedBatchWindowMs: int("EMBED_BATCH_WINDOW_MS", DEFAULTS.embedBatchWindowMs, 0, 1000),
    grpcFastPath: onOff("GRPC_FAST_PATH", DEFAULTS.grpcFastPath),
    configFile,
    configWatchIntervalMs: int("CONFIG_WATCH_INTERVAL_MS", DEFAULTS.configWatchIntervalMs, 0, 3600 * 1000),
    auth,
    tls,
    cache: {
      redisUrl: env["REDIS_URL"]?.trim() || undefined,
      redisCommandTimeoutMs: int("REDIS_COMMAND_TIMEOUT_MS", DEFAULTS.cache.redisCommandTimeoutMs, 10, 60_000),
      memoryMaxEntries: int("CACHE_MEMORY_MAX_ENTRIES", DEFAULTS.cache.memoryMaxEntries, 100, 100_000_000),
      memoryMaxBytes: int(
        "CACHE_MEMORY_MAX_BYTES",
        DEFAULTS.cache.memoryMaxBytes,
        1024 * 1024,
        64 * 1024 * 1024 * 1024,
      ),
      tagsTtlMs: int("CACHE_TAGS_TTL_MS", DEFAULTS.cache.tagsTtlMs, 100, 24 * 3600 * 1000),
      psTtlMs: int("CACHE_PS_TTL_MS", DEFAULTS.cache.psTtlMs, 100, 3600 * 1000),
      showTtlMs: int("CACHE_SHOW_TTL_MS", DEFAULTS.cache.showTtlMs, 1000, 365 * 24 * 3600 * 1000),
      embeddings: onOff("EMBED_CACHE", DEFAULTS.cache.embeddings),
      embeddingsTtlMs: int("EMBED_CACHE_TTL_MS", DEFAULTS.cache.embeddingsTtlMs, 1000, 365 * 24 * 3600 * 1000),
    },
    routing: {
      maxQueuedPerModel: int("QUEUE_MAX_PER_MODEL", DEFAULTS.routing.maxQueuedPerModel, 0, 1_000_000),
      maxQueuedTotal: int("QUEUE_MAX_TOTAL", DEFAULTS.routing.maxQueuedTotal, 0, 10_000_000),
      circuitFailureThreshold: int("CIRCUIT_FAILURE_THRESHOLD", DEFAULTS.routing.circuitFailureThreshold, 1, 1000),
      circuitOpenMs: int("CIRCUIT_OPEN_MS", DEFAULTS.routing.circuitOpenMs, 100, 3600 * 1000),
      retryMaxAttempts: int("RETRY_MAX_ATTEMPTS", DEFAULTS.routing.retryMaxAttempts, 1, 10),
      maxQueueWaitMs: int("QUEUE_MAX_WAIT_MS", DEFAULTS.routing.maxQueueWaitMs, 0, 24 * 3600 * 1000),
      rebalance: onOff("REBALANCE", DEFAULTS.routing.rebalance),
      numCtx,
      aliases: parseAliases(file.aliases, problems),
    },
    limits: parseLimits(file.limits, env, problems),
    rateLimitEnv: { RATE_LIMIT_RPS: env["RATE_LIMIT_RPS"], RATE_LIMIT_BURST: env["RATE_LIMIT_BURST"] },
    metrics: parseMetricsConfig(env, host, port, problems),
    tracing: parseTracingConfig(env, problems),
    upstream: {
      connections: int("UPSTREAM_CONNECTIONS", DEFAULTS.upstream.connections, 1, 10_000),
      connectTimeoutMs: int("UPSTREAM_CONNECT_TIMEOUT_MS", DEFAULTS.upstream.connectTimeoutMs, 10, 120_000),
      idleTimeoutMs: int("UPSTREAM_IDLE_TIMEOUT_MS", DEFAULTS.upstream.idleTimeoutMs, 1000, 24 * 3600 * 1000),
      maxLineBytes: int("UPSTREAM_MAX_LINE_BYTES", DEFAULTS.upstream.maxLineBytes, 1024, 1024 * 1024 * 1024),
      maxResponseBytes: int(
        "UPSTREAM_MAX_RESPONSE_BYTES",
        DEFAULTS.upstream.maxResponseBytes,
        1024,
        4 * 1024 * 1024 * 1024,
      ),
    },
  };
  if (config.httpRequestTimeoutMs < config.httpHeadersTimeoutMs) {
    problems.push(
      `HTTP_REQUEST_TIMEOUT_MS=${config.httpRequestTimeoutMs} must not be below HTTP_HEADERS_TIMEOUT_MS=${config.httpHeadersTimeoutMs} (the request includes its headers)`,
    );
  }
  if (config.cache.redisUrl !== undefined) {
    try {
      parseRedisUrl(config.cache.redisUrl);
    } catch (e) {
      problems.push(`REDIS_URL: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return config;
}

/**
 * OLLAMA_URLS is a comma list of `url` or `name=url`; OLLAMA_URL names a
 * single node. Both may be given (OLLAMA_URL first).
 */
function parseNodes(
  env: Record<string, string | undefined>,
  problems: string[],
  defaults: { parallel: number; maxLoadedModels: number },
): NodeConfig[] {
  const entries: string[] = [];
  const single = env["OLLAMA_URL"]?.trim();
  if (single) entries.push(single);
  for (const part of (env["OLLAMA_URLS"] ?? "").split(",")) if (part.trim()) entries.push(part.trim());
  if (entries.length === 0) entries.push(DEFAULTS.ollamaUrl);

  const nodes: NodeConfig[] = [];
  const names = new Set<string>();
  for (const entry of entries) {
    const eq = entry.indexOf("=");
    const explicitName = eq > 0 && !entry.slice(0, eq).includes("://") ? entry.slice(0, eq).trim() : undefined;
    const rawUrl = explicitName === undefined ? entry : entry.slice(eq + 1).trim();
    let url: URL;
    try {
      url = new URL(rawUrl);
    } catch {
      problems.push(`Ollama URL ${JSON.stringify(rawUrl)} is not a valid URL (expected e.g. http://127.0.0.1:11434)`);
      continue;
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      problems.push(`Ollama URL ${JSON.stringify(rawUrl)} must use http or https`);
      continue;
    }
    if (url.search || url.hash) {
      problems.push(`Ollama URL ${JSON.stringify(rawUrl)} must not have a query or fragment`);
      continue;
    }
    const name = explicitName ?? url.host;
    if (!/^[A-Za-z0-9._:-]{1,64}$/.test(name)) {
      problems.push(`node name ${JSON.stringify(name)} may only use letters, digits and . _ : - (at most 64)`);
      continue;
    }
    if (names.has(name)) {
      problems.push(`node name ${JSON.stringify(name)} is used twice; name nodes as name=url in OLLAMA_URLS`);
      continue;
    }
    names.add(name);
    nodes.push({
      name,
      url: url.href.replace(/\/+$/, ""),
      parallel: defaults.parallel,
      maxLoadedModels: defaults.maxLoadedModels,
      weight: 1,
    });
  }
  return nodes;
}

/** The parts of GATEWAY_CONFIG_FILE the gateway reads (principals, roles, defaultPermissions: see auth-file.ts). */
interface ConfigFile {
  nodes?: unknown;
  modelNumCtx?: unknown;
  limits?: unknown;
  aliases?: unknown;
  [section: string]: unknown;
}

const AUTH_MODES: readonly AuthMode[] = ["api-key", "jwt", "mtls"];

/** A reader of whole-number settings, as `loadConfig` defines it. */
type IntReader = (key: string, fallback: number, min: number, max?: number) => number;

/** AUTH_MODE, API_KEYS, AUTH_REFLECTION, JWT_* and the file's principals. */
function parseAuth(
  env: Record<string, string | undefined>,
  file: ConfigFile,
  problems: string[],
  int: IntReader,
): AuthConfig {
  const envPrincipals = parseApiKeysEnv(env["API_KEYS"], problems);
  const authFile = parseAuthFile(file, envPrincipals, problems);
  const rawMode = env["AUTH_MODE"]?.trim().toLowerCase();
  let modes: AuthMode[] = [];
  if (rawMode === undefined || rawMode === "") {
    // Keys in API_KEYS or in the file mean the operator expects them to be asked for.
    if (authFile.principals.some((p) => p.keys.length > 0)) modes = ["api-key"];
  } else if (rawMode !== "off") {
    for (const part of rawMode.split(",")) {
      const m = part.trim() as AuthMode;
      if (!AUTH_MODES.includes(m))
        problems.push(
          `AUTH_MODE entry ${JSON.stringify(part.trim())} must be off or a comma list of ${AUTH_MODES.join(", ")}`,
        );
      else if (!modes.includes(m)) modes.push(m);
    }
  }
  if (envPrincipals.length > 0 && !modes.includes("api-key")) {
    problems.push("API_KEYS is set but AUTH_MODE does not include api-key");
  }
  const reflection = env["AUTH_REFLECTION"]?.trim().toLowerCase() || "open";
  if (reflection !== "open" && reflection !== "authenticated") {
    problems.push(`AUTH_REFLECTION=${JSON.stringify(reflection)} must be open or authenticated`);
  }
  return {
    modes,
    restrictReflection: reflection === "authenticated",
    file: authFile,
    envPrincipals,
    jwt: modes.includes("jwt") ? parseJwt(env, problems, int) : undefined,
  };
}

function parseJwt(env: Record<string, string | undefined>, problems: string[], int: IntReader): JwtConfig {
  const list = (key: string): string[] =>
    (env[key] ?? "")
      .split(",")
      .map((x) => x.trim())
      .filter((x) => x !== "");
  const jwksUrl = env["JWT_JWKS_URL"]?.trim() || undefined;
  const keyFile = env["JWT_KEY_FILE"]?.trim() || undefined;
  if ((jwksUrl === undefined) === (keyFile === undefined)) {
    problems.push("AUTH_MODE jwt needs exactly one of JWT_JWKS_URL and JWT_KEY_FILE");
  }
  if (jwksUrl !== undefined) {
    try {
      const u = new URL(jwksUrl);
      if (u.protocol !== "https:" && u.protocol !== "http:") throw new Error("not http(s)");
    } catch {
      problems.push(`JWT_JWKS_URL=${JSON.stringify(jwksUrl)} must be an http(s) URL`);
    }
  }
  if (keyFile !== undefined) checkReadable("JWT_KEY_FILE", keyFile, problems);
  const issuers = list("JWT_ISSUER");
  const audiences = list("JWT_AUDIENCE");
  // Without both, any token of any issuer's other audiences would do: refuse to start.
  if (issuers.length === 0) problems.push("AUTH_MODE jwt needs JWT_ISSUER (the accepted iss values)");
  if (audiences.length === 0) problems.push("AUTH_MODE jwt needs JWT_AUDIENCE (the accepted aud values)");
  const algorithms = list("JWT_ALGORITHMS");
  for (const a of algorithms) {
    if (!(DEFAULTS.jwt.algorithms as readonly string[]).includes(a))
      problems.push(`JWT_ALGORITHMS entry ${JSON.stringify(a)} must be one of ${DEFAULTS.jwt.algorithms.join(", ")}`);
  }
  const claim = (key: string, fallback: string): string => {
    const v = env[key]?.trim() || fallback;
    if (!/^[\x21-\x7e]{1,128}$/.test(v)) problems.push(`${key} must be a claim name`);
    return v;
  };
  return {
    jwksUrl,
    keyFile,
    issuers,
    audiences,
    algorithms: algorithms.length > 0 ? algorithms : DEFAULTS.jwt.algorithms,
    clockSkewS: int("JWT_CLOCK_SKEW_S", DEFAULTS.jwt.clockSkewS, 0, 600),
    principalClaim: claim("JWT_PRINCIPAL_CLAIM", DEFAULTS.jwt.principalClaim),
    rolesClaim: claim("JWT_ROLES_CLAIM", DEFAULTS.jwt.rolesClaim),
    jwksCooldownMs: int("JWT_JWKS_COOLDOWN_MS", DEFAULTS.jwt.jwksCooldownMs, 0, 3600 * 1000),
    jwksMaxAgeMs: int("JWT_JWKS_MAX_AGE_MS", DEFAULTS.jwt.jwksMaxAgeMs, 1000, 7 * 24 * 3600 * 1000),
    cacheEntries: int("JWT_CACHE_ENTRIES", DEFAULTS.jwt.cacheEntries, 0, 10_000_000),
  };
}

function parseTls(env: Record<string, string | undefined>, problems: string[]): TlsConfig | undefined {
  const certFile = env["TLS_CERT_FILE"]?.trim() || undefined;
  const keyFile = env["TLS_KEY_FILE"]?.trim() || undefined;
  const clientCaFile = env["TLS_CLIENT_CA_FILE"]?.trim() || undefined;
  if (certFile === undefined && keyFile === undefined) {
    if (clientCaFile !== undefined) problems.push("TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE");
    return undefined;
  }
  if (certFile === undefined || keyFile === undefined) {
    problems.push("TLS needs both TLS_CERT_FILE and TLS_KEY_FILE");
    return undefined;
  }
  checkReadable("TLS_CERT_FILE", certFile, problems);
  checkReadable("TLS_KEY_FILE", keyFile, problems);
  if (clientCaFile !== undefined) checkReadable("TLS_CLIENT_CA_FILE", clientCaFile, problems);
  return { certFile, keyFile, clientCaFile };
}

function checkReadable(key: string, path: string, problems: string[]): void {
  try {
    accessSync(path, fsConstants.R_OK);
  } catch {
    problems.push(`${key} ${path} cannot be read`);
  }
}

/** The sections of the config file that are reloaded without a restart. */
export interface ReloadableSections {
  /** principals, roles, defaultPermissions (with API_KEYS' principals, which do not change). */
  readonly auth: AuthFileConfig;
  /** limits (with RATE_LIMIT_RPS / RATE_LIMIT_BURST as at start). */
  readonly limits: LimitsConfig;
  /** aliases: model aliases with their targets and fallbacks. */
  readonly aliases: AliasMap;
}

/**
 * Reads the config file again for a reload: the sections that apply without a restart, checked
 * as at start, with what the environment said at start. Throws a ConfigError (every problem)
 * when the file cannot be read or is invalid: the caller keeps what it has. Nodes and the other
 * settings need a restart.
 */
export function reloadConfigFile(path: string, config: GatewayConfig): ReloadableSections {
  const problems: string[] = [];
  const file = readConfigFile(path, problems);
  const auth = parseAuthFile(file, config.auth.envPrincipals, problems);
  const limits = parseLimits(file.limits, config.rateLimitEnv, problems);
  const aliases = parseAliases(file.aliases, problems);
  if (problems.length > 0) throw new ConfigError(problems);
  return { auth, limits, aliases };
}

function readConfigFile(path: string | undefined, problems: string[]): ConfigFile {
  if (!path?.trim()) return {};
  try {
    const parsed: unknown = JSON.parse(readFileSync(path.trim(), "utf8"));
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
      problems.push(`GATEWAY_CONFIG_FILE ${path} must hold a JSON object`);
      return {};
    }
    return parsed as ConfigFile;
  } catch (e) {
    problems.push(`GATEWAY_CONFIG_FILE ${path} cannot be read: ${e instanceof Error ? e.message : String(e)}`);
    return {};
  }
}

/**
 * Nodes from the config file: `{"nodes":[{"name":"gpu1","url":"http://h:11434",
 * "parallel":2,"maxLoadedModels":2,"weight":1,"vramBytes":24000000000}]}`; name optional, limits
 * default to the env's, `vramBytes` to learned.
 */
function fileNodes(
  file: ConfigFile,
  problems: string[],
  defaults: { parallel: number; maxLoadedModels: number },
): NodeConfig[] {
  if (file.nodes === undefined) return [];
  if (!Array.isArray(file.nodes)) {
    problems.push("config file: nodes must be an array");
    return [];
  }
  const out: NodeConfig[] = [];
  file.nodes.forEach((raw: unknown, i) => {
    const n = (typeof raw === "object" && raw !== null ? raw : {}) as Record<string, unknown>;
    const url = typeof n["url"] === "string" ? n["url"] : "";
    const parsed = parseNodes(
      { OLLAMA_URLS: typeof n["name"] === "string" ? `${n["name"]}=${url}` : url },
      problems,
      defaults,
    )[0];
    if (parsed === undefined) return;
    const num = (key: string, fallback: number, min: number, max: number): number => {
      const v = n[key];
      if (v === undefined) return fallback;
      if (
        typeof v !== "number" ||
        !Number.isFinite(v) ||
        v < min ||
        v > max ||
        (key !== "weight" && !Number.isInteger(v))
      ) {
        problems.push(`config file: nodes[${i}].${key} must be a number from ${min} to ${max}`);
        return fallback;
      }
      return v;
    };
    if (out.some((m) => m.name === parsed.name)) {
      problems.push(`config file: node name ${JSON.stringify(parsed.name)} is used twice`);
      return;
    }
    out.push({
      ...parsed,
      parallel: num("parallel", defaults.parallel, 1, 1024),
      maxLoadedModels: num("maxLoadedModels", defaults.maxLoadedModels, 1, 1024),
      weight: num("weight", 1, 0.01, 1000),
      ...(n["vramBytes"] === undefined
        ? {}
        : { vramBytes: num("vramBytes", 0, 1, Number.MAX_SAFE_INTEGER) || undefined }),
    });
  });
  return out;
}

function fileNumCtx(file: ConfigFile, problems: string[]): Record<string, number> {
  if (file.modelNumCtx === undefined) return {};
  const m = file.modelNumCtx;
  if (typeof m !== "object" || m === null || Array.isArray(m)) {
    problems.push("config file: modelNumCtx must be an object of model to tokens");
    return {};
  }
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(m)) {
    if (typeof v !== "number" || !Number.isInteger(v) || v < 256)
      problems.push(`config file: modelNumCtx.${k} must be a whole number of 256 or more`);
    else out[k] = v;
  }
  return out;
}

/**
 * The config file's `aliases`: `{"chat": {"targets": {"llama3.2:3b": 90, "qwen3:4b": 10},
 * "fallbacks": ["smollm2:135m"]}}`, or `{"chat": "llama3.2:3b"}` for one target. Keys are the
 * names clients use (compared as model names: `chat` is `chat:latest`); weights are positive
 * numbers; fallbacks an ordered list of model names. An alias may not name another alias (one
 * level only, so a route is always finite and obvious from the file).
 */
export function parseAliases(raw: unknown, problems: string[]): AliasMap {
  const out = new Map<string, ModelAlias>();
  if (raw === undefined) return out;
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    problems.push("config file: aliases must be an object of alias name to its targets");
    return out;
  }
  const isName = (v: unknown): v is string => typeof v === "string" && /^[\x21-\x7e]{1,256}$/.test(v);
  for (const [name, value] of Object.entries(raw as Record<string, unknown>)) {
    const where = `config file: aliases.${name}`;
    if (!isName(name)) {
      problems.push(`${where}: the alias name must be 1-256 printable characters without spaces`);
      continue;
    }
    const spec: Record<string, unknown> =
      typeof value === "string"
        ? { targets: { [value]: 1 } }
        : typeof value === "object" && value !== null && !Array.isArray(value)
          ? (value as Record<string, unknown>)
          : {};
    const rawTargets = spec["targets"];
    const targets: { model: string; weight: number }[] = [];
    if (typeof rawTargets !== "object" || rawTargets === null || Array.isArray(rawTargets)) {
      problems.push(`${where} must be a model name or {"targets": {model: weight}, "fallbacks": [models]}`);
      continue;
    }
    for (const [model, weight] of Object.entries(rawTargets as Record<string, unknown>)) {
      if (!isName(model)) problems.push(`${where}.targets: ${JSON.stringify(model)} is not a model name`);
      else if (typeof weight !== "number" || !Number.isFinite(weight) || weight <= 0 || weight > 1_000_000)
        problems.push(`${where}.targets.${model} must be a weight above 0 (at most 1000000)`);
      else targets.push({ model, weight });
    }
    if (targets.length === 0) problems.push(`${where}.targets must name at least one model`);
    const rawFallbacks = spec["fallbacks"] ?? [];
    const fallbacks: string[] = [];
    if (!Array.isArray(rawFallbacks)) problems.push(`${where}.fallbacks must be an array of model names`);
    else
      for (const f of rawFallbacks) {
        if (isName(f)) fallbacks.push(f);
        else problems.push(`${where}.fallbacks: ${JSON.stringify(f)} is not a model name`);
      }
    for (const key of Object.keys(spec))
      if (key !== "targets" && key !== "fallbacks") problems.push(`${where}.${key} is not a known field`);
    const key = canonicalModelName(name);
    if (out.has(key)) problems.push(`${where} names the same alias as another entry`);
    else out.set(key, { name, targets, fallbacks });
  }
  for (const alias of out.values()) {
    for (const m of [...alias.targets.map((t) => t.model), ...alias.fallbacks]) {
      if (out.has(canonicalModelName(m)))
        problems.push(`config file: aliases.${alias.name} names the alias ${m}: an alias must name models`);
    }
  }
  return out;
}

/** The config as it is safe to log: credentials in URLs masked, maps as objects. */
export function redactConfig(config: GatewayConfig): Record<string, unknown> {
  return {
    ...config,
    // Names only: key hashes are not secrets, but they have no business in a log either.
    auth: {
      modes: config.auth.modes,
      restrictReflection: config.auth.restrictReflection,
      principals: config.auth.file.principals.map((p) => p.name),
      roles: [...config.auth.file.roles.keys()],
      jwt: config.auth.jwt,
    },
    routing: {
      ...config.routing,
      numCtx: Object.fromEntries(config.routing.numCtx),
      aliases: [...config.routing.aliases.values()],
    },
    nodes: config.nodes.map((n) => ({ ...n, url: redactUrl(n.url) })),
    cache: { ...config.cache, redisUrl: config.cache.redisUrl && redactUrl(config.cache.redisUrl) },
    tracing: redactTracingConfig(config.tracing),
  };
}

/** Masks a URL's password so it can be logged (also in multi-host Redis URLs). */
export function redactUrl(raw: string): string {
  if (raw.includes(",")) return raw.replace(/\/\/([^@/]*):[^@/]*@/, "//$1:***@");
  try {
    const u = new URL(raw);
    if (u.password) u.password = "***";
    return u.href.replace(/\/+$/, "");
  } catch {
    return raw;
  }
}
