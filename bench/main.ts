// `npm run bench`: what the gateway adds, measured against a baseline in the
// same run (the same load sent straight to the simulator over HTTP). The
// simulator, the gateway and the load generators are separate processes.
// `npm run bench -- --smoke` runs every scenario briefly so CI keeps the
// harness working; it asserts nothing about speed. `--help` lists options.
import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { parseBenchArgs, USAGE } from "./cli.js";
import type { BenchOptions, ScenarioId } from "./cli.js";
import { BenchContext } from "./context.js";
import type { RunSummary } from "./measure.js";
import { killAllChildren, prepareBefore, prepareRuntime } from "./processes.js";
import { checkTargets, derivedNotes, renderMarkdown } from "./report.js";
import type { MachineFacts, ScenarioResults } from "./report.js";
import { scenarioA, scenarioB, scenarioC, scenarioD, scenarioE } from "./scenarios.js";
import { round } from "./stats.js";

function git(args: string[]): string {
  try {
    return execFileSync("git", args, { encoding: "utf8", timeout: 5000, stdio: ["ignore", "pipe", "ignore"] }).trim();
  } catch {
    return "";
  }
}

/** Every run of the results, for the failure check. */
function allRuns(r: ScenarioResults): RunSummary[] {
  return [
    ...(r.a ?? []).flatMap((x) => [x.direct, x.nullServer, x.gateway]),
    ...(r.b ?? []).flatMap((x) => [x.direct, x.gateway]),
    ...(r.c ? [r.c.direct, r.c.gateway] : []),
    ...(r.d ? [r.d.direct, r.d.batchOff, r.d.batchOn] : []),
    ...(r.e ? [r.e.gateway] : []),
  ];
}

/** Gateway settings inherited from the environment (they change what is measured). */
function inheritedGatewayEnv(): string[] {
  return Object.keys(process.env)
    .filter((k) =>
      /^(OLLAMA_|REDIS_|CACHE_|EMBED_|UPSTREAM_|HTTP[12]_|MAX_|HEALTH_PROBE_|SHUTDOWN_|WORKERS$|LOG_LEVEL$|AUTH_|API_KEYS$|JWT_|RATE_LIMIT_|GATEWAY_CONFIG_FILE$|BENCH_AUTHORIZATION$)/.test(
        k,
      ),
    )
    .sort();
}

async function run(opts: BenchOptions): Promise<number> {
  const t0 = performance.now();
  const startedAt = new Date();
  const stamp = startedAt.toISOString().replace(/[:.]/g, "-");
  const logDir = join(opts.outDir, `logs-${stamp}`);
  mkdirSync(logDir, { recursive: true });
  if (opts.cpuProfDir) mkdirSync(opts.cpuProfDir, { recursive: true });

  const runtime = prepareRuntime(opts.runtime);
  const before = opts.beforeRev !== undefined ? prepareBefore(opts.beforeRev) : undefined;
  const ctx = new BenchContext(opts, runtime, logDir, stamp, before);
  if (before?.note) ctx.notes.push(before.note);
  if (runtime.note) ctx.notes.push(runtime.note);
  const inherited = inheritedGatewayEnv();
  if (inherited.length > 0) ctx.notes.push(`Gateway settings inherited from the environment: ${inherited.join(", ")}.`);
  if (opts.workers !== undefined)
    ctx.notes.push(
      `WORKERS=${opts.workers} was passed to every gateway; RSS and CPU include its Node child processes.`,
    );

  const machine: MachineFacts = {
    node: process.version,
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model,
    memoryGiB: round(os.totalmem() / 2 ** 30),
    platform: `${os.platform()} ${os.release()}`,
    loadAverageAtStart: os.loadavg(),
    startedAt: startedAt.toISOString(),
    gitCommit: git(["rev-parse", "HEAD"]) || "unknown",
    gitDirtyFiles: git(["status", "--porcelain"])
      .split("\n")
      .filter((l) => l.trim() !== "").length,
    runtime:
      runtime.kind === "compiled"
        ? "compiled JavaScript (tsc → .bench/dist, like npm start)"
        : "TypeScript through tsx",
    client: opts.client === "h2" ? "bench/grpc-h2-client.ts (minimal node:http2)" : "connect-node",
    command: ["npm run bench", ...(opts.argv.length > 0 ? ["--", ...opts.argv] : [])].join(" "),
    smoke: opts.smoke,
  };
  process.stdout.write(
    `bench${opts.smoke ? " (smoke)" : ""}: scenarios ${opts.scenarios.join(",")}; gateway as ${runtime.kind}; logs in ${logDir}\n`,
  );

  const results: ScenarioResults = {};
  const runners: Record<ScenarioId, () => Promise<void>> = {
    a: async () => void (results.a = await scenarioA(ctx)),
    b: async () => void (results.b = await scenarioB(ctx)),
    c: async () => void (results.c = await scenarioC(ctx)),
    d: async () => void (results.d = await scenarioD(ctx)),
    e: async () => void (results.e = await scenarioE(ctx)),
  };
  let broken: unknown;
  try {
    for (const id of opts.scenarios) {
      process.stdout.write(`scenario ${id}\n`);
      await runners[id]();
    }
  } catch (e) {
    broken = e;
  } finally {
    await ctx.close();
  }

  machine.loadAverageAtEnd = os.loadavg();
  machine.durationSeconds = Math.round((performance.now() - t0) / 1000);
  const targets = checkTargets(results, opts.smoke);
  const notes = [...ctx.notes, ...derivedNotes(results)];
  if (broken !== undefined)
    notes.unshift(`THE RUN BROKE OFF: ${broken instanceof Error ? broken.message : String(broken)}`);
  const md = renderMarkdown(machine, results, targets, notes, ctx.gateways);
  const base = join(opts.outDir, `bench-${stamp}`);
  writeFileSync(
    `${base}.json`,
    `${JSON.stringify({ machine, options: { ...opts }, targets, notes, gateways: ctx.gateways, results }, null, 2)}\n`,
  );
  writeFileSync(`${base}.md`, md);
  process.stdout.write(`\n${md}\nWritten to ${base}.md and ${base}.json (${machine.durationSeconds} s)\n`);

  if (broken !== undefined) {
    process.stderr.write(
      `bench: the harness failed: ${broken instanceof Error ? (broken.stack ?? broken.message) : String(broken)}\n`,
    );
    return 1;
  }
  const failed = allRuns(results).filter((s) => s.errors > 0);
  if (failed.length > 0) {
    process.stderr.write(
      `bench: requests failed: ${failed.map((s) => `${s.label}: ${s.errors} (${s.firstError ?? ""})`).join("; ")}\n`,
    );
    return 1;
  }
  return 0;
}

let opts: BenchOptions | undefined;
try {
  opts = parseBenchArgs(process.argv.slice(2));
} catch (e) {
  process.stderr.write(`bench: ${e instanceof Error ? e.message : String(e)}\n\n${USAGE}`);
  process.exit(2);
}
if (opts === undefined) {
  process.stdout.write(USAGE);
  process.exit(0);
}

// However the run ends, no simulator, gateway or load generator outlives it.
process.on("exit", killAllChildren);
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    process.stderr.write(`bench: ${signal}, stopping\n`);
    killAllChildren();
    process.exit(130);
  });
}
// A hard ceiling, in case something hangs despite every per-call and per-job limit.
const ceilingMs = (opts.smoke ? 120 : 1800) * 1000 + (opts.scenarios.includes("e") ? opts.soakSeconds * 1000 : 0);
setTimeout(() => {
  process.stderr.write(`bench: still running after ${Math.round(ceilingMs / 1000)} s; giving up\n`);
  killAllChildren();
  process.exit(1);
}, ceilingMs).unref();

void run(opts).then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`bench failed: ${e instanceof Error ? e.stack : String(e)}\n`);
    killAllChildren();
    process.exit(1);
  },
);
