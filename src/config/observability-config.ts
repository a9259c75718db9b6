/**
 * The settings of the metrics endpoint and of trace export (README, "Operating it"): their types,
 * defaults and parsing from the environment. Tracing follows OpenTelemetry's standard `OTEL_*`
 * variables, so an operator configures it as any other OpenTelemetry service.
 */

/** The Prometheus endpoint. */
export interface MetricsConfig {
  /**
   * Port of the plain-HTTP `/metrics` endpoint, kept off the gRPC port so it can stay private.
   * Undefined = no metrics at all (nothing is recorded); 0 = any free port (tests, benchmarks).
   * Env METRICS_PORT. @default undefined (off)
   */
  port: number | undefined;
  /** Interface the endpoint listens on. Env METRICS_HOST. @default HOST */
  host: string;
  /** Distinct model label values; further models fold into `other`. Env METRICS_MAX_MODELS. @default 100 */
  maxModels: number;
  /** Distinct principal label values; further principals fold into `other`. Env METRICS_MAX_PRINCIPALS. @default 100 */
  maxPrincipals: number;
}

/** Which calls are traced (OTEL_TRACES_SAMPLER). */
export type SamplerName =
  | "always_on"
  | "always_off"
  | "traceidratio"
  | "parentbased_always_on"
  | "parentbased_always_off"
  | "parentbased_traceidratio";

/** OTLP encodings the exporter speaks (both over HTTP). */
export type OtlpProtocol = "http/protobuf" | "http/json";

/** Trace export; the field comments name the standard variables. */
export interface TracingConfig {
  /**
   * Where spans are POSTed: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as given, else
   * OTEL_EXPORTER_OTLP_ENDPOINT + `/v1/traces`. Undefined = tracing off: no exporter, no hook,
   * no span objects (also with OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none).
   */
  endpoint: string | undefined;
  /** OTEL_EXPORTER_OTLP_TRACES_PROTOCOL / OTEL_EXPORTER_OTLP_PROTOCOL. @default "http/protobuf" */
  protocol: OtlpProtocol;
  /** OTEL_EXPORTER_OTLP_HEADERS, then OTEL_EXPORTER_OTLP_TRACES_HEADERS (`k=v,k2=v2`, values URL-decoded). Masked in logs. */
  headers: Record<string, string>;
  /** Bound of one export request, ms. OTEL_EXPORTER_OTLP_TRACES_TIMEOUT / OTEL_EXPORTER_OTLP_TIMEOUT. @default 10000 */
  timeoutMs: number;
  /** OTEL_TRACES_SAMPLER. @default "parentbased_always_on" */
  sampler: SamplerName;
  /** OTEL_TRACES_SAMPLER_ARG, for the ratio samplers: the share of new traces kept, 0 to 1. @default 1 */
  samplerRatio: number;
  /** OTEL_SERVICE_NAME (wins over `service.name` in OTEL_RESOURCE_ATTRIBUTES). @default "ollama-grpc-gateway" */
  serviceName: string;
  /** OTEL_RESOURCE_ATTRIBUTES (`k=v,k2=v2`, values URL-decoded). @default none */
  resourceAttributes: Record<string, string>;
  /** Longest a finished span waits before it is exported, ms. OTEL_BSP_SCHEDULE_DELAY. @default 5000 */
  scheduleDelayMs: number;
  /** Spans held for export; past it new spans are dropped. OTEL_BSP_MAX_QUEUE_SIZE. @default 2048 */
  maxQueueSize: number;
  /** Spans per export request. OTEL_BSP_MAX_EXPORT_BATCH_SIZE. @default 512 */
  maxExportBatchSize: number;
  /** Bound of one export, ms. OTEL_BSP_EXPORT_TIMEOUT. @default 30000 */
  exportTimeoutMs: number;
}

/** Defaults of the settings above, in one place for docs, tests and parsing. */
export const OBSERVABILITY_DEFAULTS = {
  metricsMaxModels: 100,
  metricsMaxPrincipals: 100,
  otlpProtocol: "http/protobuf",
  otlpTimeoutMs: 10_000,
  sampler: "parentbased_always_on",
  serviceName: "ollama-grpc-gateway",
  scheduleDelayMs: 5_000,
  maxQueueSize: 2048,
  maxExportBatchSize: 512,
  exportTimeoutMs: 30_000,
} as const;

const SAMPLERS: readonly SamplerName[] = [
  "always_on",
  "always_off",
  "traceidratio",
  "parentbased_always_on",
  "parentbased_always_off",
  "parentbased_traceidratio",
];

type Env = Record<string, string | undefined>;

function read(env: Env, key: string): string | undefined {
  const raw = env[key]?.trim();
  return raw === undefined || raw === "" ? undefined : raw;
}

function wholeNumber(env: Env, key: string, fallback: number, min: number, max: number, problems: string[]): number {
  const raw = read(env, key);
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) {
    problems.push(`${key}=${JSON.stringify(raw)} must be a whole number from ${min} to ${max}`);
    return fallback;
  }
  return n;
}

/** Reads the METRICS_* variables; `host` is the gateway's HOST (the default interface). */
export function parseMetricsConfig(env: Env, host: string, gatewayPort: number, problems: string[]): MetricsConfig {
  const raw = read(env, "METRICS_PORT");
  let port: number | undefined;
  if (raw !== undefined) {
    port = wholeNumber(env, "METRICS_PORT", 0, 0, 65535, problems);
    if (port !== 0 && port === gatewayPort) {
      problems.push(`METRICS_PORT=${port} must differ from PORT: the metrics endpoint has its own port`);
    }
  }
  return {
    port,
    host: read(env, "METRICS_HOST") ?? host,
    maxModels: wholeNumber(env, "METRICS_MAX_MODELS", OBSERVABILITY_DEFAULTS.metricsMaxModels, 1, 10_000, problems),
    maxPrincipals: wholeNumber(
      env,
      "METRICS_MAX_PRINCIPALS",
      OBSERVABILITY_DEFAULTS.metricsMaxPrincipals,
      1,
      10_000,
      problems,
    ),
  };
}

/**
 * A `k=v,k2=v2` list (OTEL_EXPORTER_OTLP_HEADERS, OTEL_RESOURCE_ATTRIBUTES): keys trimmed, values
 * trimmed and URL-decoded; an entry without `=` or with an empty key is a problem.
 */
export function parseKeyValueList(key: string, raw: string | undefined, problems: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  if (raw === undefined) return out;
  for (const part of raw.split(",")) {
    if (part.trim() === "") continue;
    const eq = part.indexOf("=");
    const name = eq > 0 ? part.slice(0, eq).trim() : "";
    if (name === "") {
      problems.push(`${key} entry ${JSON.stringify(part.trim())} must be name=value`);
      continue;
    }
    try {
      out[name] = decodeURIComponent(part.slice(eq + 1).trim());
    } catch {
      problems.push(`${key} entry ${JSON.stringify(name)} has a malformed %-escape`);
    }
  }
  return out;
}

/** The traces endpoint: the signal-specific variable as given, else the base one with `/v1/traces`. */
function tracesEndpoint(env: Env, problems: string[]): string | undefined {
  const specific = read(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
  const base = read(env, "OTEL_EXPORTER_OTLP_ENDPOINT");
  const [key, raw] = specific !== undefined ? ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", specific] : ["", base];
  if (raw === undefined) return undefined;
  const name = key || "OTEL_EXPORTER_OTLP_ENDPOINT";
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    problems.push(`${name}=${JSON.stringify(raw)} is not a URL (e.g. http://collector:4318)`);
    return undefined;
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    problems.push(`${name}=${JSON.stringify(raw)} must be http or https (OTLP over HTTP)`);
    return undefined;
  }
  return key ? url.href : `${url.href.replace(/\/+$/, "")}/v1/traces`;
}

/** Reads the standard OTEL_* variables that configure trace export. */
export function parseTracingConfig(env: Env, problems: string[]): TracingConfig {
  const d = OBSERVABILITY_DEFAULTS;
  let endpoint = tracesEndpoint(env, problems);
  const disabled = read(env, "OTEL_SDK_DISABLED")?.toLowerCase() === "true";
  const exporter = read(env, "OTEL_TRACES_EXPORTER")?.toLowerCase() ?? "otlp";
  if (exporter !== "otlp" && exporter !== "none") {
    problems.push(`OTEL_TRACES_EXPORTER=${JSON.stringify(exporter)} must be otlp or none`);
  }
  if (disabled || exporter === "none") endpoint = undefined;

  const protocolRaw = read(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") ?? read(env, "OTEL_EXPORTER_OTLP_PROTOCOL");
  let protocol: OtlpProtocol = d.otlpProtocol;
  if (protocolRaw === "http/protobuf" || protocolRaw === "http/json") protocol = protocolRaw;
  else if (protocolRaw !== undefined) {
    problems.push(`OTEL_EXPORTER_OTLP_PROTOCOL=${JSON.stringify(protocolRaw)} must be http/protobuf or http/json`);
  }

  const sampler = (read(env, "OTEL_TRACES_SAMPLER")?.toLowerCase() ?? d.sampler) as SamplerName;
  if (!SAMPLERS.includes(sampler)) {
    problems.push(`OTEL_TRACES_SAMPLER=${JSON.stringify(sampler)} must be one of ${SAMPLERS.join(", ")}`);
  }
  let samplerRatio = 1;
  const ratioRaw = read(env, "OTEL_TRACES_SAMPLER_ARG");
  if (ratioRaw !== undefined && sampler.endsWith("traceidratio")) {
    const r = Number(ratioRaw);
    if (!Number.isFinite(r) || r < 0 || r > 1) {
      problems.push(`OTEL_TRACES_SAMPLER_ARG=${JSON.stringify(ratioRaw)} must be a number from 0 to 1`);
    } else {
      samplerRatio = r;
    }
  }

  const resourceAttributes = parseKeyValueList(
    "OTEL_RESOURCE_ATTRIBUTES",
    read(env, "OTEL_RESOURCE_ATTRIBUTES"),
    problems,
  );
  const serviceName = read(env, "OTEL_SERVICE_NAME") ?? resourceAttributes["service.name"] ?? d.serviceName;
  const headers = {
    ...parseKeyValueList("OTEL_EXPORTER_OTLP_HEADERS", read(env, "OTEL_EXPORTER_OTLP_HEADERS"), problems),
    ...parseKeyValueList("OTEL_EXPORTER_OTLP_TRACES_HEADERS", read(env, "OTEL_EXPORTER_OTLP_TRACES_HEADERS"), problems),
  };
  const timeoutKey =
    read(env, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") !== undefined
      ? "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"
      : "OTEL_EXPORTER_OTLP_TIMEOUT";
  const maxQueueSize = wholeNumber(env, "OTEL_BSP_MAX_QUEUE_SIZE", d.maxQueueSize, 1, 1_000_000, problems);
  const maxExportBatchSize = wholeNumber(
    env,
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    d.maxExportBatchSize,
    1,
    1_000_000,
    problems,
  );
  if (maxExportBatchSize > maxQueueSize) {
    problems.push(
      `OTEL_BSP_MAX_EXPORT_BATCH_SIZE=${maxExportBatchSize} must not exceed OTEL_BSP_MAX_QUEUE_SIZE=${maxQueueSize}`,
    );
  }
  return {
    endpoint,
    protocol,
    headers,
    timeoutMs: wholeNumber(env, timeoutKey, d.otlpTimeoutMs, 1, 600_000, problems),
    sampler,
    samplerRatio,
    serviceName,
    resourceAttributes,
    scheduleDelayMs: wholeNumber(env, "OTEL_BSP_SCHEDULE_DELAY", d.scheduleDelayMs, 0, 3_600_000, problems),
    maxQueueSize,
    maxExportBatchSize,
    exportTimeoutMs: wholeNumber(env, "OTEL_BSP_EXPORT_TIMEOUT", d.exportTimeoutMs, 1, 600_000, problems),
  };
}

/** The tracing settings as they are safe to log: header values (often credentials) masked. */
export function redactTracingConfig(config: TracingConfig): TracingConfig {
  return {
    ...config,
    headers: Object.fromEntries(Object.keys(config.headers).map((k) => [k, "***"])),
  };
}
