// Numbers and the Markdown report of the fleet benchmark (bench/fleet.ts):
// per side summaries from the per-request records and the simulators'
// counters, the target checks, and a digest of the gateway's log.
import { readFileSync } from "node:fs";
import type { FailureClass, FleetLoadResult, FleetTarget, RequestRecord } from "./fleet-protocol.js";
import { FAILURE_CLASSES } from "./fleet-protocol.js";
import { round, summarize } from "./stats.js";
import type { LatencySummary } from "./stats.js";

/** The simulator counters the report uses (a subset of GET /_sim/stats). */
export interface SimCounters {
  /** Requests per path. */
  requests: Record<string, number>;
  /** Responses per HTTP status. */
  responses: Record<string, number>;
  /** Loads per model. */
  loads: Record<string, number>;
  /** Loads in all. */
  loadsTotal: number;
  /** Runners unloaded to make room. */
  evictions: number;
  /** Clients that went away before the answer ended. */
  disconnects: number;
  /** Tokens generated. */
  tokensEmitted: number;
  /** Most slot holders at once, per model. */
  maxInFlight: Record<string, number>;
  /** Most requests waiting for a load at once. */
  maxPendingLoads: number;
  /** 503 answers (pending-load queue full). */
  busyRejections: number;
  /** Generations that finished. */
  completed: number;
}

/** One simulator of a side: its name, URL and counters at the end. */
export interface SimAtEnd {
  /** Node name (n0, n1 ...). */
  node: string;
  /** Base URL. */
  url: string;
  /** Counters from GET /_sim/stats after the last request settled. */
  stats: SimCounters;
}

/** What every node had loaded (`*` = still loading) and waiting for a load, at one moment. */
export interface ResidencySample {
  /** ms after the side's start. */
  tMs: number;
  /** Per node: loaded models and the pending-load queue. */
  nodes: { loaded: string[]; pendingLoads: number }[];
}

/** Everything measured on one side. */
export interface SideRun {
  /** The side's name (`gateway`, `round-robin`, `learning` …). */
  side: string;
  /** How its requests travelled. */
  target: FleetTarget;
  /** The load generator's own report, records included. */
  load: FleetLoadResult;
  /** The simulators' counters at the end. */
  sims: SimAtEnd[];
  /** Residency over time, sampled from GET /_sim/state. */
  residency: ResidencySample[];
}

/** Counts per key, most frequent first. */
export type Tally = { key: string; count: number }[];

/** Per model: what happened to its requests. */
export interface ModelSummary {
  /** Model. */
  model: string;
  /** Requests sent. */
  offered: number;
  /** Requests that finished. */
  completed: number;
  /** Requests that failed. */
  failed: number;
  /** End-to-end latency of the successful ones, ms. */
  latency: LatencySummary;
  /** Successful requests per node that served them. */
  byNode: Record<string, number>;
}

/** A DEADLINE_TOO_SHORT refusal next to what similar requests really took. */
export interface RefusalCheck {
  /** When it was sent, ms after the side's start. */
  tMs: number;
  /** Its model. */
  model: string;
  /** The wait the gateway predicted, ms (undefined when it did not say). */
  expectedWaitMs?: number;
  /** Successful requests of the same model sent within ±2 s. */
  neighbours: number;
  /** Their longest end-to-end latency, ms (NaN without neighbours). */
  neighboursMaxMs: number;
}

/** The numbers of one side. */
export interface SideSummary {
  /** The side's name. */
  side: string;
  /** How its requests travelled. */
  target: FleetTarget;
  /** Requests sent. */
  offered: number;
  /** Requests that finished with their final message. */
  completed: number;
  /** Requests that failed. */
  failed: number;
  /** Failures per class. */
  failures: Record<FailureClass, number>;
  /** Failure details (code and reason, or HTTP status), most frequent first. */
  failureDetails: Tally;
  /** The arrival window, ms: throughput is measured over it. */
  windowMs: number;
  /** Requests that finished within the arrival window. */
  completedInWindow: number;
  /** completedInWindow per second of the window. */
  throughputPerSec: number;
  /** Tokens of the requests that finished in the window, per second of the window. */
  tokensPerSec: number;
  /** Every completion over the time until the last request settled (deadline tail included), per second. */
  completedPerSecUntilSettled: number;
  /** First send to last request settled, ms. */
  settledMs: number;
  /** End-to-end latency of successful requests, ms. */
  latency: LatencySummary;
  /** Time to first token of successful requests, ms. */
  ttft: LatencySummary;
  /** How long refused requests took to be refused (RESOURCE_EXHAUSTED or 503), ms. */
  refusalMs: LatencySummary;
  /** How long requests that timed out ran, ms. */
  timeoutMs: LatencySummary;
  /** Time successful requests waited in the gateway's queue, ms (gateway side). */
  gatewayQueueMs: LatencySummary;
  /** Time Ollama reported for getting the model ready (load or waiting to schedule), ms. */
  upstreamLoadMs: LatencySummary;
  /** Per model. */
  models: ModelSummary[];
  /** Completions per 10 s of the run (by end time). */
  completionsPer10s: number[];
  /** Model loads counted by the simulators, in all and per model. */
  loadsTotal: number;
  /** Per model. */
  loadsByModel: Record<string, number>;
  /** Model loads per node. */
  loadsByNode: Record<string, number>;
  /** Refusals for DEADLINE_TOO_SHORT, each with the wait the gateway predicted and what requests of the same model sent within ±2 s actually took. */
  deadlineRefusals: RefusalCheck[];
  /** Of those, refusals whose neighbours all finished within the deadline (they would most likely have been served in time). */
  refusedButServable: number;
  /** Evictions counted by the simulators. */
  evictions: number;
  /** Client disconnects counted by the simulators (timed-out requests they were still working on or queueing). */
  disconnects: number;
  /** 503 busy answers counted by the simulators. */
  busyRejections: number;
  /** Largest pending-load queue on any node. */
  maxPendingLoads: number;
  /** Most generations at once per model on any one node (≤ num_parallel means nothing was oversubscribed). */
  maxInFlightPerNode: number;
  /** The load generator: its largest send lag, CPU and event-loop delay. */
  loadGenerator: { maxSendLagMs: number; cpuMs: number; loopDelayP99Ms: number; loopDelayMaxMs: number };
}

function tally(keys: Iterable<string>): Tally {
  const m = new Map<string, number>();
  for (const k of keys) m.set(k, (m.get(k) ?? 0) + 1);
  return [...m].map(([key, count]) => ({ key, count })).sort((a, b) => b.count - a.count || (a.key < b.key ? -1 : 1));
}

function sum(xs: Iterable<number>): number {
  let s = 0;
  for (const x of xs) s += x;
  return s;
}

/** The numbers of one side. */
export function summarizeSide(run: SideRun, windowMs: number, deadlineMs: number): SideSummary {
  const recs = run.load.records.filter((r): r is RequestRecord => r !== undefined && r !== null);
  const ok = recs.filter((r) => r.ok);
  const bad = recs.filter((r) => !r.ok);
  const failures = Object.fromEntries(FAILURE_CLASSES.map((c) => [c, 0])) as Record<FailureClass, number>;
  for (const r of bad) failures[r.failure ?? "other"]++;
  const inWindow = ok.filter((r) => r.endMs <= windowMs);
  const settledMs = Math.max(0, ...recs.map((r) => r.endMs));
  const models = [...new Set(recs.map((r) => r.model))].sort().map((model): ModelSummary => {
    const mine = recs.filter((r) => r.model === model);
    const good = mine.filter((r) => r.ok);
    const byNode: Record<string, number> = {};
    for (const r of good) byNode[r.node ?? "?"] = (byNode[r.node ?? "?"] ?? 0) + 1;
    return {
      model,
      offered: mine.length,
      completed: good.length,
      failed: mine.length - good.length,
      latency: summarize(good.map((r) => r.endMs - r.startMs)),
      byNode,
    };
  });
  const buckets = Math.max(1, Math.ceil(settledMs / 10_000));
  const completionsPer10s = new Array<number>(buckets).fill(0);
  for (const r of ok) completionsPer10s[Math.min(buckets - 1, Math.floor(r.endMs / 10_000))]!++;
  const deadlineRefusals = bad
    .filter((r) => r.failure === "resource_exhausted" && (r.detail ?? "").includes("DEADLINE_TOO_SHORT"))
    .map((r): RefusalCheck => {
      const near = ok
        .filter((x) => x.model === r.model && Math.abs(x.startMs - r.startMs) <= 2000)
        .map((x) => x.endMs - x.startMs);
      return {
        tMs: Math.round(r.startMs),
        model: r.model,
        expectedWaitMs: r.expectedWaitMs,
        neighbours: near.length,
        neighboursMaxMs: near.length > 0 ? Math.max(...near) : NaN,
      };
    });
  const loadsByNode = Object.fromEntries(run.sims.map((s) => [s.node, s.stats.loadsTotal]));
  const loadsByModel: Record<string, number> = {};
  for (const s of run.sims)
    for (const [m, n] of Object.entries(s.stats.loads)) loadsByModel[m] = (loadsByModel[m] ?? 0) + n;
  return {
    side: run.side,
    target: run.target,
    offered: recs.length,
    completed: ok.length,
    failed: bad.length,
    failures,
    failureDetails: tally(bad.map((r) => `${r.failure ?? "other"}: ${(r.detail ?? "").replace(/ \d+ ms/g, " N ms")}`)),
    windowMs,
    completedInWindow: inWindow.length,
    throughputPerSec: inWindow.length / (windowMs / 1000),
    tokensPerSec: sum(inWindow.map((r) => r.tokens)) / (windowMs / 1000),
    completedPerSecUntilSettled: settledMs > 0 ? ok.length / (settledMs / 1000) : 0,
    settledMs,
    latency: summarize(ok.map((r) => r.endMs - r.startMs)),
    ttft: summarize(ok.filter((r) => r.ttftMs >= 0).map((r) => r.ttftMs)),
    refusalMs: summarize(
      bad.filter((r) => r.failure === "resource_exhausted" || r.failure === "busy_503").map((r) => r.endMs - r.startMs),
    ),
    timeoutMs: summarize(bad.filter((r) => r.failure === "timeout").map((r) => r.endMs - r.startMs)),
    gatewayQueueMs: summarize(ok.filter((r) => r.gatewayQueueMs !== undefined).map((r) => r.gatewayQueueMs!)),
    upstreamLoadMs: summarize(ok.filter((r) => r.upstreamLoadMs !== undefined).map((r) => r.upstreamLoadMs!)),
    models,
    completionsPer10s,
    loadsTotal: sum(run.sims.map((s) => s.stats.loadsTotal)),
    loadsByModel,
    loadsByNode,
    deadlineRefusals,
    refusedButServable: deadlineRefusals.filter((r) => r.neighbours > 0 && r.neighboursMaxMs <= deadlineMs).length,
    evictions: sum(run.sims.map((s) => s.stats.evictions)),
    disconnects: sum(run.sims.map((s) => s.stats.disconnects)),
    busyRejections: sum(run.sims.map((s) => s.stats.busyRejections)),
    maxPendingLoads: Math.max(0, ...run.sims.map((s) => s.stats.maxPendingLoads)),
    maxInFlightPerNode: Math.max(0, ...run.sims.flatMap((s) => Object.values(s.stats.maxInFlight))),
    loadGenerator: {
      maxSendLagMs: run.load.maxSendLagMs,
      cpuMs: run.load.cpuMs,
      loopDelayP99Ms: run.load.loopDelay.p99,
      loopDelayMaxMs: run.load.loopDelay.max,
    },
  };
}

/** One target of issue #4 and whether it was met. */
export interface TargetCheck {
  /** What is asked. */
  target: string;
  /** What was measured. */
  measured: string;
  /** Met, not met, or n/a (could not be measured). */
  status: "met" | "not met" | "n/a";
}

/** The targets: ≥ 3× the throughput, ≤ 1/5 of the p99, no gateway request failing by timeout. */
export function checkTargets(gw: SideSummary | undefined, rr: SideSummary | undefined): TargetCheck[] {
  if (gw === undefined || rr === undefined) {
    return [{ target: "gateway vs round-robin", measured: "only one side ran", status: "n/a" }];
  }
  const tput =
    rr.throughputPerSec > 0 ? gw.throughputPerSec / rr.throughputPerSec : gw.throughputPerSec > 0 ? Infinity : NaN;
  const p99 = gw.latency.p99 / rr.latency.p99;
  return [
    {
      target: "throughput (completed/s in the arrival window) ≥ 3 × round-robin",
      measured: `${round(gw.throughputPerSec)} vs ${round(rr.throughputPerSec)} /s = ${round(tput)}×`,
      status: Number.isNaN(tput) ? "n/a" : tput >= 3 ? "met" : "not met",
    },
    {
      target: "p99 end-to-end latency ≤ 1/5 of round-robin (ratio ≤ 0.2)",
      measured: `${round(gw.latency.p99)} vs ${round(rr.latency.p99)} ms = ${round(p99)}`,
      status: Number.isFinite(p99) ? (p99 <= 0.2 ? "met" : "not met") : "n/a",
    },
    {
      target: "no gateway request fails by timeout (overload refused with RESOURCE_EXHAUSTED)",
      measured: `${gw.failures.timeout} timed out, ${gw.failures.resource_exhausted} refused (${gw.refusalMs.n > 0 ? `p99 ${round(gw.refusalMs.p99)} ms to refuse` : "none refused"}), ${gw.failures.unavailable + gw.failures.other} other failures`,
      status: gw.failures.timeout === 0 ? "met" : "not met",
    },
  ];
}

/** p99 ratio `a / b` of successful requests, NaN when either is missing. */
function p99Ratio(a: SideSummary, b: SideSummary): number {
  return a.latency.n > 0 && b.latency.n > 0 ? a.latency.p99 / b.latency.p99 : Number.NaN;
}

/**
 * The targets of issue 13 for a fleet whose VRAM holds fewer models than configured: the gateway
 * that learns the capacity (told the count Ollama is configured with) within 1.25× the p99 and 2×
 * the model loads of the gateway told the truth, with no timeouts, and at least 5× better p99
 * than least-connections straight to the nodes.
 */
export function checkCapacityTargets(
  configured: SideSummary | undefined,
  learning: SideSummary | undefined,
  leastConn: SideSummary | undefined,
): TargetCheck[] {
  const out: TargetCheck[] = [];
  if (learning === undefined) return [{ target: "learning gateway", measured: "the side did not run", status: "n/a" }];
  if (configured !== undefined) {
    const p99 = p99Ratio(learning, configured);
    out.push({
      target: "learning gateway p99 ≤ 1.25 × the correctly configured gateway's",
      measured: `${round(learning.latency.p99)} vs ${round(configured.latency.p99)} ms = ${round(p99)}×`,
      status: Number.isNaN(p99) ? "n/a" : p99 <= 1.25 ? "met" : "not met",
    });
    const loads = configured.loadsTotal > 0 ? learning.loadsTotal / configured.loadsTotal : Number.NaN;
    out.push({
      target: "learning gateway model loads ≤ 2 × the correctly configured gateway's",
      measured: `${learning.loadsTotal} vs ${configured.loadsTotal} = ${round(loads)}×`,
      status: Number.isNaN(loads) ? "n/a" : loads <= 2 ? "met" : "not met",
    });
  }
  out.push({
    target: "no learning gateway request fails by timeout",
    measured: `${learning.failures.timeout} timed out, ${learning.failures.resource_exhausted} refused, ${learning.failures.unavailable + learning.failures.other} other failures`,
    status: learning.failures.timeout === 0 ? "met" : "not met",
  });
  if (leastConn !== undefined) {
    const better = p99Ratio(leastConn, learning);
    out.push({
      target: "learning gateway p99 at least 5× better than least-connections",
      measured: `${round(leastConn.latency.p99)} vs ${round(learning.latency.p99)} ms = ${round(better)}× (least-connections: ${leastConn.failed} failed, ${leastConn.failures.timeout} by timeout)`,
      status: Number.isNaN(better) ? "n/a" : better >= 5 ? "met" : "not met",
    });
  }
  return out;
}

/** A digest of the gateway's JSON log: RPC outcomes, and warnings or errors grouped by message. */
export interface GatewayLogDigest {
  /** Lines read. */
  lines: number;
  /** Generate RPC lines per code and reason. */
  rpcOutcomes: Tally;
  /** Successful Generate calls per model and node. */
  servedBy: Tally;
  /** Lines at warn level or above (other than per-RPC lines), per message. */
  warnings: Tally;
  /** The first few such lines, verbatim (shortened). */
  warningExamples: string[];
  /** Lines that were not JSON. */
  unparsed: number;
}

const LEVELS: Record<string, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60 };

/** pino writes levels as numbers, or as labels when configured so (this gateway does). */
function levelOf(v: unknown): number {
  if (typeof v === "number") return v;
  return typeof v === "string" ? (LEVELS[v] ?? 30) : 30;
}

/** Reads the gateway's log (pino JSON lines). */
export function digestGatewayLog(file: string): GatewayLogDigest {
  let text = "";
  try {
    text = readFileSync(file, "utf8");
  } catch {
    return { lines: 0, rpcOutcomes: [], servedBy: [], warnings: [], warningExamples: [], unparsed: 0 };
  }
  const outcomes: string[] = [];
  const served: string[] = [];
  const warnings: string[] = [];
  const examples: string[] = [];
  let unparsed = 0;
  const lines = text.split("\n").filter((l) => l.trim() !== "");
  for (const line of lines) {
    let o: Record<string, unknown>;
    try {
      o = JSON.parse(line) as Record<string, unknown>;
    } catch {
      unparsed++;
      continue;
    }
    const level = levelOf(o["level"]);
    if (o["msg"] === "rpc" && typeof o["method"] === "string" && o["method"].endsWith("/Generate")) {
      outcomes.push(`${String(o["code"])}${o["reason"] ? ` ${String(o["reason"])}` : ""}`);
      if (o["code"] === "ok") served.push(`${String(o["model"])} @ ${String(o["node"])}`);
      if (level < 40) continue;
    }
    if (level >= 40) {
      warnings.push(`${level >= 50 ? "error" : "warn"}: ${String(o["msg"])}`);
      if (examples.length < 5) examples.push(line.slice(0, 400));
    }
  }
  return {
    lines: lines.length,
    rpcOutcomes: tally(outcomes),
    servedBy: tally(served),
    warnings: tally(warnings),
    warningExamples: examples,
    unparsed,
  };
}

/** Facts about the run for the report's head. */
export interface FleetRunInfo {
  /** When it started (ISO). */
  startedAt: string;
  /** The command line. */
  command: string;
  /** Smoke run? */
  smoke: boolean;
  /** Node version, CPUs, memory, kernel. */
  machine: string;
  /** Load average at start and end. */
  loadAverage: string;
  /** Git commit and changed files. */
  git: string;
  /** How the gateway and simulators ran. */
  runtime: string;
  /** Seconds the run took. */
  durationSeconds?: number;
}

/** One side as the report describes it. */
export interface SideInfo {
  /** Its name. */
  name: string;
  /** How it runs (gateway settings, or how requests reach the nodes). */
  description: string;
}

/** One scenario of a run: its setting, sides and results. */
export interface ScenarioReport {
  /** Its name (`basic`, `vram`, `mixed-sizes`). */
  name: string;
  /** What it shows, one line. */
  title: string;
  /** Simulator flags (each of the nodes). */
  simulatorArgs: string[];
  /** Nodes. */
  nodes: number;
  /** Workload description. */
  workload: string;
  /** The sides, in the order they ran. */
  sideInfo: SideInfo[];
  /** Summaries of the sides that ran. */
  sides: SideSummary[];
  /** Their raw runs (residency). */
  runs: SideRun[];
  /** The targets. */
  targets: TargetCheck[];
  /** Which issue's targets these are. */
  targetsTitle: string;
  /** The gateway sides' log digests. */
  logs: { side: string; digest: GatewayLogDigest }[];
  /** Notes about this scenario. */
  notes: string[];
}

function ms(x: number): string {
  return Number.isFinite(x) ? String(round(x)) : "–";
}

function latencyCell(s: LatencySummary): string {
  return s.n === 0 ? "–" : `${ms(s.p50)} / ${ms(s.p99)} (max ${ms(s.max)})`;
}

/** Renders the Markdown report: the run's head, then each scenario. */
export function renderFleetMarkdown(info: FleetRunInfo, scenarios: ScenarioReport[], notes: string[]): string {
  const L: string[] = [];
  L.push(`# Fleet benchmark ${info.startedAt}${info.smoke ? " (smoke: timings are not meaningful)" : ""}`, "");
  L.push(
    `Command: \`${info.command}\` · ${info.machine} · load average ${info.loadAverage} · ${info.git} · ${info.runtime}${info.durationSeconds !== undefined ? ` · ${info.durationSeconds} s` : ""}`,
    "",
  );
  if (notes.length > 0) {
    L.push("## Notes", "");
    for (const n of notes) L.push(`- ${n}`);
    L.push("");
  }
  for (const sc of scenarios) L.push(...renderScenario(sc, scenarios.length > 1));
  return L.join("\n");
}

/** One scenario's part of the report. */
function renderScenario(sc: ScenarioReport, titled: boolean): string[] {
  const L: string[] = [];
  const h = titled ? "###" : "##";
  if (titled) L.push(`## Scenario ${sc.name}: ${sc.title}`, "");
  const { sides, runs, targets, notes } = sc;
  L.push(
    `- ${sc.nodes} simulated nodes, each \`${sc.simulatorArgs.join(" ")}\`, restarted for each side (no model loaded at its start)`,
  );
  L.push(`- Workload (the same schedule on every side): ${sc.workload}`);
  for (const side of sc.sideInfo) L.push(`- Side "${side.name}": ${side.description}`);
  L.push("");

  L.push(`${h} Targets (${sc.targetsTitle})`, "", "| target | measured | status |", "|---|---|---|");
  for (const t of targets) L.push(`| ${t.target} | ${t.measured} | **${t.status}** |`);
  L.push("");

  const col = (f: (s: SideSummary) => string): string => sides.map(f).join(" | ");
  L.push(`${h} Results`, "", `| | ${col((s) => s.side)} |`, `|---|${sides.map(() => "---").join("|")}|`);
  const row = (name: string, f: (s: SideSummary) => string): void => void L.push(`| ${name} | ${col(f)} |`);
  row("requests sent", (s) => String(s.offered));
  row("completed (in the arrival window)", (s) => `${s.completed} (${s.completedInWindow})`);
  row("throughput, completed/s in the window", (s) => ms(s.throughputPerSec));
  row("tokens/s in the window", (s) => ms(s.tokensPerSec));
  row(
    "completed/s until the last request settled",
    (s) => `${ms(s.completedPerSecUntilSettled)} (over ${ms(s.settledMs / 1000)} s)`,
  );
  row("latency p50 / p99 ms (successful)", (s) => latencyCell(s.latency));
  row("TTFT p50 / p99 ms (successful)", (s) => latencyCell(s.ttft));
  row("failed", (s) => String(s.failed));
  row("· RESOURCE_EXHAUSTED (refused)", (s) => String(s.failures.resource_exhausted));
  row("· timeout (DEADLINE_EXCEEDED / deadline passed)", (s) => String(s.failures.timeout));
  row("· UNAVAILABLE", (s) => String(s.failures.unavailable));
  row("· HTTP 503 busy", (s) => String(s.failures.busy_503));
  row("· other", (s) => String(s.failures.other));
  row("time to refusal p50 / p99 ms", (s) => latencyCell(s.refusalMs));
  row("time to timeout p50 / p99 ms", (s) => latencyCell(s.timeoutMs));
  row("gateway queue wait p50 / p99 ms (successful)", (s) => latencyCell(s.gatewayQueueMs));
  row("Ollama load_duration p50 / p99 ms (successful)", (s) => latencyCell(s.upstreamLoadMs));
  row(
    "model loads (simulators)",
    (s) =>
      `${s.loadsTotal}: ${Object.entries(s.loadsByModel)
        .map(([m, n]) => `${m} ${n}`)
        .join(", ")}`,
  );
  row("model loads per node", (s) =>
    Object.entries(s.loadsByNode)
      .map(([n, c]) => `${n} ${c}`)
      .join(", "),
  );
  row(
    "DEADLINE_TOO_SHORT refusals whose neighbours (same model, sent ±2 s) all finished in time",
    (s) => `${s.refusedButServable} of ${s.deadlineRefusals.length}`,
  );
  row(
    "evictions / client disconnects / 503s (simulators)",
    (s) => `${s.evictions} / ${s.disconnects} / ${s.busyRejections}`,
  );
  row("largest pending-load queue on a node", (s) => String(s.maxPendingLoads));
  row("most generations at once, one model on one node", (s) => String(s.maxInFlightPerNode));
  row("completions per 10 s", (s) => s.completionsPer10s.join(" "));
  row(
    "load generator: send lag max ms, loop delay p99 ms, CPU s",
    (s) =>
      `${ms(s.loadGenerator.maxSendLagMs)}, ${ms(s.loadGenerator.loopDelayP99Ms)}, ${ms(s.loadGenerator.cpuMs / 1000)}`,
  );
  L.push("");

  L.push(
    `${h} Per model`,
    "",
    "| side | model | sent | completed | failed | latency p50 / p99 ms | served by (completed per node) |",
    "|---|---|---|---|---|---|---|",
  );
  for (const s of sides) {
    for (const m of s.models) {
      const nodes = Object.entries(m.byNode)
        .sort()
        .map(([n, c]) => `${n} ${c}`)
        .join(", ");
      L.push(
        `| ${s.side} | ${m.model} | ${m.offered} | ${m.completed} | ${m.failed} | ${latencyCell(m.latency)} | ${nodes} |`,
      );
    }
  }
  L.push("");

  L.push(`${h} Failure details`, "");
  for (const s of sides) {
    if (s.failureDetails.length === 0) {
      L.push(`- ${s.side}: none`);
      continue;
    }
    for (const d of s.failureDetails.slice(0, 8)) L.push(`- ${s.side}: ${d.count} × ${d.key}`);
  }
  L.push("");

  for (const s of sides) {
    if (s.deadlineRefusals.length === 0) continue;
    L.push(
      `${s.side}: DEADLINE_TOO_SHORT refusals (predicted wait vs the longest latency of same-model requests sent within ±2 s):`,
      "",
    );
    for (const r of s.deadlineRefusals.slice(0, 20)) {
      L.push(
        `- ${ms(r.tMs / 1000)} s ${r.model}: predicted ${r.expectedWaitMs === undefined ? "?" : ms(r.expectedWaitMs)} ms; ${r.neighbours} neighbours, longest ${ms(r.neighboursMaxMs)} ms`,
      );
    }
    if (s.deadlineRefusals.length > 20) L.push(`- … ${s.deadlineRefusals.length - 20} more in the JSON`);
    L.push("");
  }

  L.push(`${h} Residency (loaded models per node; * = loading; [n] = requests waiting for a load)`, "");
  for (const r of runs) {
    L.push(`${r.side}:`, "", "```");
    let last = "";
    let shown = 0;
    for (const sample of r.residency) {
      const line = sample.nodes
        .map((n) =>
          `${(n.loaded.join("+") || "-").padEnd(18)}${n.pendingLoads > 0 ? `[${n.pendingLoads}]` : ""}`.padEnd(24),
        )
        .join(" ");
      if (line === last) continue;
      last = line;
      if (++shown > 40) {
        L.push("… (more in the JSON)");
        break;
      }
      L.push(`${(sample.tMs / 1000).toFixed(1).padStart(6)} s  ${line}`.trimEnd());
    }
    L.push("```", "");
  }

  for (const { side, digest: log } of sc.logs) {
    L.push(`${h} Gateway log (${side})`, "");
    L.push(`${log.lines} lines${log.unparsed > 0 ? ` (${log.unparsed} not JSON)` : ""}.`, "");
    L.push(`- Generate outcomes: ${log.rpcOutcomes.map((t) => `${t.key} ${t.count}`).join(", ") || "none"}`);
    L.push(`- Served by: ${log.servedBy.map((t) => `${t.key} ${t.count}`).join(", ") || "none"}`);
    L.push(`- Warnings and errors: ${log.warnings.map((t) => `${t.count} × ${t.key}`).join(", ") || "none"}`);
    for (const e of log.warningExamples) L.push(`  - \`${e.replace(/`/g, "'")}\``);
    L.push("");
  }

  if (notes.length > 0) {
    L.push(`${h} Notes`, "");
    for (const n of notes) L.push(`- ${n}`);
    L.push("");
  }
  return L;
}
