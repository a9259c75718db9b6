// Shared state of one benchmark run: options, the processes started so far
// (simulators, gateways, load generators) and notes for the report.
import { join } from "node:path";
import type { BenchOptions } from "./cli.js";
import { LoadGeneratorPool, startGatewayProcess, startNullServerProcess, startSimulatorProcess } from "./processes.js";
import type { Runtime, Started } from "./processes.js";

/** Simulator flags of the main simulator: instant loads, 64 slots per model. */
export const MAIN_SIM_PARALLEL = 64;

/** A gateway the run started, with the environment it was given (beyond the inherited one). */
export interface GatewayInfo {
  /** Name in the report and of its log file. */
  name: string;
  /** The environment variables the bench set. */
  env: Record<string, string>;
  /** Node options it was started with. */
  nodeOptions: string[];
  /** Its log file. */
  log: string;
}

/** A second gateway to compare the relay gateway with (`--before-rev`, `--compare-env`). */
export interface Comparison {
  /** The process. */
  gw: Started;
  /** Which side of the comparison it is; the relay gateway is the other. */
  role: "before" | "after";
  /** What "before" and "after" are, for the report. */
  before: string;
  after: string;
}

/** Everything scenarios share. */
export class BenchContext {
  /** Load-generator processes. */
  readonly pool = new LoadGeneratorPool();
  /** Remarks for the report (bottlenecks, fallbacks, caveats). */
  readonly notes: string[] = [];
  /** Every gateway started, for the report. */
  readonly gateways: GatewayInfo[] = [];
  private readonly sims: Started[] = [];
  private readonly gws: Started[] = [];
  private mainSimP: Promise<Started> | undefined;
  private relayP: Promise<Started> | undefined;
  private saltCounter = 0;

  constructor(
    readonly opts: BenchOptions,
    readonly runtime: Runtime,
    readonly logDir: string,
    readonly stamp: string,
    /** The `--before-rev` build, if any. */
    readonly before?: Runtime,
  ) {}

  /** A string no other job of this run uses (keeps embedding texts distinct across jobs). */
  salt(): string {
    return `${this.stamp.slice(-6)}${(++this.saltCounter).toString(36)}`;
  }

  /** Starts a simulator; it is stopped by `close`. */
  async startSimulator(args: readonly string[]): Promise<Started> {
    const sim = await startSimulatorProcess(this.runtime, args);
    this.sims.push(sim);
    return sim;
  }

  /** The simulator most scenarios use: no load time, no token delay, 64 slots per model. */
  mainSim(): Promise<Started> {
    this.mainSimP ??= this.startSimulator([
      "--load-ms",
      "0",
      "--num-parallel",
      String(MAIN_SIM_PARALLEL),
      "--max-loaded-models",
      "4",
    ]);
    return this.mainSimP;
  }

  /**
   * Starts a gateway in front of `sim` with the common environment plus
   * `extra`; it is stopped by `stop` or `close`.
   */
  async startGateway(
    name: string,
    sim: Started,
    parallel: number,
    extra: Record<string, string>,
    runtime: Runtime = this.runtime,
  ): Promise<Started> {
    const env: Record<string, string> = {
      OLLAMA_URL: sim.url,
      LOG_LEVEL: this.opts.logLevel,
      OLLAMA_NUM_PARALLEL: String(parallel),
      OLLAMA_MAX_LOADED_MODELS: "4",
      SHUTDOWN_GRACE_MS: "2000",
      ...(this.opts.workers !== undefined ? { WORKERS: String(this.opts.workers) } : {}),
      ...extra,
      ...this.opts.gatewayEnv,
    };
    const log = join(this.logDir, `gateway-${name}.log`);
    const prof = this.opts.cpuProfDir;
    const nodeArgs = [
      ...this.opts.gatewayNodeOptions,
      ...(prof
        ? ["--cpu-prof", "--cpu-prof-dir", prof, "--cpu-prof-name", `gateway-${name}-${this.stamp}.cpuprofile`]
        : []),
    ];
    const gw = await startGatewayProcess(runtime, env, log, nodeArgs);
    this.gateways.push({ name, env: { ...env, OLLAMA_URL: "<simulator>" }, nodeOptions: nodeArgs, log });
    this.gws.push(gw);
    return gw;
  }

  /**
   * The plain relay gateway used by (a), (b) and (d, batching off): embedding
   * cache and micro-batching off, so every request goes upstream alone.
   */
  async relayGateway(): Promise<Started> {
    this.relayP ??= this.mainSim().then((sim) =>
      this.startGateway("relay", sim, MAIN_SIM_PARALLEL, { EMBED_CACHE: "off", EMBED_BATCH_WINDOW_MS: "0" }),
    );
    return this.relayP;
  }

  /**
   * The other relay gateways scenario (a) measures beside `relayGateway` (none without the
   * options): the one built from `--before-rev` (it is "before", this checkout "after"), or one of
   * this checkout per `--compare-env` (each "after", the plain one "before"). Same settings otherwise.
   */
  async comparisonGateways(): Promise<Comparison[]> {
    const sim = await this.mainSim();
    const relayEnv = { EMBED_CACHE: "off", EMBED_BATCH_WINDOW_MS: "0" };
    if (this.before !== undefined) {
      const gw = await this.startGateway("relay-before", sim, MAIN_SIM_PARALLEL, relayEnv, this.before);
      return [{ gw, role: "before", before: `commit ${this.opts.beforeRev}`, after: "this checkout" }];
    }
    const out: Comparison[] = [];
    for (const [i, extra] of this.opts.compareEnv.entries()) {
      const gw = await this.startGateway(`relay-compare-${i + 1}`, sim, MAIN_SIM_PARALLEL, { ...relayEnv, ...extra });
      const env = Object.entries(extra)
        .map(([k, v]) => `${k}=${v}`)
        .join(" ");
      out.push({ gw, role: "after", before: "this checkout", after: `this checkout with ${env}` });
    }
    return out;
  }

  /** Starts a null gRPC server (bench/null-server.ts); it is stopped by `stop` or `close`. */
  async nullServer(): Promise<Started> {
    const p = await startNullServerProcess();
    this.gws.push(p);
    return p;
  }

  /** Stops one process started through this context (so a scenario can free memory and CPU early). */
  async stop(p: Started): Promise<void> {
    for (const list of [this.sims, this.gws]) {
      const i = list.indexOf(p);
      if (i >= 0) list.splice(i, 1);
    }
    if (p === (await this.relayP?.catch(() => undefined))) this.relayP = undefined;
    await p.stop();
  }

  /** Stops everything this run started (gateways first, so they can write --cpu-prof output). */
  async close(): Promise<void> {
    this.pool.close();
    await Promise.all(this.gws.splice(0).map((p) => p.stop()));
    await Promise.all(this.sims.splice(0).map((p) => p.stop()));
    this.mainSimP = undefined;
    this.relayP = undefined;
  }
}
