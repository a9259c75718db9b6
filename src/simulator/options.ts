/**
 * Simulator configuration: the programmatic options with their defaults, and parsing of the
 * standalone CLI's flags and environment variables (see main.ts for the list).
 */
import { defaultCatalog, defaultRegistry, parseModelEntry, type SimModelSpec } from "./catalog.js";
import { parseFault, parseFaultSpecs, type Fault } from "./faults.js";
import { parseGoDuration } from "./go-duration.js";

/** Options for `startSimulator`; everything is optional. */
export interface SimulatorOptions {
  /** Listen address; default 127.0.0.1. */
  host?: string;
  /** Port; default 0 (a free port) programmatically, 11434 for the CLI. */
  port?: number;
  /** Installed models; default `defaultCatalog()`. */
  models?: SimModelSpec[];
  /** Simulated model load time in ms; default 0 (CLI 500). */
  loadMs?: number;
  /** Prompt-evaluation delay before the first token in ms (also per embedded input); default 0. */
  firstTokenMs?: number;
  /** Delay between tokens in ms; default 0 (still one NDJSON write per token). */
  tokenMs?: number;
  /** OLLAMA_NUM_PARALLEL: parallel slots per loaded model (embedding models always 1); default 1. */
  numParallel?: number;
  /** OLLAMA_MAX_LOADED_MODELS; default 3. */
  maxLoadedModels?: number;
  /**
   * The GPU memory the node's loaded models share, in bytes; 0 = unlimited (only
   * `maxLoadedModels` evicts). A model that does not fit next to the loaded ones makes the
   * scheduler evict as Ollama does when "memory is short"; one larger than the whole budget
   * loads alone, partly offloaded (`size_vram` < `size` in /api/ps). Default 0.
   */
  vramBytes?: number;
  /** OLLAMA_MAX_QUEUE: capacity of the pending-load queue; default 512. */
  maxQueue?: number;
  /** OLLAMA_KEEP_ALIVE in ms (negative or Infinity = forever); default 5 minutes. */
  keepAliveMs?: number;
  /** Default num_ctx (OLLAMA_CONTEXT_LENGTH); default 4096. */
  defaultNumCtx?: number;
  /** Models /api/pull can fetch; default `defaultRegistry()` plus the installed models. */
  registry?: SimModelSpec[];
  /** Time a whole pull takes in ms; default 30. */
  pullMs?: number;
  /** Reported by /api/version; default "0.12.6". */
  version?: string;
  /**
   * Faults armed when the simulator starts, in order (validated like `sim.faults.add`). Like any
   * fault they are used up after `times` requests, and `reset()` disarms them. Default none.
   */
  faults?: Fault[];
}

/** Options with defaults applied. */
export type ResolvedSimulatorOptions = Required<SimulatorOptions>;

/** Applies defaults and validates numbers (throws RangeError with a clear message). */
export function resolveOptions(options: SimulatorOptions = {}): ResolvedSimulatorOptions {
  const models = options.models ?? defaultCatalog();
  const resolved: ResolvedSimulatorOptions = {
    host: options.host ?? "127.0.0.1",
    port: options.port ?? 0,
    models,
    loadMs: options.loadMs ?? 0,
    firstTokenMs: options.firstTokenMs ?? 0,
    tokenMs: options.tokenMs ?? 0,
    numParallel: options.numParallel ?? 1,
    maxLoadedModels: options.maxLoadedModels ?? 3,
    vramBytes: options.vramBytes ?? 0,
    maxQueue: options.maxQueue ?? 512,
    keepAliveMs:
      (options.keepAliveMs ?? 5 * 60_000) < 0 ? Number.POSITIVE_INFINITY : (options.keepAliveMs ?? 5 * 60_000),
    defaultNumCtx: options.defaultNumCtx ?? 4096,
    registry: [...models, ...(options.registry ?? defaultRegistry())],
    pullMs: options.pullMs ?? 30,
    version: options.version ?? "0.12.6",
    faults: (options.faults ?? []).map(parseFault),
  };
  const nonNegative = ["port", "loadMs", "firstTokenMs", "tokenMs", "maxQueue", "pullMs", "vramBytes"] as const;
  for (const key of nonNegative) {
    const value = resolved[key];
    if (!Number.isFinite(value) || value < 0) throw new RangeError(`${key} must be a number >= 0 (got ${value})`);
  }
  const positive = ["numParallel", "maxLoadedModels", "defaultNumCtx"] as const;
  for (const key of positive) {
    const value = resolved[key];
    if (!Number.isInteger(value) || value < 1) throw new RangeError(`${key} must be an integer >= 1 (got ${value})`);
  }
  if (Number.isNaN(resolved.keepAliveMs)) throw new RangeError("keepAliveMs must be a number");
  if (resolved.port > 65535) throw new RangeError(`port must be <= 65535 (got ${resolved.port})`);
  return resolved;
}

/** Result of parsing the CLI. */
export interface CliParseResult {
  readonly options: SimulatorOptions;
  readonly help: boolean;
}

/** CLI flag → option name and value parser. */
const FLAGS: Record<string, { env: readonly string[]; apply: (o: SimulatorOptions, v: string) => void }> = {
  "--host": { env: ["SIM_HOST"], apply: (o, v) => void (o.host = v) },
  "--port": { env: ["SIM_PORT"], apply: (o, v) => void (o.port = int(v, "port")) },
  "--load-ms": { env: ["SIM_LOAD_MS"], apply: (o, v) => void (o.loadMs = num(v, "load-ms")) },
  "--first-token-ms": {
    env: ["SIM_FIRST_TOKEN_MS"],
    apply: (o, v) => void (o.firstTokenMs = num(v, "first-token-ms")),
  },
  "--token-ms": { env: ["SIM_TOKEN_MS"], apply: (o, v) => void (o.tokenMs = num(v, "token-ms")) },
  "--models": { env: ["SIM_MODELS"], apply: (o, v) => void (o.models = parseModels(v)) },
  "--num-parallel": { env: ["OLLAMA_NUM_PARALLEL"], apply: (o, v) => void (o.numParallel = int(v, "num-parallel")) },
  "--max-loaded-models": {
    env: ["OLLAMA_MAX_LOADED_MODELS"],
    apply: (o, v) => void (o.maxLoadedModels = int(v, "max-loaded-models")),
  },
  "--vram-bytes": { env: ["SIM_VRAM_BYTES"], apply: (o, v) => void (o.vramBytes = bytes(v, "vram-bytes")) },
  "--max-queue": { env: ["OLLAMA_MAX_QUEUE"], apply: (o, v) => void (o.maxQueue = int(v, "max-queue")) },
  "--keep-alive": { env: ["OLLAMA_KEEP_ALIVE"], apply: (o, v) => void (o.keepAliveMs = keepAlive(v)) },
  "--num-ctx": { env: ["OLLAMA_CONTEXT_LENGTH"], apply: (o, v) => void (o.defaultNumCtx = int(v, "num-ctx")) },
  "--pull-ms": { env: ["SIM_PULL_MS"], apply: (o, v) => void (o.pullMs = num(v, "pull-ms")) },
  "--version": { env: ["SIM_VERSION"], apply: (o, v) => void (o.version = v) },
  // Repeatable: each occurrence adds faults (SIM_FAULTS's first, then the flags').
  "--fault": { env: ["SIM_FAULTS"], apply: (o, v) => void (o.faults = [...(o.faults ?? []), ...parseFaultSpecs(v)]) },
};

/** Usage text printed by `--help`. */
export const CLI_USAGE = `Usage: npm run sim -- [flags]   (node --import tsx src/simulator/main.ts [flags])

An Ollama-compatible simulator for tests, benchmarks and demos.

Flags (environment variable in brackets; flags win over the environment):
  --host <addr>              listen address (default 127.0.0.1)          [SIM_HOST, or OLLAMA_HOST=host:port]
  --port <n>                 listen port (default 11434)                 [SIM_PORT, or OLLAMA_HOST]
  --load-ms <ms>             simulated model load time (default 500)     [SIM_LOAD_MS]
  --first-token-ms <ms>      prompt evaluation delay (default 0)         [SIM_FIRST_TOKEN_MS]
  --token-ms <ms>            delay between tokens (default 0)            [SIM_TOKEN_MS]
  --models <list>            comma list of installed models; capabilities are inferred from
                             well-known names or given as name=cap+cap, e.g.
                             "llama3.2,qwen3,all-minilm,mine:7b=completion+tools"  [SIM_MODELS]
  --num-parallel <n>         parallel slots per loaded model (default 1) [OLLAMA_NUM_PARALLEL]
  --max-loaded-models <n>    models resident at once (default 3)         [OLLAMA_MAX_LOADED_MODELS]
  --vram-bytes <size>        GPU memory the loaded models share: bytes, or with a unit (7GB,
                             6.5GiB, 800MB); a model that does not fit next to the loaded
                             ones evicts them, one too large for it all loads partly offloaded
                             (default 0 = unlimited)                     [SIM_VRAM_BYTES]
  --max-queue <n>            pending-load queue size (default 512)       [OLLAMA_MAX_QUEUE]
  --keep-alive <duration>    default keep-alive, Go duration or seconds; negative = forever
                             (default 5m)                                [OLLAMA_KEEP_ALIVE]
  --num-ctx <n>              default num_ctx (default 4096)              [OLLAMA_CONTEXT_LENGTH]
  --pull-ms <ms>             duration of a simulated pull (default 30)   [SIM_PULL_MS]
  --version <semver>         version reported by /api/version            [SIM_VERSION]
  --fault <spec>             arm a fault at start; repeatable, adds to SIM_FAULTS  [SIM_FAULTS]
                             spec: kind[,field=value...] (several separated by ";"), or a
                             JSON object / array of objects as POST /_sim/faults takes. Kinds:
                               error-before-stream,status=500,message=boom
                               busy                                 (503, Ollama's busy text)
                               error-mid-stream,afterTokens=3,message=boom
                               drop-connection,afterTokens=2        (0 = before headers)
                               malformed-line,afterTokens=1,then=end   endless-line   stall,ms=500
                             scope: path=/api/chat, model=llama3.2, times=N (default 1; -1 = forever)
                             e.g. --fault "busy,path=/api/chat,times=-1"
                                  SIM_FAULTS='[{"kind":"error-mid-stream","afterTokens":3,"message":"a, b"}]'
  -h, --help                 show this help
`;

/**
 * Parses CLI arguments and environment: defaults suited to a standalone server (port 11434,
 * 500 ms loads), then environment, then flags (`--flag value` or `--flag=value`).
 */
export function parseCliArgs(
  argv: readonly string[],
  env: Readonly<Record<string, string | undefined>>,
): CliParseResult {
  const options: SimulatorOptions = { port: 11434, loadMs: 500 };
  const ollamaHost = env.OLLAMA_HOST;
  if (ollamaHost !== undefined && ollamaHost !== "") applyOllamaHost(options, ollamaHost);
  for (const spec of Object.values(FLAGS)) {
    for (const name of spec.env) {
      const value = env[name];
      if (value !== undefined && value !== "") {
        try {
          spec.apply(options, value);
        } catch (error) {
          throw new Error(`${name}: ${error instanceof Error ? error.message : String(error)}`);
        }
      }
    }
  }
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? "";
    if (arg === "-h" || arg === "--help") {
      help = true;
      continue;
    }
    const eq = arg.indexOf("=");
    const flag = eq > 0 ? arg.slice(0, eq) : arg;
    const spec = FLAGS[flag];
    if (!spec) throw new Error(`unknown flag ${JSON.stringify(arg)} (see --help)`);
    let value: string | undefined;
    if (eq > 0) value = arg.slice(eq + 1);
    else {
      value = argv[i + 1];
      i++;
    }
    if (value === undefined) throw new Error(`${flag} needs a value`);
    try {
      spec.apply(options, value);
    } catch (error) {
      throw new Error(`${flag}: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
  resolveOptions(options);
  return { options, help };
}

function applyOllamaHost(options: SimulatorOptions, value: string): void {
  const url = new URL(value.includes("://") ? value : `http://${value.startsWith(":") ? `0.0.0.0${value}` : value}`);
  if (url.hostname !== "") options.host = url.hostname.replace(/^\[|\]$/g, "");
  if (url.port !== "") options.port = int(url.port, "OLLAMA_HOST port");
}

function parseModels(value: string): SimModelSpec[] {
  const specs = value
    .split(",")
    .map((entry) => entry.trim())
    .filter((entry) => entry !== "")
    .map(parseModelEntry);
  if (specs.length === 0) throw new Error("the model list is empty");
  const known = new Map(defaultRegistry().map((spec) => [spec.name.replace(/:latest$/, ""), spec]));
  return specs.map((spec) => {
    const base = known.get(spec.name.replace(/:latest$/, ""));
    return base && spec.capabilities === undefined ? base : spec;
  });
}

function num(value: string, name: string): number {
  const n = Number(value);
  if (value.trim() === "" || !Number.isFinite(n) || n < 0)
    throw new Error(`${name} must be a number >= 0, got ${JSON.stringify(value)}`);
  return n;
}

function int(value: string, name: string): number {
  const n = num(value, name);
  if (!Number.isInteger(n)) throw new Error(`${name} must be an integer, got ${JSON.stringify(value)}`);
  return n;
}

const BYTE_UNITS: Record<string, number> = {
  "": 1,
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
};

/** A byte count: `7000000000`, `7e9`, `7GB`, `6.5GiB`, `800 MB` (decimal and binary units). */
export function parseBytes(value: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([a-z]*)\s*$/i.exec(value);
  const scale = m === null ? undefined : BYTE_UNITS[(m[2] ?? "").toLowerCase()];
  if (m === null || scale === undefined) return undefined;
  const n = Math.round(Number(m[1]) * scale);
  return Number.isSafeInteger(n) ? n : undefined;
}

function bytes(value: string, name: string): number {
  const n = parseBytes(value);
  if (n === undefined)
    throw new Error(`${name} must be a byte count such as 7000000000 or 7GB, got ${JSON.stringify(value)}`);
  return n;
}

function keepAlive(value: string): number {
  const trimmed = value.trim();
  const ms = /^-?\d+(\.\d+)?$/.test(trimmed) ? Number(trimmed) * 1000 : parseGoDuration(trimmed);
  return ms < 0 ? Number.POSITIVE_INFINITY : ms;
}
