// `npm run bench:fleet` (node --import tsx bench/fleet.ts). A mixed workload
// over 3 models on 4 simulated Ollama nodes with realistic load times and
// token rates, replayed on several sides in the same run. Scenarios:
// - `basic` (issue #4, the default): (a) through the gateway and (b)
//   round-robin straight to the nodes, as a naive proxy would; targets ≥ 3×
//   throughput, ≤ 1/5 p99, no gateway request failing by timeout;
// - `vram` (issue 13): nodes whose VRAM holds one of the three models while
//   they (like Ollama by default) are configured for 3: (a) the gateway told
//   the truth (1), (b) the gateway told 3, learning the capacity, (c)
//   least-connections straight to the nodes; targets: (b) within 1.25× the
//   p99 and 2× the loads of (a), no timeouts, ≥ 5× better p99 than (c);
// - `mixed-sizes` (issue 13): one large model that fits only alone, two small
//   ones that fit together; (a) the gateway given the nodes' `vramBytes` in a
//   config file, (b) and (c) as above.
// The simulators are restarted for each side so every side starts cold.
// Reports throughput, latency, failures by kind and the model loads counted by
// the simulators, and checks the targets without asserting them: the exit
// status is non-zero only when the harness breaks (1) or for bad arguments (2).
import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import type { FleetJob, FleetLoadResult, FleetRequest, FleetTarget, WorkloadSpec } from "./fleet-protocol.js";
import { buildSchedule } from "./fleet-protocol.js";
import {
  checkCapacityTargets,
  checkTargets,
  digestGatewayLog,
  renderFleetMarkdown,
  summarizeSide,
} from "./fleet-report.js";
import type {
  FleetRunInfo,
  ResidencySample,
  ScenarioReport,
  SideRun,
  SideSummary,
  SimAtEnd,
  SimCounters,
  TargetCheck,
} from "./fleet-report.js";
import {
  killAllChildren,
  LoadProcess,
  prepareRuntime,
  simAdmin,
  startGatewayProcess,
  startSimulatorProcess,
} from "./processes.js";
import type { Runtime, Started } from "./processes.js";
import { round } from "./stats.js";

/** The scenarios: what the nodes are like and which sides are compared. */
type ScenarioName = "basic" | "vram" | "mixed-sizes";
const SCENARIOS: readonly ScenarioName[] = ["basic", "vram", "mixed-sizes"];

/** Options of a fleet benchmark run. */
interface FleetOptions {
  /** Short run with tiny load times: checks the harness, not the gateway. */
  smoke: boolean;
  /** Scenarios to run, in this order. */
  scenarios: ScenarioName[];
  /** VRAM of each node in the `vram` and `mixed-sizes` scenarios, bytes. */
  vramBytes: number;
  /** Arrival window per side, seconds. */
  durationS: number;
  /** Mean arrival rate, requests/s (Poisson). */
  rate: number;
  /** Deadline of every request, ms. */
  deadlineMs: number;
  /** Seed of the schedule. */
  seed: number;
  /** Simulated nodes. */
  nodes: number;
  /** Simulator model load time, ms. */
  loadMs: number;
  /** Simulator prompt evaluation before the first token, ms. */
  firstTokenMs: number;
  /** Simulator delay between tokens, ms. */
  tokenMs: number;
  /** Parallel slots per loaded model on each node. */
  numParallel: number;
  /** Models resident at once on each node (the `basic` scenario; the others configure Ollama's 3). */
  maxLoadedModels: number;
  /** Models and their weights; undefined = the scenario's. */
  mix: { model: string; weight: number }[] | undefined;
  /** Models and weights for the second half of the window (demand moves); undefined = `mix` throughout. */
  shiftMix: { model: string; weight: number }[] | undefined;
  /** Extra environment for the gateway (e.g. REBALANCE=off, QUEUE_MAX_WAIT_MS=5000). */
  gatewayEnv: Record<string, string>;
  /** Smallest num_predict. */
  minTokens: number;
  /** Largest num_predict. */
  maxTokens: number;
  /** Sides to run (by name), in the scenario's order; undefined = all of each scenario's. */
  sides: string[] | undefined;
  /** Gateway and simulators as compiled JavaScript or through tsx. */
  runtime: Runtime["kind"];
  /** Gateway LOG_LEVEL. */
  logLevel: string;
  /** Output directory. */
  outDir: string;
  /** The arguments as given. */
  argv: string[];
}

const USAGE = `Usage: node --import tsx bench/fleet.ts [options]   (npm run bench:fleet -- [options])

The gateway against proxies in front of the same simulated fleet, in scenarios:
  basic        (issue #4) sides gateway, round-robin; nodes hold one model each
               (--max-loaded-models 1), the gateway is told so
  vram         (issue 13) sides configured, learning, least-connections; nodes are
               configured for 3 models (Ollama's default) but their VRAM (--vram-bytes)
               holds one of llama3.2 / qwen3 / llava; "configured" is the gateway told 1,
               "learning" the gateway told 3 (it learns the capacity from the nodes)
  mixed-sizes  (issue 13) the same sides over qwen3 (fits only alone) and llama3.2 +
               llama3.2:1b (fit together); "configured" is given vramBytes in a config file

  --scenario a,b           scenarios to run, in order (default basic)
  --smoke                  ~30 s harness check per scenario: 6 s per side, 200 ms loads, 5 ms tokens
  --duration-s N           arrival window per side (default 75; smoke 6)
  --rate R                 mean arrivals per second, Poisson (default 7; smoke 24)
  --deadline-ms N          deadline of every request (default 30000; smoke 1500)
  --seed N                 schedule seed (default 42)
  --nodes N                simulated nodes (default 4)
  --load-ms N              model load time (default 2000; smoke 200)
  --first-token-ms N       prompt evaluation time (default 50; smoke 10)
  --token-ms N             time per token (default 20 = 50 tokens/s; smoke 5)
  --num-parallel N         slots per loaded model (default 2)
  --max-loaded-models N    models resident per node, basic scenario (default 1)
  --vram-bytes N           VRAM per node, vram and mixed-sizes scenarios (default 7000000000)
  --mix m=w,m=w            models and weights (default basic llama3.2=50,qwen3=30,llava=20;
                           vram llama3.2=60,qwen3=30,llava=10; mixed-sizes
                           llama3.2=40,llama3.2:1b=30,qwen3=30)
  --shift-mix m=w,m=w      another mix for the second half of the window (demand moves)
  --gateway-env NAME=value extra gateway setting, repeatable (e.g. REBALANCE=off)
  --tokens A-B             num_predict, uniform (default 20-50)
  --sides a,b              sides to run by name (default all of each scenario's)
  --runtime compiled|tsx   how the gateway and simulators run (default compiled)
  --log-level L            gateway LOG_LEVEL (default info: one line per call)
  --out DIR                results directory (default bench-results)
  -h, --help               this text
`;

function intArg(name: string, v: string | undefined, min: number): number {
  const n = Number(v);
  if (v === undefined || !Number.isInteger(n) || n < min)
    throw new Error(`${name} needs an integer ≥ ${min}, got ${v ?? "nothing"}`);
  return n;
}

function numArg(name: string, v: string | undefined, minExclusive: number): number {
  const n = Number(v);
  if (v === undefined || !Number.isFinite(n) || n <= minExclusive)
    throw new Error(`${name} needs a number > ${minExclusive}, got ${v ?? "nothing"}`);
  return n;
}

/** Parses the command line; undefined for --help. Throws on bad arguments. */
function parseFleetArgs(argv: string[]): FleetOptions | undefined {
  const smoke = argv.includes("--smoke");
  const o: FleetOptions = {
    smoke,
    scenarios: ["basic"],
    vramBytes: 7_000_000_000,
    durationS: smoke ? 6 : 75,
    rate: smoke ? 24 : 7,
    deadlineMs: smoke ? 1500 : 30_000,
    seed: 42,
    nodes: 4,
    loadMs: smoke ? 200 : 2000,
    firstTokenMs: smoke ? 10 : 50,
    tokenMs: smoke ? 5 : 20,
    numParallel: 2,
    maxLoadedModels: 1,
    mix: undefined,
    shiftMix: undefined,
    gatewayEnv: {},
    minTokens: 20,
    maxTokens: 50,
    sides: undefined,
    runtime: "compiled",
    logLevel: "info",
    outDir: "bench-results",
    argv,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const [flag, inline] =
      a.startsWith("--") && a.includes("=")
        ? [a.slice(0, a.indexOf("=")), a.slice(a.indexOf("=") + 1)]
        : [a, undefined];
    const value = (): string | undefined => inline ?? argv[++i];
    switch (flag) {
      case "--smoke":
        break;
      case "--scenario": {
        const list = (value() ?? "").split(",").filter((x) => x !== "");
        for (const x of list)
          if (!SCENARIOS.includes(x as ScenarioName))
            throw new Error(`--scenario: unknown scenario "${x}" (${SCENARIOS.join(", ")})`);
        if (list.length === 0) throw new Error(`--scenario needs one of ${SCENARIOS.join(", ")}`);
        o.scenarios = list as ScenarioName[];
        break;
      }
      case "--vram-bytes":
        o.vramBytes = intArg(flag, value(), 1);
        break;
      case "-h":
      case "--help":
        return undefined;
      case "--duration-s":
        o.durationS = numArg(flag, value(), 0);
        break;
      case "--rate":
        o.rate = numArg(flag, value(), 0);
        break;
      case "--deadline-ms":
        o.deadlineMs = intArg(flag, value(), 100);
        break;
      case "--seed":
        o.seed = intArg(flag, value(), 0);
        break;
      case "--nodes":
        o.nodes = intArg(flag, value(), 1);
        break;
      case "--load-ms":
        o.loadMs = intArg(flag, value(), 0);
        break;
      case "--first-token-ms":
        o.firstTokenMs = intArg(flag, value(), 0);
        break;
      case "--token-ms":
        o.tokenMs = intArg(flag, value(), 0);
        break;
      case "--num-parallel":
        o.numParallel = intArg(flag, value(), 1);
        break;
      case "--max-loaded-models":
        o.maxLoadedModels = intArg(flag, value(), 1);
        break;
      case "--mix":
      case "--shift-mix": {
        const v = value() ?? "";
        const mix = v.split(",").map((p) => {
          const [model, w] = p.split("=");
          if (!model) throw new Error(`${flag}: bad entry "${p}"`);
          return { model, weight: numArg(`${flag} ${model}`, w, 0) };
        });
        if (flag === "--mix") o.mix = mix;
        else o.shiftMix = mix;
        break;
      }
      case "--gateway-env": {
        const v = value() ?? "";
        const eq = v.indexOf("=");
        if (eq < 1) throw new Error(`--gateway-env needs NAME=value, got "${v}"`);
        o.gatewayEnv[v.slice(0, eq)] = v.slice(eq + 1);
        break;
      }
      case "--tokens": {
        const m = /^(\d+)-(\d+)$/.exec(value() ?? "");
        if (!m || Number(m[1]) < 1 || Number(m[2]) < Number(m[1])) throw new Error("--tokens needs A-B with 1 ≤ A ≤ B");
        o.minTokens = Number(m[1]);
        o.maxTokens = Number(m[2]);
        break;
      }
      case "--sides": {
        const list = (value() ?? "").split(",").filter((s) => s !== "");
        if (list.length === 0) throw new Error("--sides needs side names");
        o.sides = list;
        break;
      }
      case "--runtime": {
        const v = value();
        if (v !== "compiled" && v !== "tsx") throw new Error("--runtime is compiled or tsx");
        o.runtime = v;
        break;
      }
      case "--log-level":
        o.logLevel = value() ?? "info";
        break;
      case "--out":
        o.outDir = value() ?? "bench-results";
        break;
      default:
        throw new Error(`unknown option ${a}`);
    }
  }
  if (o.sides !== undefined) {
    const known = new Set(o.scenarios.flatMap((name) => scenario(name, o).sides.map((side) => side.name)));
    for (const side of o.sides) if (!known.has(side)) throw new Error(`--sides: no scenario has a side "${side}"`);
  }
  return o;
}

/** One side of a scenario: where its requests go, and how its gateway is configured. */
interface SideSpec {
  /** Its name in the report. */
  name: string;
  /** How its requests travel. */
  target: FleetTarget;
  /** Gateway settings of a gateway side, over the common ones. */
  gatewayEnv?: Record<string, string>;
  /** A gateway side's config file (`GATEWAY_CONFIG_FILE`), given the nodes' URLs in order. */
  configFile?: (urls: string[]) => object;
  /** What it is, for the report. */
  description: string;
}

/** What a scenario runs. */
interface Scenario {
  name: ScenarioName;
  /** What it shows, one line. */
  title: string;
  /** Simulator flags for every node. */
  simulatorArgs: string[];
  /** Models and weights. */
  mix: { model: string; weight: number }[];
  /** Its sides, in order. */
  sides: SideSpec[];
  /** The targets, given the summaries of the sides that ran. */
  targets(sides: SideSummary[]): TargetCheck[];
  /** Which issue's targets. */
  targetsTitle: string;
}

function parseMix(text: string): { model: string; weight: number }[] {
  return text.split(",").map((p) => {
    const [model, w] = p.split("=");
    return { model: model!, weight: Number(w) };
  });
}

/** A scenario with the run's options applied. */
function scenario(name: ScenarioName, o: FleetOptions): Scenario {
  const timing = [
    "--load-ms",
    String(o.loadMs),
    "--first-token-ms",
    String(o.firstTokenMs),
    "--token-ms",
    String(o.tokenMs),
    "--num-parallel",
    String(o.numParallel),
  ];
  const gb = round(o.vramBytes / 1e9);
  const byName = (sides: SideSummary[], side: string): SideSummary | undefined => sides.find((s) => s.side === side);
  const leastConnections: SideSpec = {
    name: "least-connections",
    target: "least-connections",
    description: `request → the node with the fewest requests outstanding from the load generator (ties in turn, as nginx \`least_conn\`), straight to the simulator over HTTP/1.1 (no proxy hop), one connection per outstanding request`,
  };
  const learning: SideSpec = {
    name: "learning",
    target: "gateway",
    gatewayEnv: { OLLAMA_MAX_LOADED_MODELS: "3" },
    description: `the gateway told \`OLLAMA_MAX_LOADED_MODELS=3\` (what the nodes are configured with), no vramBytes: it learns what fits from /api/ps and evictions`,
  };
  const capacityTargets = (sides: SideSummary[]): TargetCheck[] =>
    checkCapacityTargets(byName(sides, "configured"), byName(sides, "learning"), byName(sides, "least-connections"));
  switch (name) {
    case "basic":
      return {
        name,
        title: "the gateway vs round-robin",
        simulatorArgs: [...timing, "--max-loaded-models", String(o.maxLoadedModels)],
        mix: o.mix ?? parseMix("llama3.2=50,qwen3=30,llava=20"),
        sides: [
          {
            name: "gateway",
            target: "gateway",
            gatewayEnv: { OLLAMA_MAX_LOADED_MODELS: String(o.maxLoadedModels) },
            description: `the gateway, \`OLLAMA_MAX_LOADED_MODELS=${o.maxLoadedModels}\` as the nodes`,
          },
          {
            name: "round-robin",
            target: "round-robin",
            description: `request i → node i mod ${o.nodes}, straight to the simulator over HTTP/1.1 (no proxy hop), one connection per outstanding request`,
          },
        ],
        targets: (sides) => checkTargets(byName(sides, "gateway"), byName(sides, "round-robin")),
        targetsTitle: "issue #4",
      };
    case "vram":
      return {
        name,
        title: `nodes configured for 3 models whose ${gb} GB of VRAM hold one of the three`,
        simulatorArgs: [...timing, "--max-loaded-models", "3", "--vram-bytes", String(o.vramBytes)],
        mix: o.mix ?? parseMix("llama3.2=60,qwen3=30,llava=10"),
        sides: [
          {
            name: "configured",
            target: "gateway",
            gatewayEnv: { OLLAMA_MAX_LOADED_MODELS: "1" },
            description: "the gateway told the truth: `OLLAMA_MAX_LOADED_MODELS=1`",
          },
          learning,
          leastConnections,
        ],
        targets: capacityTargets,
        targetsTitle: "issue 13",
      };
    case "mixed-sizes":
      return {
        name,
        title: `qwen3 fits only alone in ${gb} GB of VRAM, llama3.2 and llama3.2:1b fit together`,
        simulatorArgs: [
          ...timing,
          "--max-loaded-models",
          "3",
          "--vram-bytes",
          String(o.vramBytes),
          "--models",
          "llama3.2,llama3.2:1b,qwen3",
        ],
        mix: o.mix ?? parseMix("llama3.2=40,llama3.2:1b=30,qwen3=30"),
        sides: [
          {
            name: "configured",
            target: "gateway",
            gatewayEnv: { OLLAMA_MAX_LOADED_MODELS: "3" },
            configFile: (urls) => ({
              nodes: urls.map((url, i) => ({ name: `n${i}`, url, maxLoadedModels: 3, vramBytes: o.vramBytes })),
            }),
            description: `the gateway given each node's \`vramBytes\` (${o.vramBytes}) and \`maxLoadedModels\` 3 in a config file`,
          },
          learning,
          leastConnections,
        ],
        targets: capacityTargets,
        targetsTitle: "issue 13",
      };
  }
}

interface SimState {
  loaded: { name: string; loading: boolean }[];
  pending_loads: number;
}

/** Starts the nodes and checks that each is cold (nothing loaded) with zeroed counters. */
async function startFleet(runtime: Runtime, o: FleetOptions, args: readonly string[]): Promise<Started[]> {
  const settled = await Promise.allSettled(Array.from({ length: o.nodes }, () => startSimulatorProcess(runtime, args)));
  const sims = settled
    .filter((s): s is PromiseFulfilledResult<Started> => s.status === "fulfilled")
    .map((s) => s.value);
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === "rejected");
  if (failed !== undefined) {
    await Promise.all(sims.map((s) => s.stop(2000)));
    throw failed.reason instanceof Error ? failed.reason : new Error(String(failed.reason));
  }
  for (const s of sims) {
    await simAdmin(s.url, "POST", "/_sim/reset");
    const state = (await simAdmin(s.url, "GET", "/_sim/state")) as SimState;
    if (state.loaded.length !== 0)
      throw new Error(`simulator ${s.url} has ${state.loaded.map((r) => r.name).join(", ")} loaded at the start`);
  }
  return sims;
}

/** Samples which model each node has loaded, every `everyMs`, until stopped (bounded by `maxSamples`). */
function sampleResidency(
  sims: Started[],
  everyMs: number,
  maxSamples: number,
  t0: number,
): { stop(): Promise<ResidencySample[]> } {
  const samples: ResidencySample[] = [];
  let stopped = false;
  const loop = (async (): Promise<void> => {
    for (let k = 0; k < maxSamples && !stopped; k++) {
      const tMs = performance.now() - t0;
      const nodes = await Promise.all(
        sims.map(async (s) => {
          try {
            const st = (await simAdmin(s.url, "GET", "/_sim/state")) as SimState;
            return {
              loaded: st.loaded.map((r) => r.name.replace(/:latest$/, "") + (r.loading ? "*" : "")),
              pendingLoads: st.pending_loads,
            };
          } catch {
            return { loaded: ["?"], pendingLoads: 0 };
          }
        }),
      );
      samples.push({ tMs: Math.round(tMs), nodes });
      const wait = everyMs - (performance.now() - t0 - tMs);
      if (wait > 0 && !stopped) await new Promise((r) => setTimeout(r, wait));
    }
  })();
  return {
    async stop() {
      stopped = true;
      await loop;
      return samples;
    },
  };
}

/** Runs one side: fresh simulators, the gateway when it is that side, the schedule, then the counters. */
async function runSide(
  side: SideSpec,
  sc: Scenario,
  o: FleetOptions,
  runtime: Runtime,
  schedule: FleetRequest[],
  loader: LoadProcess<FleetJob, FleetLoadResult>,
  gatewayEnv: (urls: string) => Record<string, string>,
  logFile: string,
): Promise<SideRun> {
  const sims = await startFleet(runtime, o, sc.simulatorArgs);
  let gateway: Started | undefined;
  try {
    const named = sims.map((s, i) => `n${i}=${s.url}`).join(",");
    if (side.target === "gateway") {
      const env = { ...gatewayEnv(named), ...side.gatewayEnv };
      if (side.configFile !== undefined) {
        const file = `${logFile.replace(/\.log$/, "")}.config.json`;
        writeFileSync(file, JSON.stringify(side.configFile(sims.map((s) => s.url)), null, 1));
        env["GATEWAY_CONFIG_FILE"] = file;
        delete env["OLLAMA_URLS"];
      }
      gateway = await startGatewayProcess(runtime, { ...env, ...o.gatewayEnv }, logFile);
    }
    await loader.whenReady();
    const job: FleetJob = {
      label: side.name,
      target: side.target,
      urls: side.target === "gateway" ? [gateway!.url] : sims.map((s) => s.url),
      schedule,
      deadlineMs: o.deadlineMs,
    };
    const t0 = performance.now();
    const everyMs = o.smoke ? 250 : 1000;
    const totalMs = o.durationS * 1000 + o.deadlineMs + 30_000;
    const sampler = sampleResidency(sims, everyMs, Math.ceil(totalMs / everyMs) + 10, t0);
    const [outcome] = await Promise.allSettled([loader.run(job, totalMs)]);
    // Stop the sampler also when the job failed.
    const residency = await sampler.stop();
    if (outcome.status === "rejected")
      throw outcome.reason instanceof Error ? outcome.reason : new Error(String(outcome.reason));
    const load = outcome.value;
    const atEnd: SimAtEnd[] = await Promise.all(
      sims.map(async (s, i) => ({
        node: `n${i}`,
        url: s.url,
        stats: (await simAdmin(s.url, "GET", "/_sim/stats")) as SimCounters,
      })),
    );
    return { side: side.name, target: side.target, load, sims: atEnd, residency };
  } finally {
    if (gateway) await gateway.stop(5000);
    await Promise.all(sims.map((s) => s.stop(3000)));
  }
}

function git(args: string[]): string {
  try {
    return execFileSync("git", args, { encoding: "utf8", timeout: 5000, stdio: ["ignore", "pipe", "ignore"] }).trim();
  } catch {
    return "";
  }
}

/** Gateway settings inherited from the environment (they change what is measured). */
function inheritedGatewayEnv(): string[] {
  return Object.keys(process.env)
    .filter((k) =>
      /^(OLLAMA_|REDIS_|CACHE_|EMBED_|UPSTREAM_|HTTP[12]_|MAX_|HEALTH_PROBE_|SHUTDOWN_|QUEUE_|CIRCUIT_|RETRY_|MODEL_NUM_CTX$|GATEWAY_CONFIG_FILE$|WORKERS$|LOG_LEVEL$)/.test(
        k,
      ),
    )
    .sort();
}

function sideLine(s: SideSummary): string {
  const f = s.failures;
  return (
    `${s.side.padEnd(17)} ${s.completed}/${s.offered} completed, ${round(s.throughputPerSec)}/s and ${round(s.tokensPerSec)} tokens/s in the window; ` +
    `p50 ${round(s.latency.p50)} ms, p99 ${round(s.latency.p99)} ms; TTFT p50 ${round(s.ttft.p50)} ms, p99 ${round(s.ttft.p99)} ms; ` +
    `failed ${s.failed} (refused ${f.resource_exhausted}, timeout ${f.timeout}, unavailable ${f.unavailable}, 503 ${f.busy_503}, other ${f.other}); ` +
    `model loads ${s.loadsTotal}`
  );
}

const describeMix = (mix: readonly { model: string; weight: number }[]): string =>
  mix.map((m) => `${m.model} ${round((100 * m.weight) / mix.reduce((a, b) => a + b.weight, 0))}%`).join(", ");

/** Runs one scenario's sides, then summarises them. */
async function runScenario(
  sc: Scenario,
  o: FleetOptions,
  runtime: Runtime,
  logDir: string,
): Promise<{ report: ScenarioReport; spec: WorkloadSpec; broken: unknown }> {
  const spec: WorkloadSpec = {
    seed: o.seed,
    ratePerSec: o.rate,
    durationMs: o.durationS * 1000,
    mix: sc.mix,
    shiftMix: o.shiftMix,
    minTokens: o.minTokens,
    maxTokens: o.maxTokens,
    thinkingModels: ["qwen3"],
  };
  const schedule = buildSchedule(spec);
  const mixText =
    describeMix(sc.mix) +
    (o.shiftMix ? ` in the first half, then ${describeMix(o.shiftMix)}` : "") +
    (Object.keys(o.gatewayEnv).length > 0
      ? `; gateway ${Object.entries(o.gatewayEnv)
          .map(([k, v]) => `${k}=${v}`)
          .join(" ")}`
      : "");
  const models = [...new Set([...sc.mix, ...(o.shiftMix ?? [])].map((m) => m.model))];
  const counts = models.map((m) => `${m} ${schedule.filter((r) => r.model === m).length}`).join(", ");
  const gatewayEnv = (urls: string): Record<string, string> => ({
    OLLAMA_URLS: urls,
    OLLAMA_NUM_PARALLEL: String(o.numParallel),
    LOG_LEVEL: o.logLevel,
    SHUTDOWN_GRACE_MS: "2000",
  });
  const common = Object.entries({ ...gatewayEnv(`n0=…,…,n${o.nodes - 1}=…`), ...o.gatewayEnv })
    .map(([k, v]) => `\`${k}=${v}\``)
    .join(" ");
  const sides = sc.sides.filter((side) => o.sides === undefined || o.sides.includes(side.name));
  const workload =
    `${schedule.length} Generate requests, Poisson arrivals at ${o.rate}/s for ${o.durationS} s (seed ${o.seed}), ` +
    `open loop; mix ${mixText} (drawn: ${counts}); num_predict uniform ${o.minTokens}–${o.maxTokens}; ` +
    `qwen3 with think off; a distinct prompt per request; deadline ${o.deadlineMs} ms per request`;
  process.stdout.write(
    `scenario ${sc.name} (${sc.title}): ${workload}\nsides ${sides.map((x) => x.name).join(", ")}; logs in ${logDir}\n`,
  );
  const logFile = (side: SideSpec): string => join(logDir, `gateway-${sc.name}-${side.name}.log`);

  const runs: SideRun[] = [];
  let broken: unknown;
  // Start this scenario's load generators now (about a second each), so none is started while a side is timed.
  const loaders = sides.map(() => new LoadProcess<FleetJob, FleetLoadResult>("bench/fleet-load.ts"));
  try {
    for (const [k, side] of sides.entries()) {
      process.stdout.write(
        `${sc.name} side ${side.name}: starting ${o.nodes} simulators${side.target === "gateway" ? " and the gateway" : ""}\n`,
      );
      const r = await runSide(side, sc, o, runtime, schedule, loaders[k]!, gatewayEnv, logFile(side));
      runs.push(r);
      process.stdout.write(`${sc.name} side ${side.name}: done in ${round(r.load.elapsedMs / 1000)} s\n`);
    }
  } catch (e) {
    broken = e;
  } finally {
    for (const l of loaders) l.kill();
  }

  const windowMs = o.durationS * 1000;
  const summaries = runs.map((r) => summarizeSide(r, windowMs, o.deadlineMs));
  const notes: string[] = [];
  for (const s of summaries) {
    if (s.target === "gateway") {
      const churn = Object.entries(s.loadsByNode).filter(([, n]) => n > 2);
      if (churn.length > 0) {
        notes.push(
          `${s.side}: ${churn.map(([n, c]) => `${n} loaded a model ${c} times`).join(", ")}: its resident models kept changing; see the residency table and "served by".`,
        );
      }
      if (s.refusedButServable > 0) {
        notes.push(
          `${s.side}: ${s.refusedButServable} of ${s.deadlineRefusals.length} DEADLINE_TOO_SHORT refusals came while every request of the same model sent within ±2 s finished within the ${o.deadlineMs} ms deadline: the predicted wait was too pessimistic.`,
        );
      }
    }
    if (s.loadGenerator.maxSendLagMs > 50)
      notes.push(
        `${s.side}: the load generator sent a request up to ${round(s.loadGenerator.maxSendLagMs)} ms late (it may have been the bottleneck).`,
      );
    if (s.maxInFlightPerNode > o.numParallel)
      notes.push(
        `${s.side}: a node ran ${s.maxInFlightPerNode} generations of one model at once (num_parallel ${o.numParallel}).`,
      );
  }
  if (broken !== undefined)
    notes.unshift(`THE SCENARIO BROKE OFF: ${broken instanceof Error ? broken.message : String(broken)}`);
  const report: ScenarioReport = {
    name: sc.name,
    title: sc.title,
    simulatorArgs: sc.simulatorArgs,
    nodes: o.nodes,
    workload,
    sideInfo: sides.map((side) => ({
      name: side.name,
      description:
        side.target === "gateway"
          ? `${side.description}; ${common}${Object.entries(side.gatewayEnv ?? {})
              .map(([k, v]) => ` \`${k}=${v}\``)
              .join("")}`
          : side.description,
    })),
    sides: summaries,
    runs,
    targets: sc.targets(summaries),
    targetsTitle: sc.targetsTitle,
    logs: sides
      .filter((side) => side.target === "gateway" && runs.some((r) => r.side === side.name))
      .map((side) => ({ side: side.name, digest: digestGatewayLog(logFile(side)) })),
    notes,
  };
  return { report, spec, broken };
}

async function run(o: FleetOptions): Promise<number> {
  const t0 = performance.now();
  const startedAt = new Date();
  const stamp = startedAt.toISOString().replace(/[:.]/g, "-");
  const logDir = join(o.outDir, `logs-fleet-${stamp}`);
  mkdirSync(logDir, { recursive: true });
  const notes: string[] = [];
  const loadAvgStart = os.loadavg();

  const runtime = prepareRuntime(o.runtime);
  if (runtime.note) notes.push(runtime.note);
  const inherited = inheritedGatewayEnv();
  if (inherited.length > 0) notes.push(`Gateway settings inherited from the environment: ${inherited.join(", ")}.`);
  const info: FleetRunInfo = {
    startedAt: startedAt.toISOString(),
    command: ["node --import tsx bench/fleet.ts", ...o.argv].join(" "),
    smoke: o.smoke,
    machine: `Node ${process.version}, ${os.cpus().length} × ${os.cpus()[0]?.model ?? "?"}, ${round(os.totalmem() / 2 ** 30)} GiB, ${os.platform()} ${os.release()}`,
    loadAverage: "",
    git: `commit ${git(["rev-parse", "--short", "HEAD"]) || "unknown"}, ${
      git(["status", "--porcelain"])
        .split("\n")
        .filter((l) => l.trim() !== "").length
    } changed files`,
    runtime:
      runtime.kind === "compiled"
        ? "gateway and simulators as compiled JavaScript"
        : "gateway and simulators through tsx",
  };
  process.stdout.write(`bench:fleet${o.smoke ? " (smoke)" : ""}: scenarios ${o.scenarios.join(", ")}\n`);

  const scenarios: ScenarioReport[] = [];
  const workloads: Record<string, WorkloadSpec> = {};
  let broken: unknown;
  for (const name of o.scenarios) {
    const r = await runScenario(scenario(name, o), o, runtime, logDir);
    scenarios.push(r.report);
    workloads[name] = r.spec;
    if (r.broken !== undefined) {
      broken = r.broken;
      break;
    }
  }
  if (o.smoke)
    notes.push("Smoke run: tiny load times and a short window; the numbers check the harness, not the gateway.");
  if (broken !== undefined)
    notes.unshift(`THE RUN BROKE OFF: ${broken instanceof Error ? broken.message : String(broken)}`);

  info.loadAverage = `${loadAvgStart.map((x) => x.toFixed(2)).join(" ")} → ${os
    .loadavg()
    .map((x) => x.toFixed(2))
    .join(" ")}`;
  info.durationSeconds = Math.round((performance.now() - t0) / 1000);
  const md = renderFleetMarkdown(info, scenarios, notes);
  const base = join(o.outDir, `fleet-${stamp}`);
  writeFileSync(`${base}.json`, `${JSON.stringify({ info, options: o, workloads, notes, scenarios }, null, 1)}\n`);
  writeFileSync(`${base}.md`, md);
  for (const sc of scenarios) {
    process.stdout.write(`\nscenario ${sc.name}:\n${sc.sides.map(sideLine).join("\n")}\n`);
    for (const t of sc.targets)
      process.stdout.write(`target: ${t.target}: ${t.measured} → ${t.status.toUpperCase()}\n`);
  }
  process.stdout.write(
    `\nWritten to ${base}.md and ${base}.json; gateway logs in ${logDir} (${info.durationSeconds} s)\n`,
  );

  if (broken !== undefined) {
    process.stderr.write(
      `bench:fleet: the harness failed: ${broken instanceof Error ? (broken.stack ?? broken.message) : String(broken)}\n`,
    );
    return 1;
  }
  return 0;
}

let opts: FleetOptions | undefined;
try {
  opts = parseFleetArgs(process.argv.slice(2));
} catch (e) {
  process.stderr.write(`bench:fleet: ${e instanceof Error ? e.message : String(e)}\n\n${USAGE}`);
  process.exit(2);
}
if (opts === undefined) {
  process.stdout.write(USAGE);
  process.exit(0);
}

const stopAll = (): void => {
  killAllChildren();
};
// However the run ends, no simulator, gateway or load generator outlives it.
process.on("exit", stopAll);
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    process.stderr.write(`bench:fleet: ${signal}, stopping\n`);
    stopAll();
    process.exit(130);
  });
}
// A hard ceiling, in case something hangs despite every per-request and per-side limit.
const sideCount = opts.scenarios
  .map((name) => scenario(name, opts!).sides.filter((side) => opts!.sides?.includes(side.name) ?? true).length)
  .reduce((a, b) => a + b, 0);
const ceilingMs = sideCount * (opts.durationS * 1000 + opts.deadlineMs + 90_000) + 60_000;
setTimeout(() => {
  process.stderr.write(`bench:fleet: still running after ${Math.round(ceilingMs / 1000)} s; giving up\n`);
  stopAll();
  process.exit(1);
}, ceilingMs).unref();

void run(opts).then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`bench:fleet failed: ${e instanceof Error ? e.stack : String(e)}\n`);
    stopAll();
    process.exit(1);
  },
);
