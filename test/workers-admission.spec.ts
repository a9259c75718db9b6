import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { startSimulator } from "../src/simulator/simulator.js";
import { IPC_SLOTS_LOCAL_MSG } from "../src/routing/ipc-slot-gate.js";
import {
  recentLog,
  spawnGateway,
  statusOnNewConnection,
  withGatewayLog,
  workerPids,
} from "./helpers/gateway-process.js";
import { eventually as eventuallyWithin } from "./helpers/hostile-clients.js";
import type { GatewayProcess } from "./helpers/gateway-process.js";

const MODEL = "llama3.2:latest";

/**
 * Polls until `cond` holds; generous, the machine may be loaded. A failure says how many workers fell
 * back to counting slots alone and what the gateway logged last.
 */
const eventually = (
  g: GatewayProcess,
  cond: () => boolean | Promise<boolean>,
  what: string,
  ms = 30_000,
): Promise<void> =>
  eventuallyWithin(cond, what, ms, () => `(fallbacks: ${fallbacks(g)}; gateway log tail:\n${recentLog(g)})`);

/** How many times a worker fell back to counting slots alone (the primary did not answer in time). */
function fallbacks(g: GatewayProcess): number {
  return g.lines().filter((l) => l["msg"] === IPC_SLOTS_LOCAL_MSG).length;
}

/** A transport on its own HTTP/2 connection, so that node:cluster hands calls to both workers in turn. */
const transport = (url: string) => createGrpcTransport({ baseUrl: url });

/**
 * Each worker's queue depth for MODEL, keyed by the worker's start time (GetStatus `started_at`
 * tells the workers apart); asks on fresh connections until both workers answered.
 */
async function depthsPerWorker(url: string): Promise<Map<string, number>> {
  const seen = new Map<string, number>();
  for (let i = 0; i < 20 && seen.size < 2; i++) {
    const s = await statusOnNewConnection(url);
    const id = `${s.startedAt?.seconds}.${s.startedAt?.nanos}`;
    if (!seen.has(id)) seen.set(id, s.queues.find((q) => q.model === MODEL)?.depth ?? 0);
  }
  return seen;
}

const total = (m: Map<string, number>): number => [...m.values()].reduce((a, b) => a + b, 0);

/**
 * Starts calls with `start` one at a time, each once the previous one waits, until at least `min`
 * wait and both workers have some waiting (node:cluster picks the worker of each connection).
 */
async function waitAtBoth<T>(g: GatewayProcess, min: number, start: (i: number) => T): Promise<T[]> {
  const url = g.url;
  const calls: T[] = [];
  for (let i = 0; i < 30; i++) {
    calls.push(start(i));
    await eventually(g, async () => total(await depthsPerWorker(url)) === calls.length, `call ${i} to wait`);
    const d = await depthsPerWorker(url);
    if (calls.length >= min && d.size === 2 && [...d.values()].every((n) => n > 0)) return calls;
  }
  throw new Error("node:cluster never gave both workers a waiting call");
}

/** Starts a Generate on its own connection; resolves with when its first message came (ms) once it ended. */
function generate(url: string, prompt: string, opts: { priority?: number; numPredict?: number; signal?: AbortSignal }) {
  let firstAt: number | undefined;
  const done = (async () => {
    const headers = opts.priority !== undefined ? { "x-priority": String(opts.priority) } : undefined;
    for await (const _m of createClient(InferenceService, transport(url)).generate(
      { model: "llama3.2", prompt, options: { numPredict: opts.numPredict ?? 3 } },
      { timeoutMs: 90_000, headers, signal: opts.signal },
    ))
      firstAt ??= performance.now();
    return firstAt;
  })();
  return { done, firstAt: () => firstAt };
}

/** A call holding the node's only slot until `release()` cancels it. */
async function holdSlot(g: GatewayProcess, sim: { stats: { inFlight: Record<string, number> } }) {
  const ac = new AbortController();
  const held = generate(g.url, "hold", { numPredict: 100_000, signal: ac.signal }).done.catch(() => undefined);
  await eventually(g, () => (sim.stats.inFlight[MODEL] ?? 0) === 1, "the long call to hold the slot");
  return {
    async release() {
      ac.abort();
      await held;
    },
  };
}

// One simulated node accepting 8 at once (its peak shows what the gateway sent), which the gateway
// is told has 1 slot: every other request waits in the gateway, in one order across the workers.
describe("one admission order across the workers (WORKERS=2, no Redis)", { timeout: 120_000 }, () => {
  it("hands the freed slot to a high-priority request at one worker before the low-priority ones waiting at both", async () => {
    const sim = await startSimulator({ tokenMs: 10, numParallel: 8 });
    const g = await spawnGateway({ OLLAMA_URL: sim.url, OLLAMA_NUM_PARALLEL: "1", WORKERS: "2" });
    try {
      await eventually(g, () => workerPids(g).length === 2, "both workers");
      const status = await statusOnNewConnection(g.url);
      assert.equal(status.slotsShared, true, "GetStatus says the slots are shared (through the primary)");
      const holder = await holdSlot(g, sim);
      const lows = await waitAtBoth(g, 6, (i) => generate(g.url, `low${i}`, { priority: 0 }));
      const high = generate(g.url, "high", { priority: 10 });
      await eventually(
        g,
        async () => total(await depthsPerWorker(g.url)) === lows.length + 1,
        "the high-priority call to wait",
      );
      await holder.release();
      const highFirst = await high.done;
      const lowFirsts = await Promise.all(lows.map((l) => l.done));
      assert.ok(highFirst !== undefined && lowFirsts.every((t) => t !== undefined));
      assert.ok(
        lowFirsts.every((t) => t! > highFirst),
        "the high-priority call was answered before every low-priority one",
      );
      assert.equal(
        sim.stats.maxInFlight[MODEL],
        1,
        `the node never had two requests at once (workers that fell back to counting alone: ${fallbacks(g)})`,
      );
    } catch (e) {
      throw withGatewayLog(e, g);
    } finally {
      await g.stop();
      await sim.close();
    }
  });

  it("gives back a slot handed to a waiter whose call was cancelled, so the next call is served at once", async () => {
    const sim = await startSimulator({ tokenMs: 10, numParallel: 8 });
    const g = await spawnGateway({ OLLAMA_URL: sim.url, OLLAMA_NUM_PARALLEL: "1", WORKERS: "2" });
    try {
      await eventually(g, () => workerPids(g).length === 2, "both workers");
      const holder = await holdSlot(g, sim);
      // One waiting call at each worker, both cancelled: their waiters stay in the primary.
      const cancels: AbortController[] = [];
      const waiting = await waitAtBoth(g, 2, (i) => {
        const ac = new AbortController();
        cancels.push(ac);
        return generate(g.url, `gone${i}`, { signal: ac.signal }).done.then(
          () => "served",
          () => "cancelled",
        );
      });
      for (const ac of cancels) ac.abort();
      assert.ok((await Promise.all(waiting)).every((o) => o === "cancelled"));
      await holder.release();
      // A leaked slot would keep these waiting until their deadline.
      const after = await Promise.all([0, 1, 2, 3].map((i) => generate(g.url, `after${i}`, {}).done));
      assert.ok(
        after.every((t) => t !== undefined),
        "every call after the cancelled ones is served",
      );
      assert.equal(sim.stats.maxInFlight[MODEL], 1);
    } catch (e) {
      throw withGatewayLog(e, g);
    } finally {
      await g.stop();
      await sim.close();
    }
  });

  it("drops the waiters of a worker killed while they wait, and serves the other worker's calls", async () => {
    const sim = await startSimulator({ tokenMs: 10, numParallel: 8 });
    const g = await spawnGateway({ OLLAMA_URL: sim.url, OLLAMA_NUM_PARALLEL: "1", WORKERS: "2" });
    try {
      await eventually(g, () => workerPids(g).length === 2, "both workers");
      const [victim] = workerPids(g);
      const holder = await holdSlot(g, sim);
      const calls = await waitAtBoth(g, 4, (i) =>
        generate(g.url, `w${i}`, {}).done.then(
          () => "served",
          () => "failed",
        ),
      );
      process.kill(victim!, "SIGKILL");
      await eventually(g, () => workerPids(g).length === 3, "the primary to restart the killed worker");
      await holder.release();
      const outcomes = await Promise.all(calls);
      assert.ok(outcomes.includes("served"), "the surviving worker's waiting calls are served");
      // Neither a dead waiter nor a slot it was handed may hold the node.
      const after = await Promise.all([0, 1, 2].map((i) => generate(g.url, `after${i}`, {}).done));
      assert.ok(after.every((t) => t !== undefined));
      // (No peak check here: when the killed worker held the slot, the primary frees it at the
      // exit, possibly before the node noticed the dropped request.)
    } catch (e) {
      throw withGatewayLog(e, g);
    } finally {
      await g.stop();
      await sim.close();
    }
  });
});
