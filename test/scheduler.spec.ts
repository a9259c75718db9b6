import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { setImmediate as nextTurn } from "node:timers/promises";
import { Code, ConnectError } from "@connectrpc/connect";
import type { NodeConfig } from "../src/config/config.js";
import { createAffinityTable } from "../src/routing/affinity.js";
import type { FleetMetadata } from "../src/routing/fleet-metadata.js";
import { createFleetState } from "../src/routing/fleet-state.js";
import type { FleetState } from "../src/routing/fleet-state.js";
import { createScheduler, LOCAL_GATE, SLOT_GATE_FAILED_MSG, SLOTS_LOWERED_MSG } from "../src/routing/scheduler.js";
import type { Dispatch, DrainingNode, Scheduler, SlotGate } from "../src/routing/scheduler.js";
import type { OllamaRunning, OllamaTag } from "../src/upstream/ollama-metadata.js";
import type { NodeHealth } from "../src/upstream/node-health.js";
import type { OllamaNode } from "../src/upstream/ollama-node.js";

// The scheduler's mechanism (queues, gate calls, timers, hooks) over fake nodes: no HTTP, so every
// step is driven by the test — a gate call is answered when the test says so.

function stubNode(name: string): OllamaNode {
  const unused = (): never => {
    throw new Error(`${name}: the scheduler makes no upstream calls`);
  };
  return {
    name,
    url: `http://${name}.invalid`,
    stream: unused,
    open: unused,
    call: unused,
    close: () => Promise.resolve(),
  };
}

const allHealthy: NodeHealth = {
  isHealthy: () => true,
  state: () => "closed",
  anyHealthy: () => true,
  version: () => "0.12.6",
  reportSuccess: () => undefined,
  reportFailure: () => undefined,
  onChange: () => () => undefined,
  onLocalVerdict: () => () => undefined,
  applyRemote: () => undefined,
  probeAll: () => Promise.resolve(),
  start: () => undefined,
  stop: () => undefined,
};

/** Every node has every model installed, as a completion model; /api/ps answers from `ps` (default: nothing loaded). */
function metadataFor(
  nodes: readonly OllamaNode[],
  ps: (node: string, fresh: boolean) => OllamaRunning[] = () => [],
): FleetMetadata {
  const tag = (name: string): OllamaTag => ({
    name,
    digest: "0".repeat(64),
    size: 1,
    modifiedAt: "2025-01-01T00:00:00Z",
    details: {
      format: "gguf",
      family: "llama",
      families: ["llama"],
      parameterSize: "3B",
      quantizationLevel: "Q4_K_M",
      parentModel: "",
      contextLength: 4096,
      embeddingLength: 0,
    },
    capabilities: ["completion"],
  });
  const unused = (): Promise<never> => Promise.reject(new Error("not used by the scheduler"));
  return {
    locate: (model) =>
      Promise.resolve({
        located: nodes.map((node) => ({ node, tag: tag(model) })),
        names: new Set(nodes.map((n) => n.name)),
        unavailable: [],
      }),
    ps: (node, _signal, fresh = false) => Promise.resolve(ps(node.name, fresh)),
    tags: unused,
    show: unused,
    invalidate: () => Promise.resolve(),
  };
}

/** A slot lease that remembers being released. */
interface TestLease {
  released: boolean;
  release(): Promise<void>;
}

/** One gate call, answered by the test. */
interface GateCall {
  node: string;
  model: string;
  grant(): TestLease;
  refuse(): void;
  fail(error: Error): void;
}

/** A gate whose every answer the test gives; `next()` is the next call (already made or to come). */
function manualGate() {
  const arrived: GateCall[] = [];
  const takers: ((c: GateCall) => void)[] = [];
  const unanswered = new Map<string, number>();
  let mostAtOnce = 0;
  const gate: SlotGate = {
    tryAcquire(node, model) {
      let resolve: (lease: TestLease | undefined) => void = () => undefined;
      let reject: (error: Error) => void = () => undefined;
      const answer = new Promise<TestLease | undefined>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      const n = (unanswered.get(model) ?? 0) + 1;
      unanswered.set(model, n);
      mostAtOnce = Math.max(mostAtOnce, n);
      const answered = (): void => void unanswered.set(model, (unanswered.get(model) ?? 1) - 1);
      const call: GateCall = {
        node,
        model,
        grant() {
          const lease: TestLease = {
            released: false,
            release() {
              lease.released = true;
              return Promise.resolve();
            },
          };
          answered();
          resolve(lease);
          return lease;
        },
        refuse() {
          answered();
          resolve(undefined);
        },
        fail(error) {
          answered();
          reject(error);
        },
      };
      const taker = takers.shift();
      if (taker) taker(call);
      else arrived.push(call);
      return answer;
    },
  };
  return {
    gate,
    next: (): Promise<GateCall> => {
      const call = arrived.shift();
      return call ? Promise.resolve(call) : new Promise((resolve) => takers.push(resolve));
    },
    /** Calls made and not taken by `next()` yet. */
    waiting: () => arrived.length,
    /** The most calls for one model that were unanswered at the same time. */
    mostAtOnce: () => mostAtOnce,
  };
}

interface Harness {
  scheduler: Scheduler;
  fleet: FleetState;
  acquire(model: string, more?: { priority?: number; signal?: AbortSignal }): Promise<Dispatch>;
  /** Requests running on the gateway's books, all nodes and models. */
  inFlight(): number;
}

function harness(
  options: {
    nodes?: Partial<NodeConfig>[];
    gate?: SlotGate;
    maxWaitMs?: number;
    log?: { warn(obj: object, msg: string): void; info?(obj: object, msg: string): void };
    ps?: (node: string, fresh: boolean) => OllamaRunning[];
  } = {},
): Harness {
  const configs: NodeConfig[] = (options.nodes ?? [{}]).map((n, i) => ({
    name: `n${i}`,
    url: `http://n${i}.invalid`,
    parallel: 1,
    maxLoadedModels: 1,
    weight: 1,
    ...n,
  }));
  const nodes = configs.map((c) => stubNode(c.name));
  const fleet = createFleetState(nodes.map((node, i) => ({ node, config: configs[i]! })));
  const scheduler = createScheduler({
    fleet,
    metadata: metadataFor(nodes, options.ps),
    health: allHealthy,
    affinity: createAffinityTable(),
    gate: options.gate ?? LOCAL_GATE,
    admission: { maxQueuedPerModel: 100, maxQueuedTotal: 100, maxWaitMs: options.maxWaitMs ?? 0 },
    ...(options.log ? { log: options.log } : {}),
  });
  return {
    scheduler,
    fleet,
    acquire: (model, more = {}) =>
      scheduler.acquire({
        model,
        priority: more.priority ?? 0,
        signal: more.signal ?? new AbortController().signal,
        remainingMs: 60_000,
      }),
    inFlight: () => fleet.nodes.reduce((n, s) => n + [...s.models.values()].reduce((m, x) => m + x.inFlight, 0), 0),
  };
}

/** Lets every pending promise callback run (the fakes answer through microtasks only). */
const settle = (): Promise<void> => nextTurn().then(() => undefined);

/** A /api/ps entry: `gb` loaded, all on the GPU. */
function running(name: string, gb: number): OllamaRunning {
  return {
    name,
    digest: "0".repeat(64),
    size: gb * 1e9,
    sizeVram: gb * 1e9,
    expiresAt: "2099-01-01T00:00:00Z",
    contextLength: 4096,
    details: {
      format: "gguf",
      family: "llama",
      families: ["llama"],
      parameterSize: "3B",
      quantizationLevel: "Q4_K_M",
      parentModel: "",
      contextLength: 4096,
      embeddingLength: 0,
    },
  };
}

/** /api/ps of fake nodes, set by the test; resolves `read(node)` waiters on each fresh read (the load watcher's). */
function fakePs() {
  const lists = new Map<string, OllamaRunning[]>();
  const waiters: { node: string; resolve: () => void }[] = [];
  return {
    ps: (node: string, fresh: boolean): OllamaRunning[] => {
      if (fresh) {
        for (const w of waiters.filter((x) => x.node === node)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve();
        }
      }
      return lists.get(node) ?? [];
    },
    set: (node: string, list: OllamaRunning[]): void => void lists.set(node, list),
    /** Resolves at the next fresh read of `node`'s /api/ps. */
    read: (node: string): Promise<void> => new Promise((resolve) => waiters.push({ node, resolve })),
  };
}

describe("the scheduler's placement mechanism", { timeout: 10_000 }, () => {
  it("asks the gate for one queue head per model at a time, and places the next head once it is answered", async () => {
    const g = manualGate();
    const h = harness({ nodes: [{ parallel: 3 }], gate: g.gate });
    const first = h.acquire("llama");
    (await g.next()).refuse(); // another replica holds the slots: the request joins the queue ...
    const retry = await g.next(); // ... and is offered the slot again as the queue head
    const rest = [h.acquire("llama"), h.acquire("llama")];
    await settle();
    assert.deepEqual(h.scheduler.queues(), [{ model: "llama:latest", depth: 3 }]);
    assert.equal(g.waiting(), 0, "the heads behind it are not offered a slot while its gate call runs");
    retry.grant();
    await first;
    (await g.next()).grant();
    (await g.next()).grant();
    await Promise.all(rest);
    assert.equal(g.mostAtOnce(), 1, "never two gate calls of one model at once");
    assert.equal(h.inFlight(), 3);
    assert.deepEqual(h.scheduler.queues(), []);
  });

  it("admits another model while one model's gate call hangs", async () => {
    const g = manualGate();
    const h = harness({ nodes: [{}, {}], gate: g.gate });
    const llama = h.acquire("llama");
    (await g.next()).grant();
    const qwen = h.acquire("qwen");
    (await g.next()).grant();
    const [l1, q1] = await Promise.all([llama, qwen]);
    assert.notEqual(l1.node.name, q1.node.name);
    const l2 = h.acquire("llama");
    const q2 = h.acquire("qwen");
    await settle();
    assert.deepEqual(
      h.scheduler.queues().map((q) => q.depth),
      [1, 1],
    );
    l1.release();
    const hanging = await g.next();
    assert.equal(hanging.model, "llama:latest");
    q1.release();
    const other = await g.next();
    assert.equal(other.model, "qwen:latest", "qwen's head is offered its slot while llama's gate call hangs");
    other.grant();
    assert.equal((await q2).node.name, q1.node.name);
    hanging.grant();
    assert.equal((await l2).node.name, l1.node.name);
  });

  it("logs a throwing gate once per streak, with node, model and message but no credentials, and retries with growing pauses until it answers", async () => {
    const g = manualGate();
    const lines: { obj: Record<string, unknown>; msg: string }[] = [];
    const h = harness({ gate: g.gate, log: { warn: (obj, msg) => lines.push({ obj: { ...obj }, msg }) } });
    const boom = new Error("connect to redis://gw:s3cret@10.0.0.9:6379 refused");
    const request = h.acquire("llama");
    const at: number[] = [];
    for (let i = 0; i < 4; i++) {
      const call = await g.next();
      at.push(performance.now());
      if (i < 3) call.fail(boom);
      else call.grant();
    }
    const d = await request;
    assert.equal(d.node.name, "n0");
    assert.equal(lines.length, 1, JSON.stringify(lines));
    assert.equal(lines[0]!.msg, SLOT_GATE_FAILED_MSG);
    assert.equal(lines[0]!.obj["node"], "n0");
    assert.equal(lines[0]!.obj["model"], "llama:latest");
    assert.match(String(lines[0]!.obj["err"]), /refused/);
    assert.doesNotMatch(JSON.stringify(lines), /s3cret/);
    // Backoff: at least 25, 50, 100 ms between attempts (lower bounds only).
    const gaps = at.slice(1).map((t, i) => t - at[i]!);
    for (const [i, gap] of gaps.entries()) assert.ok(gap >= 25 * 2 ** i - 2, `pause ${i + 1}: ${gap.toFixed(1)} ms`);
    assert.equal(h.inFlight(), 1, "the failed attempts gave their reservations back");

    d.release();
    const again = h.acquire("llama");
    (await g.next()).fail(boom);
    (await g.next()).grant();
    await again;
    assert.equal(lines.length, 2, "a new streak is logged again");
  });

  it("serves the higher priority first when the slot frees up", async () => {
    const h = harness();
    const holder = await h.acquire("llama");
    const order: string[] = [];
    const tracked = async (name: string, priority: number): Promise<Dispatch> => {
      const d = await h.acquire("llama", { priority });
      order.push(name);
      return d;
    };
    const low = tracked("low", 0);
    const high = tracked("high", 5);
    await settle();
    assert.deepEqual(h.scheduler.queues(), [{ model: "llama:latest", depth: 2 }]);
    holder.release();
    (await high).release();
    await low;
    assert.deepEqual(order, ["high", "low"]);
  });

  it("reports a drain through onDrainChange when it starts and when the model takes the node", async () => {
    const h = harness();
    const busy = await h.acquire("qwen");
    const seen: DrainingNode[][] = [];
    const started = new Promise<void>((resolve) =>
      h.scheduler.onDrainChange((list) => {
        seen.push(list);
        if (list.length > 0) resolve();
      }),
    );
    const starving = h.acquire("llava");
    await started;
    assert.deepEqual(h.scheduler.draining(), [{ node: "n0", model: "llava:latest" }]);
    busy.release();
    assert.equal((await starving).node.name, "n0");
    assert.deepEqual(seen, [[{ node: "n0", model: "llava:latest" }], []]);
  });

  it("passes the head's rank to the gate, and places a refused head at once when the gate says a slot was handed over", async () => {
    const ranks: unknown[] = [];
    let refuse = true;
    let wake: (node: string, model: string) => void = () => undefined;
    const gate: SlotGate = {
      tryAcquire(_node, _model, _limit, rank) {
        ranks.push(rank && { priority: rank.priority, deadline: rank.deadlineAt! - rank.enqueuedAt });
        return Promise.resolve(refuse ? undefined : { release: () => Promise.resolve() });
      },
      onFree(listener) {
        wake = listener;
        return () => undefined;
      },
    };
    const h = harness({ gate });
    let placed = false;
    const call = h.acquire("llama", { priority: 3 }).then((d) => {
      placed = true;
      return d;
    });
    try {
      await settle();
      assert.ok(ranks.length > 0);
      for (const r of ranks) assert.deepEqual(r, { priority: 3, deadline: 60_000 }, "with its priority and deadline");
      assert.equal(placed, false, "refused");
      refuse = false;
      const asked = ranks.length;
      wake("n0", "llama:latest");
      await settle();
      assert.equal(placed, true, "placed on the wake-up, not on a retry timer");
      assert.equal(ranks.length, asked + 1);
      (await call).release();
    } finally {
      h.scheduler.stop();
    }
  });

  it("gives the slot back when a request is cancelled while its gate call runs", async () => {
    const g = manualGate();
    const h = harness({ gate: g.gate });
    const holder = h.acquire("llama");
    (await g.next()).grant();
    const controller = new AbortController();
    const cancelled = h.acquire("llama", { signal: controller.signal });
    await settle();
    (await holder).release();
    const call = await g.next();
    controller.abort(new Error("client went away"));
    await assert.rejects(cancelled, /client went away/);
    const lease = call.grant();
    await settle();
    assert.equal(lease.released, true);
    assert.equal(h.inFlight(), 0);
    const next = h.acquire("llama");
    (await g.next()).grant();
    assert.equal((await next).node.name, "n0");
  });

  it("gives the slot back when a request leaves the queue at the wait budget while its gate call runs", async (t) => {
    const g = manualGate();
    const h = harness({ gate: g.gate, maxWaitMs: 500 });
    // The budget timer does not hold the process open (a real request's connection does).
    const keepAlive = setInterval(() => undefined, 1_000);
    t.after(() => clearInterval(keepAlive));
    const holder = h.acquire("llama");
    (await g.next()).grant();
    let left = false;
    const late = h.acquire("llama").finally(() => {
      left = true;
    });
    await settle();
    (await holder).release();
    const call = await g.next();
    assert.equal(left, false, "the gate was asked before the budget ran out");
    const error = await late.then(
      () => assert.fail("should have left the queue"),
      (e: unknown) => ConnectError.from(e),
    );
    assert.equal(error.code, Code.ResourceExhausted);
    const lease = call.grant();
    await settle();
    assert.equal(lease.released, true, "the lease taken for it was released");
    assert.equal(h.inFlight(), 0, "and its reservation given back");
  });

  it("re-reads /api/ps after a load, and meanwhile holds requests for a model the load may push out instead of loading it elsewhere", async (t) => {
    // The load watcher's timer does not hold the process open (a real request's connection does).
    const keepAlive = setInterval(() => undefined, 1_000);
    t.after(() => clearInterval(keepAlive));
    const ps = fakePs();
    const h = harness({ nodes: [{ maxLoadedModels: 3 }, { maxLoadedModels: 3 }], ps: ps.ps });
    ps.set("n0", [running("llama:latest", 3)]);
    ps.set("n1", [running("mini:latest", 1)]);
    const llama = await h.acquire("llama");
    const mini = await h.acquire("mini");
    assert.deepEqual([llama.node.name, mini.node.name], ["n0", "n1"]);
    llama.release();
    // n0 is the least busy: qwen is loaded there; whether llama survives, only /api/ps can say.
    const read = ps.read("n0");
    const qwen = await h.acquire("qwen");
    assert.equal(qwen.node.name, "n0");
    await read;
    const again = h.acquire("llama");
    await settle();
    assert.deepEqual(h.scheduler.queues(), [{ model: "llama:latest", depth: 1 }], "it waits for the picture");
    ps.set("n0", [running("qwen:latest", 6.5), running("llama:latest", 3)]);
    assert.equal((await again).node.name, "n0", "and is served where it stayed, not loaded a second time on n1");
    const n0 = h.fleet.get("n0")!;
    assert.equal(n0.loading, undefined);
    assert.equal(n0.capacity.fitsBytes, 9.5e9, "the two were seen loaded together");
  });

  it("learns from /api/ps what a load evicted, and sends the evicted model's next request elsewhere", async (t) => {
    // The load watcher's timer does not hold the process open (a real request's connection does).
    const keepAlive = setInterval(() => undefined, 1_000);
    t.after(() => clearInterval(keepAlive));
    const ps = fakePs();
    const lines: string[] = [];
    const h = harness({
      nodes: [{ maxLoadedModels: 3 }, { maxLoadedModels: 3 }],
      ps: ps.ps,
      log: { warn: () => undefined, info: (obj, msg) => lines.push(`${msg} ${JSON.stringify(obj)}`) },
    });
    ps.set("n0", [running("llama:latest", 3)]);
    ps.set("n1", [running("mini:latest", 1)]);
    (await h.acquire("llama")).release();
    const mini = await h.acquire("mini");
    const qwen = await h.acquire("qwen");
    assert.equal(qwen.node.name, "n0");
    ps.set("n0", [running("qwen:latest", 6.5)]);
    await ps.read("n0"); // the load watcher's next look
    await settle();
    const n0 = h.fleet.get("n0")!;
    assert.equal(n0.capacity.overflowBytes, 9.5e9, "3 + 6.5 GB did not fit");
    assert.deepEqual(
      n0.capacity.evidence.map((e) => [e.kind, ...e.models]),
      [
        ["evicted", "qwen:latest", "llama:latest"],
        ["fits", "qwen:latest"],
        ["fits", "llama:latest"],
      ],
    );
    assert.deepEqual([...n0.models.keys()], ["qwen:latest"], "the picture dropped llama");
    assert.equal(lines.length, 1);
    assert.match(lines[0]!, /node capacity learned from ollama.*"evidence":"evicted"/);
    mini.release();
    const llama = await h.acquire("llama");
    assert.equal(llama.node.name, "n1", "llama goes where there may be room, not back to n0 to evict qwen");
  });

  it("lowers a model's slots after repeated waits inside Ollama, and logs it once", async () => {
    const warnings: { obj: Record<string, unknown>; msg: string }[] = [];
    const h = harness({
      nodes: [{ parallel: 4 }],
      log: { warn: (obj, msg) => warnings.push({ obj: { ...obj }, msg }) },
    });
    const waited = { totalMs: 900, loadMs: 1, promptEvalMs: 10, evalMs: 300 };
    const served = { totalMs: 320, loadMs: 1, promptEvalMs: 10, evalMs: 300 };
    const n0 = h.fleet.get("n0")!;
    const slots = (): number => h.fleet.slots(n0, false, "llama:latest");
    const seen = [slots()];
    // As Ollama with one slot would: each round, as many at once as the gateway allows; all
    // but the first wait inside the node.
    for (let round = 0; round < 12 && slots() > 1; round++) {
      const ds = await Promise.all(Array.from({ length: slots() }, () => h.acquire("llama")));
      ds[0]!.release(served);
      for (const d of ds.slice(1)) d.release(waited);
      if (slots() !== seen.at(-1)) seen.push(slots());
    }
    assert.deepEqual(seen, [4, 3, 2, 1], "lowered step by step to what the node serves");
    assert.equal(h.fleet.slots(n0, false, "qwen:latest"), 4, "other models keep theirs");
    assert.equal(warnings.filter((w) => w.msg === SLOTS_LOWERED_MSG).length, 1, JSON.stringify(warnings));
    assert.equal(warnings[0]!.obj["node"], "n0");
    assert.equal(warnings[0]!.obj["model"], "llama:latest");
    assert.equal(warnings[0]!.obj["configured"], 4);
  });

  it("keeps the configured slots when requests ran next to each other without waiting, or ran alone", async () => {
    const h = harness({ nodes: [{ parallel: 2 }] });
    const waited = { totalMs: 900, loadMs: 1, promptEvalMs: 10, evalMs: 300 };
    const served = { totalMs: 320, loadMs: 1, promptEvalMs: 10, evalMs: 300 };
    for (let i = 0; i < 6; i++) {
      const [a, b] = await Promise.all([h.acquire("llama"), h.acquire("llama")]);
      a.release(served);
      b.release(served);
      (await h.acquire("llama")).release(waited); // alone: says nothing about slots
    }
    assert.equal(h.fleet.slots(h.fleet.get("n0")!, false, "llama:latest"), 2);
  });

  it("fails every queued request with UNAVAILABLE on stop, and forgets its drains", async () => {
    const h = harness();
    await h.acquire("qwen");
    const drains: DrainingNode[][] = [];
    h.scheduler.onDrainChange((list) => drains.push(list));
    const queued = h.acquire("llava");
    await settle();
    assert.equal(h.scheduler.draining().length, 1);
    h.scheduler.stop();
    const error = await queued.then(
      () => assert.fail("should have failed"),
      (e: unknown) => ConnectError.from(e),
    );
    assert.equal(error.code, Code.Unavailable);
    assert.deepEqual(h.scheduler.queues(), []);
    assert.deepEqual(drains.at(-1), []);
  });
});
