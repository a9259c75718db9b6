import { readFileSync } from "node:fs";
import { parseRedisUrl } from "../redis/redis-target.js";
import { canonicalModelName } from "../upstream/model-name.js";
import { DEFAULTS } from "./config.js";
import type { GatewayConfig, NodeConfig } from "./config.js";

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

  const config: GatewayConfig = {
    host: env["HOST"]?.trim() || DEFAULTS.host,
    port: int("PORT", DEFAULTS.port, 0, 65535),
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
    },
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

/** The parts of GATEWAY_CONFIG_FILE the gateway reads. */
interface ConfigFile {
  nodes?: unknown;
  modelNumCtx?: unknown;
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
 * "parallel":2,"maxLoadedModels":2,"weight":1}]}`; name optional, limits default to the env's.
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

/** The config as it is safe to log: credentials in URLs masked, maps as objects. */
export function redactConfig(config: GatewayConfig): Record<string, unknown> {
  return {
    ...config,
    routing: { ...config.routing, numCtx: Object.fromEntries(config.routing.numCtx) },
    nodes: config.nodes.map((n) => ({ ...n, url: redactUrl(n.url) })),
    cache: { ...config.cache, redisUrl: config.cache.redisUrl && redactUrl(config.cache.redisUrl) },
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
