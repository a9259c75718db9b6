// The processes a benchmark run starts: the simulator, gateways and load
// generators. Every child is registered so that any way out of the run
// (normal end, error, Ctrl-C) stops all of them.
import { spawn, spawnSync } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { Health, HealthCheckResponse_ServingStatus } from "../src/gen/grpc/health/v1/health_pb.js";
import type { LoadJob, LoadReply, LoadResult } from "./load-protocol.js";

/** A child process the bench started, with its address. */
export interface Started {
  /** Base URL. */
  url: string;
  /** The process id (for /proc measurements). */
  pid: number;
  /** The process. */
  child: ChildProcess;
  /** Stops it (SIGTERM, then SIGKILL after `graceMs`). */
  stop(graceMs?: number): Promise<void>;
}

/** How the gateway and simulator are run: compiled JavaScript (like `npm start`) or through tsx. */
export interface Runtime {
  /** "compiled" = `tsc` output in `.bench/dist`; "tsx" = the TypeScript sources via tsx. */
  kind: "compiled" | "tsx";
  /** Why, when it is not what was asked for, or what the build said. */
  note?: string;
  /** Where the compiled JavaScript is (default `.bench/dist`); a `--before-rev` build has its own. */
  dist?: string;
}

const TSX = ["--import", "tsx"];
const DIST = ".bench/dist";
const children = new Set<ChildProcess>();

/** Kills every child still running (SIGKILL); used on the way out. */
export function killAllChildren(): void {
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null && c.pid !== undefined) c.kill("SIGKILL");
  }
  children.clear();
}

function track(child: ChildProcess): ChildProcess {
  children.add(child);
  child.once("exit", () => children.delete(child));
  return child;
}

/** A port that was free a moment ago. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

function stopper(child: ChildProcess): (graceMs?: number) => Promise<void> {
  return (graceMs = 5000) =>
    new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      const kill = setTimeout(() => child.kill("SIGKILL"), graceMs);
      child.once("exit", () => {
        clearTimeout(kill);
        resolve();
      });
      child.kill("SIGTERM");
    });
}

/**
 * Compiles src/ to `.bench/dist` with the project's tsc (the gateway is
 * measured as it is deployed: `npm start` runs compiled JavaScript; tsx
 * alone adds about 40 MB of RSS). Falls back to tsx when nothing was
 * emitted. Type errors elsewhere in a tree being edited do not stop emit.
 */
export function prepareRuntime(wanted: Runtime["kind"]): Runtime {
  if (wanted === "tsx") return { kind: "tsx" };
  rmSync(DIST, { recursive: true, force: true });
  const tsc = join("node_modules", ".bin", "tsc");
  const r = spawnSync(tsc, ["-p", "tsconfig.build.json", "--outDir", DIST, "--sourceMap", "false"], {
    encoding: "utf8",
    timeout: 120_000,
  });
  const emitted = existsSync(join(DIST, "main.js")) && existsSync(join(DIST, "simulator", "main.js"));
  if (!emitted) {
    return {
      kind: "tsx",
      note: `tsc emitted nothing (exit ${r.status ?? r.signal}); ran the sources through tsx instead`,
    };
  }
  if (r.status !== 0) {
    const first = (r.stdout + r.stderr).split("\n").find((l) => l.includes("error")) ?? "";
    return {
      kind: "compiled",
      note: `tsc reported type errors (first: ${first.trim().slice(0, 160)}); its output was used anyway`,
    };
  }
  return { kind: "compiled" };
}

/** Where an earlier commit's sources are unpacked and compiled (`--before-rev`). */
const BEFORE_SRC = ".bench/before-src";
const BEFORE_DIST = ".bench/before-dist";

/**
 * Builds the gateway of another commit (`--before-rev`) beside this one, so one run can measure
 * before and after on the same machine minutes apart instead of in two runs an unknown load apart.
 * Its `src/` and tsconfig files are taken from git (`git archive`) into `.bench/before-src` (inside
 * the project, so its imports resolve to this checkout's node_modules: that commit must not need a
 * package this checkout lacks) and compiled with this checkout's tsc into `.bench/before-dist`.
 * Throws when the commit is unknown or nothing was emitted.
 */
export function prepareBefore(rev: string): Runtime {
  const commit = spawnSync("git", ["rev-parse", "--verify", "--quiet", `${rev}^{commit}`], { encoding: "utf8" });
  if (commit.status !== 0) throw new Error(`--before-rev ${rev}: not a commit of this repository`);
  const sha = commit.stdout.trim();
  rmSync(BEFORE_SRC, { recursive: true, force: true });
  rmSync(BEFORE_DIST, { recursive: true, force: true });
  mkdirSync(BEFORE_SRC, { recursive: true });
  const archive = spawnSync(
    "sh",
    ["-c", `git archive ${sha} src tsconfig.json tsconfig.build.json | tar -x -C ${BEFORE_SRC}`],
    { encoding: "utf8" },
  );
  if (archive.status !== 0) throw new Error(`--before-rev ${rev}: git archive failed: ${archive.stderr.trim()}`);
  const tsc = join("node_modules", ".bin", "tsc");
  spawnSync(tsc, ["-p", join(BEFORE_SRC, "tsconfig.build.json"), "--outDir", BEFORE_DIST, "--sourceMap", "false"], {
    encoding: "utf8",
    timeout: 120_000,
  });
  if (!existsSync(join(BEFORE_DIST, "main.js")))
    throw new Error(`--before-rev ${rev}: tsc emitted no main.js for that commit`);
  return { kind: "compiled", dist: BEFORE_DIST, note: `"before" gateway: commit ${sha.slice(0, 10)} (${rev})` };
}

function entry(runtime: Runtime, src: string, extraNodeArgs: readonly string[] = []): string[] {
  if (runtime.kind === "compiled")
    return [...extraNodeArgs, join(runtime.dist ?? DIST, src.replace(/^src\//, "").replace(/\.ts$/, ".js"))];
  return [...extraNodeArgs, ...TSX, src];
}

/** Spawns `node args` and waits for "listening on <url>" on its stdout. */
async function startListening(what: string, args: readonly string[]): Promise<Started> {
  const child = track(spawn(process.execPath, args, { stdio: ["ignore", "pipe", "inherit"] }));
  const url = await new Promise<string>((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error(`${what} did not start within 30 s: ${out}`)), 30_000);
    const onData = (d: Buffer): void => {
      out += d.toString();
      const m = /listening on (http:\/\/[\d.]+:\d+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        child.stdout!.off("data", onData);
        child.off("exit", onExit);
        resolve(m[1]!);
      }
    };
    const onExit = (code: number | null): void => {
      clearTimeout(timer);
      reject(new Error(`${what} exited with ${code}: ${out}`));
    };
    child.stdout!.on("data", onData);
    child.once("exit", onExit);
  });
  child.stdout!.resume();
  return { url, pid: child.pid!, child, stop: stopper(child) };
}

/** Starts the Ollama simulator as its own process. */
export async function startSimulatorProcess(runtime: Runtime, args: readonly string[]): Promise<Started> {
  const port = await freePort();
  return startListening("simulator", [...entry(runtime, "src/simulator/main.ts"), "--port", String(port), ...args]);
}

/** Starts bench/null-server.ts (the gRPC stack without the gateway) as its own process. */
export function startNullServerProcess(): Promise<Started> {
  return startListening("null gRPC server", [...TSX, "bench/null-server.ts", "0"]);
}

/** Starts the gateway as its own process (output to `logFile`) and waits until it is SERVING. */
export async function startGatewayProcess(
  runtime: Runtime,
  env: Record<string, string>,
  logFile: string,
  extraNodeArgs: readonly string[] = [],
): Promise<Started> {
  const port = await freePort();
  const fd = openSync(logFile, "a");
  const child = track(
    spawn(process.execPath, entry(runtime, "src/main.ts", extraNodeArgs), {
      stdio: ["ignore", fd, fd],
      env: { ...process.env, HOST: "127.0.0.1", PORT: String(port), ...env },
    }),
  );
  closeSync(fd);
  const started: Started = { url: `http://127.0.0.1:${port}`, pid: child.pid!, child, stop: stopper(child) };
  const session = new Http2SessionManager(started.url);
  const health = createClient(Health, createGrpcTransport({ baseUrl: started.url, sessionManager: session }));
  try {
    const until = Date.now() + 30_000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`gateway exited with ${child.exitCode}; see ${logFile}`);
      try {
        const r = await health.check({ service: "" }, { timeoutMs: 500 });
        if (r.status === HealthCheckResponse_ServingStatus.SERVING) break;
      } catch {
        // not listening yet
      }
      if (Date.now() > until) throw new Error(`gateway did not become SERVING within 30 s; see ${logFile}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  } catch (e) {
    await started.stop(1000);
    throw e;
  } finally {
    // Do not leave the health connection open: it would count in the gateway's descriptors.
    session.abort();
  }
  return started;
}

/**
 * A load-generator process (`script`, run through tsx) that runs jobs one after another over IPC:
 * bench/load-generator.ts for `npm run bench`, bench/fleet-load.ts for the fleet benchmark.
 * Tracked, so `killAllChildren` ends it too.
 */
export class LoadProcess<Job extends { label: string }, Result> {
  private readonly child: ChildProcess;
  private readonly ready: Promise<void>;
  busy = false;

  constructor(script: string) {
    this.child = track(spawn(process.execPath, [...TSX, script], { stdio: ["ignore", "inherit", "inherit", "ipc"] }));
    this.ready = this.next(30_000, "start").then((m) => {
      if (m.type !== "ready") throw new Error(`load generator: expected "ready", got ${m.type}`);
    });
    // Seen by run(); this handler only keeps an early failure from being "unhandled".
    void this.ready.catch(() => undefined);
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Resolves when the process can take a job. */
  whenReady(): Promise<void> {
    return this.ready;
  }

  /** Runs the job; rejects when it fails or gives no answer within `timeoutMs`. */
  async run(job: Job, timeoutMs: number): Promise<Result> {
    await this.ready;
    const reply = this.next(timeoutMs, job.label);
    this.child.send({ type: "run", job });
    const msg = await reply;
    if (msg.type === "result") return msg.result;
    throw new Error(msg.type === "failed" ? msg.message : `unexpected message from the load generator: ${msg.type}`);
  }

  kill(): void {
    if (this.alive) this.child.kill("SIGKILL");
  }

  private next(timeoutMs: number, what: string): Promise<LoadReply<Result>> {
    return nextChildMessage<LoadReply<Result>>(this.child, timeoutMs, `load generator (${what})`, () => this.kill());
  }
}

/**
 * The next IPC message from a child process, as `T`; rejects when the child exits first or
 * stays silent for `timeoutMs` (then `kill` is called), so a stuck load generator cannot
 * hang a benchmark run.
 */
export function nextChildMessage<T>(
  child: ChildProcess,
  timeoutMs: number,
  what: string,
  kill: () => void,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const done = (): void => {
      clearTimeout(timer);
      child.off("message", onMessage);
      child.off("exit", onExit);
    };
    const onMessage = (m: unknown): void => {
      done();
      resolve(m as T);
    };
    const onExit = (code: number | null): void => {
      done();
      reject(new Error(`${what} exited with ${code}`));
    };
    const timer = setTimeout(() => {
      done();
      kill();
      reject(new Error(`${what} gave no answer within ${Math.round(timeoutMs / 1000)} s; killed it`));
    }, timeoutMs);
    child.on("message", onMessage);
    child.once("exit", onExit);
  });
}
/**
 * Load-generator processes, kept between jobs (each costs about a second to
 * start). A job split over n processes gets n idle ones.
 */
/** The load generator of `npm run bench`. */
class LoadGenerator extends LoadProcess<LoadJob, LoadResult> {
  constructor() {
    super("bench/load-generator.ts");
  }
}

export class LoadGeneratorPool {
  private readonly all: LoadGenerator[] = [];

  /** Makes sure `n` idle processes are started and ready (so starting one is not timed as part of a job). */
  async prepare(n: number): Promise<void> {
    while (this.all.filter((g) => !g.busy && g.alive).length < n) this.all.push(new LoadGenerator());
    await Promise.all(this.all.filter((g) => !g.busy && g.alive).map((g) => g.whenReady()));
  }

  /** Runs the jobs at the same time, each in its own process; results in job order. */
  async run(jobs: readonly LoadJob[]): Promise<{ results: LoadResult[]; pids: number[] }> {
    const gens: LoadGenerator[] = [];
    for (let i = 0; i < jobs.length; i++) {
      let g = this.all.find((x) => !x.busy && x.alive && !gens.includes(x));
      if (!g) {
        g = new LoadGenerator();
        this.all.push(g);
      }
      g.busy = true;
      gens.push(g);
    }
    try {
      // Start the jobs together: a process still starting (about a second)
      // would otherwise begin its share after the others finished theirs.
      await Promise.all(gens.map((g) => g.whenReady()));
      const results = await Promise.all(
        jobs.map((job, i) => gens[i]!.run(job, job.durationMs + job.callTimeoutMs + 30_000)),
      );
      return { results, pids: gens.map((g) => g.pid) };
    } finally {
      for (const g of gens) g.busy = false;
    }
  }

  /** Stops every load generator. */
  close(): void {
    for (const g of this.all) g.kill();
    this.all.length = 0;
  }
}

/** GET or POST a simulator admin route (/_sim/...). */
export async function simAdmin(simUrl: string, method: "GET" | "POST", path: string): Promise<unknown> {
  const res = await fetch(simUrl + path, { method, signal: AbortSignal.timeout(5000) });
  if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status}`);
  return (await res.json()) as unknown;
}
