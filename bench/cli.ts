// Command-line options of `npm run bench`.
import { parseArgs } from "node:util";

/** The scenarios of issue #5, by letter. */
export const SCENARIOS = ["a", "b", "c", "d", "e"] as const;
/** One scenario letter. */
export type ScenarioId = (typeof SCENARIOS)[number];

const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;

/** Everything `npm run bench -- ...` can be told. */
export interface BenchOptions {
  /** Tiny counts, every scenario once; for CI. Numbers are meaningless. */
  smoke: boolean;
  /** Scenarios to run, in a..e order. */
  scenarios: ScenarioId[];
  /** Length of the soak (e). */
  soakSeconds: number;
  /** Passed to every gateway as WORKERS (undefined = not set). */
  workers: number | undefined;
  /** Gateway LOG_LEVEL. */
  logLevel: string;
  /** Run the gateway compiled (like `npm start`) or through tsx. */
  runtime: "compiled" | "tsx";
  /** Extra Node options for every gateway (e.g. "--max-semi-space-size=32"). */
  gatewayNodeOptions: string[];
  /** Directory for the gateway's --cpu-prof output (undefined = no profiling). */
  cpuProfDir: string | undefined;
  /** Tokens per stream in scenario (b). */
  relayTokens: number;
  /** Concurrent streams of scenario (c). */
  streams: number;
  /** Simulator delay between tokens in scenario (c), ms. */
  streamTokenMs: number;
  /** Load-generator processes holding the streams of scenario (c). */
  streamLoadgens: number;
  /** The load generator's gRPC client towards gateways and the null server. */
  client: "h2" | "connect";
  /** Extra environment for every gateway (`--gateway-env NAME=value`, repeatable). */
  gatewayEnv: Record<string, string>;
  /** A commit whose gateway scenario (a) also measures, interleaved with this one (undefined = none). */
  beforeRev: string | undefined;
  /**
   * Variants of this checkout's gateway that scenario (a) measures beside the plain one, each with
   * its extra settings (`--compare-env "NAME=value ..."`, repeatable, one variant each; empty =
   * none): what a setting costs per call.
   */
  compareEnv: Record<string, string>[];
  /**
   * Rounds of the comparison in scenario (a) (`--compare-rounds`, default 4): each measures every
   * gateway once, alternating the order; the ratio reported is the median of the rounds' ratios.
   */
  compareRounds: number;
  /** Where reports and gateway logs go. */
  outDir: string;
  /** The arguments as given, for the report. */
  argv: string[];
}

/** `--help` text. */
export const USAGE = `Usage: npm run bench -- [options]

Benchmarks the gateway against the Ollama simulator, each scenario with a
baseline measured in the same run (the same load sent straight to the
simulator over HTTP). Writes bench-results/bench-<time>.{md,json}.

  --smoke                 every scenario briefly (CI; well under 60 s; asserts no speed)
  --scenario a,b,...      run a subset (default all):
                            a  Generate 1 token / Embed 1 input at concurrency 1, 16, 64
                            b  streaming relay: 64 streams of 2,000 tokens, no upstream delay
                            c  1,000 slow streams (50 ms/token): gateway RSS and CPU
                            d  Embed at concurrency 64, micro-batching off vs on
                            e  soak: mixed load, gateway RSS and descriptors over time
  --soak-seconds N        length of the soak (default 300; 5 with --smoke)
  --workers N             passed to the gateway as WORKERS
  --log-level L           gateway LOG_LEVEL (default info)
  --runtime R             compiled (default: tsc output in .bench/dist, like npm start) or tsx
  --cpu-prof DIR          run every gateway with --cpu-prof --cpu-prof-dir DIR
  --gateway-node-options="OPTS"
                          extra node options for every gateway (note the =), e.g.
                          --gateway-node-options="--max-semi-space-size=32"
  --relay-tokens N        tokens per stream in scenario b (default 2000; 200 with --smoke)
  --streams N             concurrent streams of scenario c (default 1000)
  --stream-token-ms N     simulator delay between tokens in scenario c (default 50)
  --stream-loadgens N     load-generator processes for scenario c (default 2)
  --client C              the load generator's gRPC client: h2 (default; a minimal
                          node:http2 client, bench/grpc-h2-client.ts) or connect
                          (connect-node's client, ~5x the client CPU per call)
  --gateway-env NAME=value
                          extra setting for every gateway, repeatable
                          (e.g. GRPC_FAST_PATH=off)
  --before-rev REV        also build the gateway of commit REV and measure it in
                          scenario a beside this one (alternating rounds, see
                          --compare-rounds): a before/after comparison in one run
  --compare-env "NAME=value ..."
                          like --before-rev, but the other gateway is this checkout
                          with these settings (space-separated); repeatable, one
                          gateway each, e.g. --compare-env METRICS_PORT=0: what a
                          feature costs per call
  --compare-rounds N      rounds of that comparison per row, the order alternating
                          (A B ... B A B ...), the median ratio reported (default 4)
  --out DIR               output directory (default bench-results)
  -h, --help              this text
`;

function int(name: string, raw: string | undefined, fallback: number, min: number, max: number): number {
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max)
    throw new Error(`--${name} must be a whole number from ${min} to ${max}`);
  return n;
}

/** Parses the arguments; throws with a readable message on bad input. Returns undefined for --help. */
export function parseBenchArgs(argv: string[]): BenchOptions | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      smoke: { type: "boolean" },
      scenario: { type: "string" },
      "soak-seconds": { type: "string" },
      workers: { type: "string" },
      "log-level": { type: "string" },
      runtime: { type: "string" },
      "cpu-prof": { type: "string" },
      "gateway-node-options": { type: "string" },
      "relay-tokens": { type: "string" },
      streams: { type: "string" },
      "stream-token-ms": { type: "string" },
      "stream-loadgens": { type: "string" },
      client: { type: "string" },
      "gateway-env": { type: "string", multiple: true },
      "before-rev": { type: "string" },
      "compare-env": { type: "string", multiple: true },
      "compare-rounds": { type: "string" },
      out: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return undefined;
  const smoke = values.smoke ?? false;

  let scenarios: ScenarioId[] = [...SCENARIOS];
  if (values.scenario !== undefined) {
    const wanted = values.scenario
      .split(",")
      .map((s) => s.trim().toLowerCase())
      .filter((s) => s !== "");
    const bad = wanted.filter((s) => !(SCENARIOS as readonly string[]).includes(s));
    if (bad.length > 0 || wanted.length === 0)
      throw new Error(`--scenario takes letters from ${SCENARIOS.join(",")}; got ${values.scenario}`);
    scenarios = SCENARIOS.filter((s) => wanted.includes(s));
  }

  const logLevel = values["log-level"] ?? "info";
  if (!(LOG_LEVELS as readonly string[]).includes(logLevel))
    throw new Error(`--log-level must be one of ${LOG_LEVELS.join(", ")}`);
  const runtime = values.runtime ?? "compiled";
  if (runtime !== "compiled" && runtime !== "tsx") throw new Error("--runtime must be compiled or tsx");

  const client = values.client ?? "h2";
  if (client !== "h2" && client !== "connect") throw new Error("--client must be h2 or connect");
  const gatewayEnv: Record<string, string> = {};
  for (const v of values["gateway-env"] ?? []) {
    const eq = v.indexOf("=");
    if (eq < 1) throw new Error(`--gateway-env needs NAME=value, got "${v}"`);
    gatewayEnv[v.slice(0, eq)] = v.slice(eq + 1);
  }

  const compareEnv: Record<string, string>[] = [];
  for (const variant of values["compare-env"] ?? []) {
    const env: Record<string, string> = {};
    for (const v of variant.split(/\s+/).filter((x) => x !== "")) {
      const eq = v.indexOf("=");
      if (eq < 1) throw new Error(`--compare-env needs NAME=value, got "${v}"`);
      env[v.slice(0, eq)] = v.slice(eq + 1);
    }
    if (Object.keys(env).length === 0) throw new Error("--compare-env needs at least one NAME=value");
    compareEnv.push(env);
  }
  if (values["before-rev"] !== undefined && compareEnv.length > 0)
    throw new Error("--before-rev and --compare-env each add gateways to compare: give one of them");

  return {
    smoke,
    scenarios,
    soakSeconds: int("soak-seconds", values["soak-seconds"], smoke ? 5 : 300, 1, 3600),
    workers: values.workers === undefined ? undefined : int("workers", values.workers, 1, 1, 256),
    logLevel,
    runtime,
    cpuProfDir: values["cpu-prof"],
    gatewayNodeOptions: (values["gateway-node-options"] ?? "").split(/\s+/).filter((o) => o !== ""),
    relayTokens: int("relay-tokens", values["relay-tokens"], smoke ? 200 : 2000, 1, 100_000),
    streams: int("streams", values.streams, 1000, 1, 5000),
    streamTokenMs: int("stream-token-ms", values["stream-token-ms"], 50, 1, 10_000),
    streamLoadgens: int("stream-loadgens", values["stream-loadgens"], 2, 1, 16),
    client,
    gatewayEnv,
    beforeRev: values["before-rev"],
    compareEnv,
    compareRounds: int("compare-rounds", values["compare-rounds"], smoke ? 2 : 4, 2, 20),
    outDir: values.out ?? "bench-results",
    argv,
  };
}
