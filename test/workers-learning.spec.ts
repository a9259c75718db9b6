import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import type { NodeConfig } from "../src/config/config.js";
import { budgetBytes, createCapacity } from "../src/routing/capacity-model.js";
import type { NodeCapacity } from "../src/routing/capacity-model.js";
import { createFleetState } from "../src/routing/fleet-state.js";
import {
  WORKER_LEARNING_MSG,
  createIpcFleetLearning,
  isFleetLearningMessage,
} from "../src/routing/ipc-fleet-learning.js";
import type { FleetLearningMessage, LearningChannel } from "../src/routing/ipc-fleet-learning.js";
import {
  MAX_SHARED_MODELS,
  isNodeLearning,
  mergeCapacity,
  mergeSlots,
  nodeLearning,
} from "../src/routing/shared-learning.js";
import type { NodeLearning } from "../src/routing/shared-learning.js";
import { createSlotLearning } from "../src/routing/slot-learning.js";
import type { SlotLearning } from "../src/routing/slot-learning.js";
import type { OllamaNode } from "../src/upstream/ollama-node.js";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type { GetStatusResponse } from "../src/gen/ollama/gateway/v1/gateway_pb.js";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { ThinkMode } from "../src/gen/ollama/gateway/v1/types_pb.js";
import { SLOTS_LOWERED_MSG } from "../src/routing/scheduler.js";
import { startSimulator } from "../src/simulator/simulator.js";
import { recentLog, spawnGateway, statusOnNewConnection, withGatewayLog } from "./helpers/gateway-process.js";
import type { GatewayProcess } from "./helpers/gateway-process.js";
import { eventually as eventuallyWithin } from "./helpers/hostile-clients.js";

const MODEL = "llama3.2:latest";

const GB = 1_000_000_000;

function capacity(over: Partial<NodeCapacity> = {}): NodeCapacity {
  return { ...createCapacity({ maxLoadedModels: 3 }), ...over };
}

function news(over: Partial<NodeLearning> = {}): NodeLearning {
  return {
    node: "n0",
    fitsBytes: 0,
    overflowBytes: null,
    learnedMaxLoaded: null,
    sizes: [],
    evidence: [],
    slots: [],
    ...over,
  };
}

describe("what one worker learned about a node, merged into another's picture", () => {
  const cases: {
    name: string;
    local: NodeCapacity;
    news: NodeLearning;
    expected: Partial<Pick<NodeCapacity, "fitsBytes" | "overflowBytes" | "learnedMaxLoaded" | "borrowedFrom">>;
  }[] = [
    {
      name: "takes the larger total seen fitting and the smaller seen not fitting",
      local: capacity({ fitsBytes: 8 * GB, overflowBytes: 30 * GB }),
      news: news({ fitsBytes: 10 * GB, overflowBytes: 20 * GB }),
      expected: { fitsBytes: 10 * GB, overflowBytes: 20 * GB },
    },
    {
      name: "keeps its own tighter bounds against looser news",
      local: capacity({ fitsBytes: 10 * GB, overflowBytes: 20 * GB }),
      news: news({ fitsBytes: 8 * GB, overflowBytes: null }),
      expected: { fitsBytes: 10 * GB, overflowBytes: 20 * GB },
    },
    {
      name: "takes the news' bounds when the two contradict (the node changed)",
      local: capacity({ fitsBytes: 10 * GB, overflowBytes: 20 * GB }),
      news: news({ fitsBytes: 25 * GB, overflowBytes: 40 * GB }),
      expected: { fitsBytes: 25 * GB, overflowBytes: 40 * GB },
    },
    {
      name: "takes the fewer models kept",
      local: capacity({ learnedMaxLoaded: 2 }),
      news: news({ learnedMaxLoaded: 1 }),
      expected: { learnedMaxLoaded: 1 },
    },
    {
      name: "drops a borrowed bound for one seen on this very node",
      local: capacity({ overflowBytes: 30 * GB, borrowedFrom: "n1" }),
      news: news({ overflowBytes: 20 * GB }),
      expected: { overflowBytes: 20 * GB, borrowedFrom: undefined },
    },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const merged = mergeCapacity(c.local, c.news);
      const picked = Object.fromEntries(Object.keys(c.expected).map((k) => [k, merged[k as keyof NodeCapacity]]));
      assert.deepEqual(picked, c.expected);
    });
  }

  it("changes nothing (the same object) when the news teaches nothing, so applying it twice is harmless", () => {
    const evicted = { at: 5, kind: "evicted" as const, models: ["b", "a"], totalBytes: 20 * GB };
    const once = mergeCapacity(capacity(), news({ overflowBytes: 20 * GB, evidence: [evicted], sizes: [["a", GB]] }));
    assert.notEqual(once, capacity());
    assert.equal(budgetBytes(once), 0, "an overflow seen elsewhere makes the budget known");
    assert.deepEqual(once.evidence, [evicted], "the other worker's evidence shows beside its own");
    const twice = mergeCapacity(once, news({ overflowBytes: 20 * GB, evidence: [evicted], sizes: [["a", GB]] }));
    assert.equal(twice, once);
  });

  const lowered = (slots: number, configured = 4): SlotLearning => ({
    ...createSlotLearning(configured),
    slots,
    waits: 3,
    loweredAt: 9,
  });
  const slotCases: {
    name: string;
    local: [string, SlotLearning][];
    slots: NodeLearning["slots"];
    expected: [string, number][] | undefined;
  }[] = [
    {
      name: "lowers slots the other worker lowered",
      local: [],
      slots: [{ model: "m", configured: 4, slots: 2, waits: 3, loweredAt: 9 }],
      expected: [["m", 2]],
    },
    {
      name: "keeps its own fewer slots",
      local: [["m", lowered(1)]],
      slots: [{ model: "m", configured: 4, slots: 2, waits: 3, loweredAt: 9 }],
      expected: undefined,
    },
    {
      name: "ignores slots lowered from another configured count (a reload in between)",
      local: [["m", lowered(4, 8)]],
      slots: [{ model: "m", configured: 4, slots: 2, waits: 3, loweredAt: 9 }],
      expected: undefined,
    },
  ];
  for (const c of slotCases) {
    it(`slots: ${c.name}`, () => {
      const merged = mergeSlots(new Map(c.local), news({ slots: c.slots }));
      assert.deepEqual(merged === undefined ? undefined : [...merged].map(([m, l]) => [m, l.slots]), c.expected);
    });
  }

  it("accepts only well-formed, bounded news from the channel", () => {
    const good = news({
      overflowBytes: 20 * GB,
      sizes: [["a", GB]],
      evidence: [{ at: 1, kind: "evicted", models: ["a"], totalBytes: 2 }],
      slots: [{ model: "m", configured: 4, slots: 1, waits: 3, loweredAt: 9 }],
    });
    const message = (learning: unknown) => ({ type: "ogw:fleet-learning", learning });
    assert.equal(isFleetLearningMessage(message(good)), true);
    assert.equal(isFleetLearningMessage(JSON.parse(JSON.stringify(message(good)))), true, "survives IPC's JSON");
    const bad: unknown[] = [
      { ...good, node: "" },
      { ...good, fitsBytes: -1 },
      { ...good, overflowBytes: "20" },
      { ...good, learnedMaxLoaded: 0 },
      { ...good, sizes: Array.from({ length: MAX_SHARED_MODELS + 1 }, (_, i) => [`m${i}`, 1]) },
      { ...good, evidence: [{ at: 1, kind: "guessed", models: [], totalBytes: 1 }] },
      { ...good, slots: [{ model: "m", configured: 4, slots: 0, waits: 0, loweredAt: 0 }] },
      { ...good, slots: "all" },
    ];
    for (const b of bad) assert.equal(isNodeLearning(b), false, JSON.stringify(b).slice(0, 120));
    assert.equal(isFleetLearningMessage({ type: "ogw:node-verdict", node: "n0", verdict: "down" }), false);
  });

  it("does not pass on a bound borrowed from a node alike as the node's own", () => {
    const borrowed = capacity({ overflowBytes: 20 * GB, borrowedFrom: "n1" });
    assert.equal(nodeLearning("n0", borrowed, new Map()).overflowBytes, null);
  });
});

/** Two workers' fleet states, wired through a relay that passes each one's news to the other as the primary does. */
function twoWorkers(config: Partial<NodeConfig> = {}) {
  const configs: NodeConfig[] = [
    { name: "n0", url: "http://n0.invalid", parallel: 4, maxLoadedModels: 3, weight: 1, ...config },
  ];
  const emitters = [new EventEmitter(), new EventEmitter()];
  const sent: FleetLearningMessage[] = [];
  const channel = (me: number): LearningChannel => ({
    connected: true,
    send(m) {
      sent.push(m);
      // Through JSON, as IPC does.
      const copy = JSON.parse(JSON.stringify(m)) as unknown;
      setImmediate(() => emitters[1 - me]!.emit("message", copy));
    },
    on: (e, l) => emitters[me]!.on(e, l),
    off: (e, l) => emitters[me]!.off(e, l),
  });
  const logs: string[] = [];
  const log = { info: (_o: object, msg: string) => logs.push(msg) };
  const workers = [0, 1].map((i) =>
    createIpcFleetLearning({
      channel: channel(i),
      fleet: createFleetState(configs.map((c) => ({ node: { name: c.name, url: c.url } as OllamaNode, config: c }))),
      log,
    }),
  );
  return { workers, sent, logs, settle: () => new Promise((r) => setImmediate(r)) };
}

describe("the workers' shared learning over IPC", () => {
  it("gives the other worker the slots one worker lowered, so its next acquire asks for fewer", async () => {
    const { workers, logs, settle } = twoWorkers();
    const [one, two] = workers.map((w) => w.fleet);
    const s1 = one!.nodes[0]!;
    const s2 = two!.nodes[0]!;
    assert.equal(two!.slots(s2, false, "m"), 4);
    // Three requests of one running next to three others, each waiting inside the node for a slot.
    for (let i = 0; i < 3; i++)
      one!.observeSlots(s1, "m", {
        timings: { totalMs: 2_000, loadMs: 0, promptEvalMs: 10, evalMs: 10 },
        peak: 4,
        at: i,
      });
    assert.equal(one!.slots(s1, false, "m"), 3, "worker one lowered them");
    await settle();
    assert.equal(two!.slots(s2, false, "m"), 3, "worker two uses the lowered slots");
    assert.equal(s2.slotLearning.get("m")?.slots, 3, "and GetStatus there shows them lowered");
    assert.deepEqual(logs, [WORKER_LEARNING_MSG]);
    for (const w of workers) w.close();
  });

  it("gives the other worker an eviction one worker saw, and sends nothing back or twice", async () => {
    const { workers, sent, settle } = twoWorkers();
    const [one, two] = workers.map((w) => w.fleet);
    const s1 = one!.nodes[0]!;
    one!.sync("n0", [{ name: "a", sizeBytes: 14 * GB, vramBytes: 14 * GB }]);
    await settle();
    one!.begin(s1, "b", false, 14 * GB);
    one!.loadObserved(s1, "b", [{ name: "b", sizeBytes: 14 * GB, vramBytes: 14 * GB }]);
    assert.equal(s1.capacity.overflowBytes, 28 * GB, "worker one learned the two do not fit together");
    await settle();
    const s2 = two!.nodes[0]!;
    assert.equal(s2.capacity.overflowBytes, 28 * GB, "worker two knows it too");
    assert.equal(budgetBytes(s2.capacity), 14 * GB);
    assert.equal(s2.capacity.evidence[0]?.kind, "evicted");
    const count = sent.length;
    one!.sync("n0", [{ name: "b", sizeBytes: 14 * GB, vramBytes: 14 * GB }]);
    two!.sync("n0", [{ name: "b", sizeBytes: 14 * GB, vramBytes: 14 * GB }]);
    await settle();
    assert.equal(sent.length, count, "news already shared is not sent again (nothing echoes)");
    for (const w of workers) w.close();
  });
});

/** Each worker's GetStatus, keyed by its start time (`started_at` tells the workers apart); fresh connections until both answered. */
async function statusPerWorker(url: string) {
  const seen = new Map<string, GetStatusResponse>();
  for (let i = 0; i < 20 && seen.size < 2; i++) {
    const s = await statusOnNewConnection(url);
    seen.set(`${s.startedAt?.seconds}.${s.startedAt?.nanos}`, s);
  }
  return [...seen.values()];
}

/** Polls `cond` until it holds; fails after `ms` (generous: the machine may be loaded), with the gateway's last log lines. */
const eventually = (g: GatewayProcess, cond: () => Promise<boolean>, what: string, ms = 60_000): Promise<void> =>
  eventuallyWithin(cond, what, ms, () => `(gateway log tail:\n${recentLog(g)})`);

const listening = (g: GatewayProcess) => g.lines().filter((l) => l["msg"] === "gateway listening").length;
const learned = (g: GatewayProcess) => g.lines().some((l) => l["msg"] === WORKER_LEARNING_MSG);

// Real workers (WORKERS=2, no Redis). All traffic goes over ONE HTTP/2 connection, which node:cluster
// gives to one worker: the other serves nothing, so whatever it knows it learned from the first.
describe("what one worker learns reaches the other (WORKERS=2, no Redis)", { timeout: 180_000 }, () => {
  it("the other worker shows and uses the slots one worker lowered", async () => {
    const sim = await startSimulator({ numParallel: 1, tokenMs: 10 });
    const g = await spawnGateway({ OLLAMA_URL: sim.url, OLLAMA_NUM_PARALLEL: "4", WORKERS: "2" });
    try {
      await eventually(g, async () => listening(g) === 2, "both workers");
      const one = createClient(InferenceService, createGrpcTransport({ baseUrl: g.url }));
      const lowered = () => g.lines().some((l) => l["msg"] === SLOTS_LOWERED_MSG);
      for (let i = 0; i < 12 && !lowered(); i++) {
        await Promise.all(
          Array.from({ length: 4 }, async (_, k) => {
            for await (const _m of one.generate(
              { model: "llama3.2", prompt: `w${i}.${k}`, options: { numPredict: 15 } },
              { timeoutMs: 30_000 },
            ))
              void _m;
          }),
        );
      }
      assert.ok(lowered(), "the worker serving the calls lowered the node's slots");
      let last: GetStatusResponse[] = [];
      await eventually(
        g,
        async () => {
          last = await statusPerWorker(g.url);
          return (
            last.length === 2 &&
            last.every((s) => (s.nodes[0]?.loweredSlots.find((l) => l.model === MODEL)?.slots ?? 4) < 4)
          );
        },
        "both workers to show the lowered slots",
      );
      // Log lines are written in batches (up to 200 ms late): wait for the line rather than race it.
      await eventually(g, async () => learned(g), "the idle worker to log that it applied the other's learning");
      assert.equal(g.lines().filter((l) => l["msg"] === SLOTS_LOWERED_MSG).length, 1, "learned by one worker only");
      const [a, b] = last.map((s) => s.nodes[0]?.loweredSlots.find((l) => l.model === MODEL)?.slots);
      assert.equal(a, b, "both use the same slots");
    } catch (e) {
      throw withGatewayLog(e, g);
    } finally {
      await g.stop();
      await sim.close();
    }
  });

  it("the other worker shows the capacity one worker learned from an eviction", async () => {
    // At num_ctx 4096 the simulator's llama3.2 takes 2.47 GB and qwen3 5.83 GB: 7 GB holds either, never both.
    const sim = await startSimulator({ vramBytes: 7e9, loadMs: 50, tokenMs: 2, maxLoadedModels: 3 });
    const g = await spawnGateway({
      OLLAMA_URL: sim.url,
      OLLAMA_MAX_LOADED_MODELS: "3",
      CACHE_PS_TTL_MS: "200",
      WORKERS: "2",
    });
    try {
      await eventually(g, async () => listening(g) === 2, "both workers");
      const one = createClient(InferenceService, createGrpcTransport({ baseUrl: g.url }));
      const call = async (model: string, prompt: string) => {
        for await (const _m of one.generate(
          { model, prompt, think: ThinkMode.OFF, options: { numPredict: 4 } },
          { timeoutMs: 30_000 },
        ))
          void _m;
      };
      const evicted = (s: GetStatusResponse) => s.nodes[0]?.capacity?.evidence.some((e) => e.kind === "evicted");
      let last: GetStatusResponse[] = [];
      for (let i = 0; i < 6; i++) {
        await call("llama3.2", `a${i}`);
        await call("qwen3", `b${i}`);
        last = await statusPerWorker(g.url);
        if (last.some(evicted)) break;
      }
      assert.ok(last.some(evicted), "the worker serving the calls saw an eviction");
      await eventually(
        g,
        async () => {
          last = await statusPerWorker(g.url);
          return last.length === 2 && last.every((s) => evicted(s) === true);
        },
        "both workers to show the eviction",
      );
      const [a, b] = last.map((s) => s.nodes[0]!.capacity!);
      assert.equal(a!.overflowBytes, b!.overflowBytes, "the same upper bound");
      assert.ok(a!.overflowBytes > 0n);
      await eventually(g, async () => learned(g), "the idle worker to log that it applied the other's learning");
    } catch (e) {
      throw withGatewayLog(e, g);
    } finally {
      await g.stop();
      await sim.close();
    }
  });
});
