import { parseRedisUrl } from "../cache/redis-target.js";
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
  const nodes = parseNodes(env, problems, { parallel, maxLoadedModels });

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
    embedBatchWindowMs: int("EMBED_BATCH_WINDOW_MS", DEFAULTS.embedBatchWindowMs, 0, 1000),
    cache: {
      redisUrl: env["REDIS_URL"]?.trim() || undefined,
      redisCommandTimeoutMs: int("REDIS_COMMAND_TIMEOUT_MS", DEFAULTS.cache.redisCommandTimeoutMs, 10, 60_000),
      memoryMaxEntries: int("CACHE_MEMORY_MAX_ENTRIES", DEFAULTS.cache.memoryMaxEntries, 100, 100_000_000),
      memoryMaxBytes: int("CACHE_MEMORY_MAX_BYTES", DEFAULTS.cache.memoryMaxBytes, 1024 * 1024, 64 * 1024 * 1024 * 1024),
      tagsTtlMs: int("CACHE_TAGS_TTL_MS", DEFAULTS.cache.tagsTtlMs, 100, 24 * 3600 * 1000),
      psTtlMs: int("CACHE_PS_TTL_MS", DEFAULTS.cache.psTtlMs, 100, 3600 * 1000),
      showTtlMs: int("CACHE_SHOW_TTL_MS", DEFAULTS.cache.showTtlMs, 1000, 365 * 24 * 3600 * 1000),
      embeddings: onOff("EMBED_CACHE", DEFAULTS.cache.embeddings),
      embeddingsTtlMs: int("EMBED_CACHE_TTL_MS", DEFAULTS.cache.embeddingsTtlMs, 1000, 365 * 24 * 3600 * 1000),
    },
    upstream: {
      connections: int("UPSTREAM_CONNECTIONS", DEFAULTS.upstream.connections, 1, 10_000),
      connectTimeoutMs: int("UPSTREAM_CONNECT_TIMEOUT_MS", DEFAULTS.upstream.connectTimeoutMs, 10, 120_000),
      idleTimeoutMs: int("UPSTREAM_IDLE_TIMEOUT_MS", DEFAULTS.upstream.idleTimeoutMs, 1000, 24 * 3600 * 1000),
      maxLineBytes: int("UPSTREAM_MAX_LINE_BYTES", DEFAULTS.upstream.maxLineBytes, 1024, 1024 * 1024 * 1024),
      maxResponseBytes: int("UPSTREAM_MAX_RESPONSE_BYTES", DEFAULTS.upstream.maxResponseBytes, 1024, 4 * 1024 * 1024 * 1024),
    },
  };
  if (config.cache.redisUrl !== undefined) {
    try {
      parseRedisUrl(config.cache.redisUrl);
    } catch (e) {
      problems.push(`REDIS_URL: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
  if (config.probeTimeoutMs > config.probeIntervalMs) {
    problems.push(
      `HEALTH_PROBE_TIMEOUT_MS (${config.probeTimeoutMs}) must not exceed HEALTH_PROBE_INTERVAL_MS (${config.probeIntervalMs})`,
    );
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

/** The config as it is safe to log: credentials in URLs masked. */
export function redactConfig(config: GatewayConfig): GatewayConfig {
  return {
    ...config,
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
