import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { createCapacity, observeLoad, observeResidency } from "../src/routing/capacity-model.js";
import type { NodeCapacity, ResidentModel } from "../src/routing/capacity-model.js";
import { COLD_MS, chooseDrainVictim, drainCost, obsoleteDrains, worthALoad } from "../src/routing/drain-policy.js";
import { choosePlacement } from "../src/routing/placement-policy.js";
import type { Placement } from "../src/routing/placement-policy.js";
import type { FleetView, ModelLoad, NodeView, PlacementRequest } from "../src/routing/policy-snapshot.js";
import { compareHeads, queueInsertIndex } from "../src/routing/queue-order-policy.js";
import { expectedWaitMs, learnTimes } from "../src/routing/wait-estimate.js";

// Policies are pure functions of a FleetView: every case below is a hand-written fleet and the
// decision expected for it (README, "Routing across a fleet").

const NOW = 10_000_000;

/** A model on a node: a number is its requests running (used a second ago); or the fields themselves. */
type ModelSpec = number | { inFlight?: number; lastUsed?: number };

interface NodeSpec {
  models?: Record<string, ModelSpec>;
  parallel?: number;
  maxLoaded?: number;
  weight?: number;
  healthy?: boolean;
  drainingFor?: string;
  /** What the node was seen to hold (see `learned`); absent = the count alone. */
  capacity?: NodeCapacity;
  /** A load sent there, not confirmed by /api/ps yet. */
  loading?: string;
  /** Slots lowered per model. */
  slotLimits?: Record<string, number>;
}

const GB = 1e9;
const resident = (name: string, gb: number): ResidentModel => ({ name, sizeBytes: gb * GB, vramBytes: gb * GB });

/**
 * A node configured for 3 models whose GPU was seen to hold these totals: `together` lists
 * (name, GB) loaded at once; `evicted` a load (first) that pushed out the others.
 */
function learned(seen: { together?: [string, number][][]; evicted?: [string, number][][] }): NodeCapacity {
  let c = createCapacity({ maxLoadedModels: 3 });
  for (const group of seen.together ?? [])
    c = observeResidency(
      c,
      group.map(([n, gb]) => resident(n, gb)),
      NOW,
    );
  for (const [[model, gb], ...before] of seen.evicted ?? []) {
    c = observeLoad(c, {
      model: model!,
      before: before.map(([n, size]) => resident(n, size)),
      after: [resident(model!, gb!)],
      now: NOW,
    });
  }
  return c;
}

/** The GPU: any one of llama (3 GB), llava (6 GB), qwen (6.5 GB), never two; configured for 3. */
const ONE_FITS = learned({
  together: [[["llava", 6]]],
  evicted: [
    [
      ["qwen", 6.5],
      ["llama", 3],
    ],
  ],
});
/** Two small models (llama 3 GB, mini 1 GB) fit together, qwen (6.5 GB) only alone. */
const SMALL_PAIR = learned({
  together: [
    [
      ["llama", 3],
      ["mini", 1],
    ],
  ],
  evicted: [
    [
      ["qwen", 6.5],
      ["llama", 3],
      ["mini", 1],
    ],
  ],
});

function node(name: string, spec: NodeSpec = {}): NodeView {
  const models = new Map<string, ModelLoad>();
  for (const [model, m] of Object.entries(spec.models ?? {})) {
    const fields = typeof m === "number" ? { inFlight: m } : m;
    models.set(model, { inFlight: fields.inFlight ?? 0, lastUsed: fields.lastUsed ?? NOW - 1_000 });
  }
  return {
    name,
    healthy: spec.healthy ?? true,
    weight: spec.weight ?? 1,
    maxLoadedModels: spec.maxLoaded ?? 1,
    parallel: spec.parallel ?? 1,
    models,
    drainingFor: spec.drainingFor,
    capacity: spec.capacity,
    loading: spec.loading,
    slotLimits: spec.slotLimits === undefined ? undefined : new Map(Object.entries(spec.slotLimits)),
  };
}

interface ViewSpec {
  nodes: NodeView[];
  /** Per model: requests waiting and how long the head has waited (ms). */
  queues?: Record<string, { depth?: number; waitMs: number; priority?: number }>;
  loadMs?: Record<string, number>;
  serviceMs?: Record<string, number>;
}

function view(spec: ViewSpec): FleetView {
  return {
    now: NOW,
    nodes: spec.nodes,
    queues: new Map(
      Object.entries(spec.queues ?? {}).map(([model, q]) => [
        model,
        { depth: q.depth ?? 1, headWaitMs: q.waitMs, headPriority: q.priority ?? 0 },
      ]),
    ),
    loadMs: new Map(Object.entries(spec.loadMs ?? {})),
    serviceMs: new Map(Object.entries(spec.serviceMs ?? {})),
  };
}

/** A request for `model` that every node of `v` has installed, unless `candidates` says otherwise. */
function request(
  v: FleetView,
  model: string,
  more: {
    candidates?: string[];
    exclude?: string[];
    embeddingOnly?: boolean;
    affinityNode?: string;
    sizeGb?: number;
  } = {},
): PlacementRequest {
  return {
    model,
    candidates: new Set(more.candidates ?? v.nodes.map((n) => n.name)),
    exclude: more.exclude === undefined ? undefined : new Set(more.exclude),
    embeddingOnly: more.embeddingOnly ?? false,
    affinityNode: more.affinityNode,
    sizeBytes: more.sizeGb === undefined ? undefined : more.sizeGb * GB,
  };
}

interface PlacementCase {
  name: string;
  fleet: ViewSpec;
  model?: string;
  req?: { candidates?: string[]; exclude?: string[]; embeddingOnly?: boolean; affinityNode?: string; sizeGb?: number };
  rebalance?: boolean;
  expect: Placement | undefined;
}

const placements: PlacementCase[] = [
  // Loaded with a free slot first.
  {
    name: "prefers a node where the model is loaded with a free slot over an empty node",
    fleet: { nodes: [node("a"), node("b", { models: { llama: 0 } })] },
    expect: { node: "b", rule: "loaded" },
  },
  {
    name: "prefers the loaded node even when it is busier, as long as it has a free slot",
    fleet: { nodes: [node("a", { maxLoaded: 3 }), node("b", { parallel: 4, models: { llama: 3 } })] },
    expect: { node: "b", rule: "loaded" },
  },
  {
    name: "goes to the session's node first among loaded nodes with a free slot",
    fleet: { nodes: [node("a", { models: { llama: 0 } }), node("b", { models: { llama: 0 } })] },
    req: { affinityNode: "b" },
    expect: { node: "b", rule: "loaded" },
  },
  {
    name: "leaves the session's node when its slots are all taken",
    fleet: { nodes: [node("a", { models: { llama: 0 } }), node("b", { models: { llama: 1 } })] },
    req: { affinityNode: "b" },
    expect: { node: "a", rule: "loaded" },
  },
  {
    name: "picks the least weighted load among loaded nodes",
    fleet: {
      nodes: [
        node("a", { parallel: 4, models: { llama: 2 } }),
        node("b", { parallel: 4, weight: 3, models: { llama: 2 } }),
        node("c", { parallel: 4, models: { llama: 1 } }),
      ],
    },
    expect: { node: "b", rule: "loaded" },
  },
  {
    name: "breaks ties by configuration order",
    fleet: { nodes: [node("a", { models: { llama: 0 } }), node("b", { models: { llama: 0 } })] },
    expect: { node: "a", rule: "loaded" },
  },
  // Load without evicting.
  {
    name: "loads the model where there is room rather than evict anything",
    fleet: { nodes: [node("a", { models: { qwen: 0 } }), node("b", { maxLoaded: 2, models: { qwen: 1 } })] },
    expect: { node: "b", rule: "room" },
  },
  {
    name: "among nodes with room, picks the least weighted load",
    fleet: {
      nodes: [node("a", { maxLoaded: 2, models: { qwen: 1 } }), node("b", { maxLoaded: 2, models: { mistral: 0 } })],
    },
    expect: { node: "b", rule: "room" },
  },
  {
    name: "loads where there is room even while the model is loaded elsewhere with all slots busy",
    fleet: { nodes: [node("a", { models: { llama: 1 } }), node("b", { maxLoaded: 2 })] },
    expect: { node: "b", rule: "room" },
  },
  // Idle victims only when the model is loaded nowhere.
  {
    name: "pushes out an idle model when the requested model is loaded nowhere",
    fleet: { nodes: [node("a", { models: { qwen: 0 } })] },
    expect: { node: "a", rule: "idle" },
  },
  {
    name: "waits rather than push out an idle model while the model is loaded (busy) elsewhere",
    fleet: { nodes: [node("a", { models: { llama: 1 } }), node("b", { models: { qwen: 0 } })] },
    expect: undefined,
  },
  {
    name: "never pushes out a model with requests running",
    fleet: { nodes: [node("a", { models: { qwen: 1 } })] },
    expect: undefined,
  },
  {
    name: "never pushes out a model with requests queued",
    fleet: { nodes: [node("a", { models: { qwen: 0 } })], queues: { qwen: { waitMs: 10 } } },
    expect: undefined,
  },
  {
    name: "takes the node with an idle model rather than the one whose model is busy",
    fleet: { nodes: [node("a", { models: { qwen: 1 } }), node("b", { models: { mistral: 0 } })] },
    expect: { node: "b", rule: "idle" },
  },
  // Scale out after two load times, onto spare nodes only.
  {
    name: "scales out once the head waited two load times, onto a node whose idle model is loaded elsewhere too",
    fleet: {
      nodes: [
        node("a", { models: { llama: 1 } }),
        node("b", { models: { qwen: 0 } }),
        node("c", { models: { qwen: 1 } }),
      ],
      queues: { llama: { waitMs: 600 } },
      loadMs: { llama: 300 },
    },
    expect: { node: "b", rule: "scale-out" },
  },
  {
    name: "scales out onto a node whose idle model is cold",
    fleet: {
      nodes: [node("a", { models: { llama: 1 } }), node("b", { models: { qwen: { lastUsed: NOW - COLD_MS } } })],
      queues: { llama: { waitMs: 600 } },
      loadMs: { llama: 300 },
    },
    expect: { node: "b", rule: "scale-out" },
  },
  {
    name: "does not scale out before the head waited two load times",
    fleet: {
      nodes: [
        node("a", { models: { llama: 1 } }),
        node("b", { models: { qwen: 0 } }),
        node("c", { models: { qwen: 1 } }),
      ],
      queues: { llama: { waitMs: 599 } },
      loadMs: { llama: 300 },
    },
    expect: undefined,
  },
  {
    name: "does not scale out onto a node whose idle model is loaded only there and was used recently",
    fleet: {
      nodes: [node("a", { models: { llama: 1 } }), node("b", { models: { qwen: { lastUsed: NOW - COLD_MS + 1 } } })],
      queues: { llama: { waitMs: 60_000 } },
      loadMs: { llama: 300 },
    },
    expect: undefined,
  },
  {
    name: "does not scale out with rebalancing off",
    fleet: {
      nodes: [
        node("a", { models: { llama: 1 } }),
        node("b", { models: { qwen: 0 } }),
        node("c", { models: { qwen: 1 } }),
      ],
      queues: { llama: { waitMs: 60_000 } },
      loadMs: { llama: 300 },
    },
    rebalance: false,
    expect: undefined,
  },
  // Drains.
  {
    name: "loads the model on a node drained for it once that node has emptied",
    fleet: { nodes: [node("a", { models: { qwen: 0 }, drainingFor: "llama" }), node("b", { maxLoaded: 2 })] },
    expect: { node: "a", rule: "drained" },
  },
  {
    name: "does not use a node drained for the model while requests still run there",
    fleet: { nodes: [node("a", { models: { qwen: 1 }, drainingFor: "llama" })] },
    expect: undefined,
  },
  {
    name: "gives a node drained for another model no new work, even with the model loaded and a slot free",
    fleet: { nodes: [node("a", { models: { llama: 0 }, drainingFor: "qwen" }), node("b", { models: { llama: 1 } })] },
    expect: undefined,
  },
  {
    name: "does not load a model on a node drained for another model, even with room",
    fleet: { nodes: [node("a", { maxLoaded: 2, models: { qwen: 1 }, drainingFor: "mistral" })] },
    expect: undefined,
  },
  // Nodes the request may not use.
  {
    name: "skips unhealthy nodes",
    fleet: { nodes: [node("a", { healthy: false, models: { llama: 0 } }), node("b")] },
    expect: { node: "b", rule: "room" },
  },
  {
    name: "skips nodes the request excludes (they just failed it)",
    fleet: { nodes: [node("a", { models: { llama: 0 } }), node("b")] },
    req: { exclude: ["a"] },
    expect: { node: "b", rule: "room" },
  },
  {
    name: "skips nodes that do not have the model installed",
    fleet: { nodes: [node("a", { models: { llama: 0 } }), node("b")] },
    req: { candidates: ["b"] },
    expect: { node: "b", rule: "room" },
  },
  {
    name: "counts a model on an unusable node as loaded nowhere (an idle victim is fair game)",
    fleet: { nodes: [node("a", { healthy: false, models: { llama: 0 } }), node("b", { models: { qwen: 0 } })] },
    expect: { node: "b", rule: "idle" },
  },
  // Slots.
  {
    name: "gives an embedding-only model one slot whatever the node's parallel setting",
    fleet: { nodes: [node("a", { parallel: 4, models: { minilm: 1 } }), node("b", { maxLoaded: 2 })] },
    model: "minilm",
    req: { embeddingOnly: true },
    expect: { node: "b", rule: "room" },
  },
  {
    name: "gives a completion model the node's parallel slots",
    fleet: { nodes: [node("a", { parallel: 4, models: { minilm: 1 } }), node("b", { maxLoaded: 2 })] },
    model: "minilm",
    expect: { node: "a", rule: "loaded" },
  },
  {
    name: "gives a model the slots lowered for it where the node was seen to serve fewer",
    fleet: {
      nodes: [node("a", { parallel: 4, slotLimits: { llama: 1 }, models: { llama: 1 } }), node("b", { maxLoaded: 2 })],
    },
    expect: { node: "b", rule: "room" },
  },
  {
    name: "keeps the configured slots for the other models of that node",
    fleet: {
      nodes: [node("a", { parallel: 4, slotLimits: { qwen: 1 }, models: { llama: 1 } }), node("b", { maxLoaded: 2 })],
    },
    expect: { node: "a", rule: "loaded" },
  },
  // Capacity learned from the nodes: the count is an upper bound, memory decides.
  {
    name: "sees no room where the count allows 3 models but the memory was seen to hold one",
    fleet: {
      nodes: [
        node("a", { maxLoaded: 3, capacity: ONE_FITS, models: { llama: 1 } }),
        node("b", { maxLoaded: 3, capacity: ONE_FITS, models: { llava: 1 } }),
      ],
    },
    model: "qwen",
    req: { sizeGb: 6.5 },
    expect: undefined,
  },
  {
    name: "without learned capacity, takes the configured count at its word",
    fleet: {
      nodes: [node("a", { maxLoaded: 3, models: { llama: 1 } }), node("b", { maxLoaded: 3, models: { llava: 1 } })],
    },
    model: "qwen",
    expect: { node: "a", rule: "room" },
  },
  {
    name: "loads next to the models the memory was seen to hold with it",
    fleet: {
      nodes: [
        node("a", { maxLoaded: 3, capacity: SMALL_PAIR, models: { qwen: 1 } }),
        node("b", { maxLoaded: 3, capacity: SMALL_PAIR, models: { llama: 2 } }),
      ],
    },
    model: "mini",
    expect: { node: "b", rule: "room" },
  },
  {
    name: "pushes out the model the memory requires when the newcomer is loaded nowhere (it is idle)",
    fleet: {
      nodes: [
        node("a", { maxLoaded: 3, capacity: ONE_FITS, models: { llama: 1 } }),
        node("b", { maxLoaded: 3, capacity: ONE_FITS, models: { llava: 0 } }),
      ],
    },
    model: "qwen",
    expect: { node: "b", rule: "idle" },
  },
  {
    name: "does not push out a small pair for a large model while one of the pair is busy",
    fleet: {
      nodes: [node("a", { maxLoaded: 3, capacity: SMALL_PAIR, models: { llama: 0, mini: 1 } })],
    },
    model: "qwen",
    expect: undefined,
  },
  {
    name: "prefers a node known to have room (empty) over one merely not known to be full",
    fleet: {
      nodes: [node("a", { maxLoaded: 3, capacity: learned({}), models: { llama: 0 } }), node("b", { maxLoaded: 3 })],
    },
    model: "qwen",
    expect: { node: "b", rule: "room" },
  },
  {
    name: "still loads on a node not known to be full when no node is known to have room (the least loaded)",
    fleet: {
      nodes: [
        node("a", { maxLoaded: 3, capacity: learned({}), models: { llama: 1 } }),
        node("b", { maxLoaded: 3, capacity: learned({}), models: { llava: 0 } }),
      ],
    },
    model: "qwen",
    expect: { node: "b", rule: "room" },
  },
  {
    name: "does not guess on a node not known to have room while its model is in use: waits instead",
    fleet: { nodes: [node("a", { maxLoaded: 3, capacity: learned({}), models: { llama: 1 } })] },
    model: "qwen",
    expect: undefined,
  },
  {
    name: "does not guess on such a node while its idle model has requests waiting",
    fleet: {
      nodes: [node("a", { maxLoaded: 3, capacity: learned({}), models: { llama: 0 } })],
      queues: { llama: { waitMs: 10 } },
    },
    model: "qwen",
    expect: undefined,
  },
  {
    name: "sends a model larger than any budget to an empty node (it loads there, partly offloaded)",
    fleet: {
      nodes: [node("a", { maxLoaded: 3, capacity: ONE_FITS, models: { llama: 1 } }), node("b", { capacity: ONE_FITS })],
    },
    model: "huge",
    req: { sizeGb: 40 },
    expect: { node: "b", rule: "room" },
  },
  // While a load the gateway sent is unconfirmed by /api/ps.
  {
    name: "sends no second load to a node whose load is not confirmed yet",
    fleet: {
      nodes: [
        node("a", { maxLoaded: 3, loading: "qwen", models: { qwen: 1 } }),
        node("b", { maxLoaded: 3, models: { llava: 1 } }),
      ],
    },
    model: "mini",
    expect: { node: "b", rule: "room" },
  },
  {
    name: "waits rather than load a model a second time while a load on its node may be pushing it out",
    fleet: {
      nodes: [
        node("a", { maxLoaded: 3, capacity: learned({}), loading: "qwen", models: { qwen: 1, llama: 0 } }),
        node("b", { maxLoaded: 3, capacity: learned({}) }),
      ],
    },
    expect: undefined,
  },
  {
    name: "serves a model next to an unconfirmed load when the two were seen to fit together",
    fleet: {
      nodes: [
        node("a", {
          maxLoaded: 3,
          capacity: learned({
            together: [
              [
                ["qwen", 6.5],
                ["llama", 3],
              ],
            ],
          }),
          loading: "qwen",
          models: { qwen: 1, llama: 0 },
        }),
        node("b", { maxLoaded: 3 }),
      ],
    },
    expect: { node: "a", rule: "loaded" },
  },
  {
    name: "sends requests for the model being loaded to its node while a slot is free",
    fleet: { nodes: [node("a", { parallel: 2, loading: "llama", models: { llama: 1 } }), node("b")] },
    expect: { node: "a", rule: "loaded" },
  },
];

describe("choosing a node for a request (choosePlacement)", () => {
  for (const c of placements) {
    it(c.name, () => {
      const v = view(c.fleet);
      assert.deepEqual(
        choosePlacement(v, request(v, c.model ?? "llama", c.req), { rebalance: c.rebalance ?? true }),
        c.expect,
      );
    });
  }
});

interface CostCase {
  name: string;
  fleet: ViewSpec;
  /** The node whose cost is asked (the first node of the fleet). */
  hungry: string;
  starving: boolean;
  expect: number | undefined;
}

const costs: CostCase[] = [
  {
    name: "0 when every model on the node is idle",
    fleet: { nodes: [node("a", { maxLoaded: 2, models: { qwen: 0, mistral: 0 } })] },
    hungry: "llama",
    starving: false,
    expect: 0,
  },
  {
    name: "1 when a busy model stays loaded on another node and nobody waits for it",
    fleet: { nodes: [node("a", { models: { qwen: 1 } }), node("b", { models: { qwen: 0 } })] },
    hungry: "llama",
    starving: false,
    expect: 1,
  },
  {
    name: "2 when that model has requests waiting (a starving model only)",
    fleet: {
      nodes: [node("a", { models: { qwen: 1 } }), node("b", { models: { qwen: 1 } })],
      queues: { qwen: { waitMs: 10 } },
    },
    hungry: "llama",
    starving: true,
    expect: 2,
  },
  {
    name: "3 when a busy model is loaded only there and nobody waits for it (a starving model only)",
    fleet: { nodes: [node("a", { models: { qwen: 1 } })] },
    hungry: "llama",
    starving: true,
    expect: 3,
  },
  {
    name: "4 when that model has requests waiting, for a hungry model whose head waited longer",
    fleet: { nodes: [node("a", { models: { qwen: 1 } })], queues: { qwen: { waitMs: 100 }, llama: { waitMs: 101 } } },
    hungry: "llama",
    starving: true,
    expect: 4,
  },
  {
    name: "not allowed for a hungry model whose head waited no longer than that model's",
    fleet: { nodes: [node("a", { models: { qwen: 1 } })], queues: { qwen: { waitMs: 100 }, llama: { waitMs: 100 } } },
    hungry: "llama",
    starving: true,
    expect: undefined,
  },
  {
    name: "the dearest model sets the node's cost",
    fleet: { nodes: [node("a", { maxLoaded: 2, models: { qwen: 0, mistral: 1 } })] },
    hungry: "llama",
    starving: true,
    expect: 3,
  },
  {
    name: "a copy on an unhealthy node does not count as loaded elsewhere",
    fleet: { nodes: [node("a", { models: { qwen: 1 } }), node("b", { healthy: false, models: { qwen: 0 } })] },
    hungry: "llama",
    starving: true,
    expect: 3,
  },
  {
    name: "only 0 and 1 are allowed to scale out a model that is served somewhere: 2 is not",
    fleet: {
      nodes: [node("a", { models: { qwen: 1 } }), node("b", { models: { qwen: 1 } })],
      queues: { qwen: { waitMs: 10 } },
    },
    hungry: "llama",
    starving: false,
    expect: undefined,
  },
  {
    name: "nor is 3",
    fleet: { nodes: [node("a", { models: { qwen: 1 } })] },
    hungry: "llama",
    starving: false,
    expect: undefined,
  },
  {
    name: "never for a node that holds the hungry model",
    fleet: { nodes: [node("a", { maxLoaded: 2, models: { qwen: 0, llama: 1 } })] },
    hungry: "llama",
    starving: true,
    expect: undefined,
  },
];

describe("what draining a node costs (drainCost)", () => {
  for (const c of costs) {
    it(c.name, () => {
      const v = view(c.fleet);
      assert.equal(drainCost(v, v.nodes[0]!, c.hungry, c.starving), c.expect);
    });
  }
});

interface VictimCase {
  name: string;
  fleet: ViewSpec;
  model: string;
  req?: { candidates?: string[]; exclude?: string[] };
  rebalance?: boolean;
  expect: string | undefined;
}

const victims: VictimCase[] = [
  {
    name: "drains a node whose memory is full although its count has room",
    fleet: {
      nodes: [
        node("a", { maxLoaded: 3, capacity: ONE_FITS, models: { llama: 1 } }),
        node("b", { maxLoaded: 3, capacity: ONE_FITS, models: { llama: 1 } }),
      ],
    },
    model: "qwen",
    expect: "a",
  },
  {
    name: "drains, for a starving model, a node not known to be full whose model is in use",
    fleet: { nodes: [node("a", { maxLoaded: 3, capacity: learned({}), models: { llama: 1 } })] },
    model: "qwen",
    expect: "a",
  },
  {
    name: "drains no node that has room for the model in memory (it is placed there directly)",
    fleet: {
      nodes: [node("a", { maxLoaded: 3, capacity: SMALL_PAIR, models: { llama: 1 } })],
      queues: { mini: { waitMs: 60_000 } },
    },
    model: "mini",
    expect: undefined,
  },
  {
    name: "drains for a model loaded nowhere (starving) as soon as it waits",
    fleet: { nodes: [node("a", { models: { qwen: 1 } })], queues: { llava: { waitMs: 0 } } },
    model: "llava",
    expect: "a",
  },
  {
    name: "picks the cheapest node",
    fleet: {
      nodes: [
        node("a", { models: { qwen: 1 } }),
        node("b", { models: { mistral: 1 } }),
        node("c", { models: { mistral: 1 } }),
      ],
      queues: { llava: { waitMs: 0 } },
    },
    model: "llava",
    expect: "b",
  },
  {
    name: "between equally cheap nodes, picks the least weighted load",
    fleet: {
      nodes: [node("a", { parallel: 2, models: { qwen: 2 } }), node("b", { parallel: 2, models: { mistral: 1 } })],
      queues: { llava: { waitMs: 0 } },
    },
    model: "llava",
    expect: "b",
  },
  {
    name: "between equal nodes, picks the earlier one",
    fleet: {
      nodes: [node("a", { models: { qwen: 1 } }), node("b", { models: { mistral: 1 } })],
      queues: { llava: { waitMs: 0 } },
    },
    model: "llava",
    expect: "a",
  },
  {
    name: "drains one node per model at a time",
    fleet: {
      nodes: [node("a", { models: { qwen: 1 }, drainingFor: "llava" }), node("b", { models: { mistral: 1 } })],
      queues: { llava: { waitMs: 0 } },
    },
    model: "llava",
    expect: undefined,
  },
  {
    name: "never drains a node already drained for another model",
    fleet: { nodes: [node("a", { models: { qwen: 1 }, drainingFor: "mistral" })], queues: { llava: { waitMs: 0 } } },
    model: "llava",
    expect: undefined,
  },
  {
    name: "never drains a node with room (the model is simply loaded there)",
    fleet: { nodes: [node("a", { maxLoaded: 2, models: { qwen: 1 } })], queues: { llava: { waitMs: 0 } } },
    model: "llava",
    expect: undefined,
  },
  {
    name: "never drains an unhealthy, excluded or uninstalled node",
    fleet: {
      nodes: [
        node("a", { healthy: false, models: { qwen: 1 } }),
        node("b", { models: { qwen: 1 } }),
        node("c", { models: { qwen: 1 } }),
      ],
      queues: { llava: { waitMs: 0 } },
    },
    model: "llava",
    req: { exclude: ["b"], candidates: ["a", "b"] },
    expect: undefined,
  },
  {
    name: "does not drain for a served model whose head waited less than two load times",
    fleet: {
      nodes: [
        node("a", { models: { llama: 1 } }),
        node("b", { models: { qwen: 1 } }),
        node("c", { models: { qwen: 0 } }),
      ],
      queues: { llama: { waitMs: 599 } },
      loadMs: { llama: 300 },
    },
    model: "llama",
    expect: undefined,
  },
  {
    name: "drains for a served model worth a load, over a node whose busy model stays loaded elsewhere",
    fleet: {
      nodes: [
        node("a", { models: { llama: 1 } }),
        node("b", { models: { qwen: 1 } }),
        node("c", { parallel: 2, models: { qwen: 2 } }),
      ],
      queues: { llama: { waitMs: 600 } },
      loadMs: { llama: 300 },
    },
    model: "llama",
    expect: "b",
  },
  {
    name: "never takes a node a queue needs to scale out a served model",
    fleet: {
      nodes: [node("a", { models: { llama: 1 } }), node("b", { models: { qwen: 1 } })],
      queues: { llama: { waitMs: 60_000 }, qwen: { waitMs: 10 } },
      loadMs: { llama: 300 },
    },
    model: "llama",
    expect: undefined,
  },
  {
    name: "does nothing with rebalancing off",
    fleet: { nodes: [node("a", { models: { qwen: 1 } })], queues: { llava: { waitMs: 60_000 } } },
    model: "llava",
    rebalance: false,
    expect: undefined,
  },
  // Two hot models, one node: the one waiting longer gets it; the other does not take it back until
  // its own head has waited longer (oldest first), so they take turns instead of one starving.
  {
    name: "two hot models on one node: displaces the loaded one for the model whose head waited longer",
    fleet: { nodes: [node("a", { models: { qwen: 1 } })], queues: { qwen: { waitMs: 200 }, llama: { waitMs: 800 } } },
    model: "llama",
    expect: "a",
  },
  {
    name: "two hot models on one node: keeps the loaded one while its head waited longer",
    fleet: { nodes: [node("a", { models: { llama: 1 } })], queues: { qwen: { waitMs: 200 }, llama: { waitMs: 800 } } },
    model: "qwen",
    expect: undefined,
  },
];

describe("which node is drained for a hungry model (chooseDrainVictim)", () => {
  for (const c of victims) {
    it(c.name, () => {
      const v = view(c.fleet);
      assert.equal(chooseDrainVictim(v, request(v, c.model, c.req), { rebalance: c.rebalance ?? true }), c.expect);
    });
  }

  it("asks whether a served model is worth a load from its learned load time, at least 500 ms, 3 s before any was measured", () => {
    const cases: [ViewSpec["loadMs"], number, boolean][] = [
      [{ llama: 100 }, 499, false],
      [{ llama: 100 }, 500, true],
      [{ llama: 1_000 }, 1_999, false],
      [{ llama: 1_000 }, 2_000, true],
      [{}, 5_999, false],
      [{}, 6_000, true],
    ];
    for (const [loadMs, waitMs, expected] of cases) {
      const v = view({ nodes: [], queues: { llama: { waitMs } }, loadMs });
      assert.equal(worthALoad(v, "llama"), expected, `load ${JSON.stringify(loadMs)}, waited ${waitMs} ms`);
    }
  });

  it("forgets drains whose model nobody waits for any more, and drains of unhealthy nodes", () => {
    const v = view({
      nodes: [
        node("a", { drainingFor: "llava" }),
        node("b", { drainingFor: "qwen" }),
        node("c", { drainingFor: "mistral", healthy: false }),
        node("d"),
      ],
      queues: { qwen: { waitMs: 10 }, mistral: { waitMs: 10 } },
    });
    assert.deepEqual(obsoleteDrains(v), ["a", "c"]);
  });
});

describe("the expected wait of a queued request (expectedWaitMs)", () => {
  const q = (position: number, more: { embeddingOnly?: boolean; candidates?: string[] } = {}) => ({
    model: "llama",
    position,
    candidates: new Set(more.candidates ?? ["a", "b", "c"]),
    embeddingOnly: more.embeddingOnly ?? false,
  });
  const nodes = [
    node("a", { parallel: 2, models: { llama: 2 } }),
    node("b", { parallel: 2, models: { llama: 2 } }),
    node("c", { parallel: 2, models: { qwen: 1 } }),
  ];

  it("is unknown before a request of the model finished", () => {
    assert.equal(expectedWaitMs(view({ nodes }), q(1)), undefined);
  });

  it("is rounds of the service time over the model's slots on the nodes where it is loaded", () => {
    const v = view({ nodes, serviceMs: { llama: 1_000 } });
    assert.deepEqual(
      [1, 4, 5, 8, 9].map((p) => expectedWaitMs(v, q(p))),
      [1_000, 1_000, 2_000, 2_000, 3_000],
    );
  });

  it("adds one load when the model is loaded on none of its nodes", () => {
    const v = view({
      nodes: [node("c", { models: { qwen: 1 } })],
      serviceMs: { llama: 1_000 },
      loadMs: { llama: 3_000 },
    });
    assert.equal(expectedWaitMs(v, q(2)), 5_000);
  });

  it("adds nothing for the load before a load was measured", () => {
    const v = view({ nodes: [node("c", { models: { qwen: 1 } })], serviceMs: { llama: 1_000 } });
    assert.equal(expectedWaitMs(v, q(2)), 2_000);
  });

  it("counts neither unhealthy nodes nor nodes without the model installed", () => {
    const v = view({
      nodes: [
        node("a", { parallel: 2, healthy: false, models: { llama: 0 } }),
        node("b", { parallel: 2, models: { llama: 0 } }),
        node("c", { parallel: 2, models: { llama: 0 } }),
      ],
      serviceMs: { llama: 1_000 },
    });
    assert.equal(expectedWaitMs(v, q(3, { candidates: ["a", "b"] })), 2_000);
  });

  it("counts the slots lowered where a node was seen to serve fewer", () => {
    const lowered = [node("a", { parallel: 2, slotLimits: { llama: 1 }, models: { llama: 1 } })];
    const v = view({ nodes: lowered, serviceMs: { llama: 1_000 } });
    assert.deepEqual(
      [1, 2].map((p) => expectedWaitMs(v, q(p, { candidates: ["a"] }))),
      [1_000, 2_000],
    );
  });

  it("counts one slot per node for an embedding-only model", () => {
    const v = view({ nodes, serviceMs: { llama: 1_000 } });
    assert.equal(expectedWaitMs(v, q(4, { embeddingOnly: true })), 2_000);
  });
});

describe("learning service and load times (learnTimes)", () => {
  it("takes the first sample as it is, the load time out of the service time", () => {
    assert.deepEqual(learnTimes({ serviceMs: undefined, loadMs: undefined }, { heldMs: 1_500, loadMs: 500 }), {
      serviceMs: 1_000,
      loadMs: 500,
    });
  });

  it("smooths later samples (a new one weighs 0.2)", () => {
    assert.deepEqual(learnTimes({ serviceMs: 1_000, loadMs: 500 }, { heldMs: 3_000, loadMs: 1_000 }), {
      serviceMs: 1_200,
      loadMs: 600,
    });
  });

  it("does not count a load of 50 ms or less as a load (the model was resident)", () => {
    assert.deepEqual(learnTimes({ serviceMs: undefined, loadMs: 500 }, { heldMs: 100, loadMs: 50 }), {
      serviceMs: 50,
      loadMs: 500,
    });
  });

  it("never learns a negative service time", () => {
    assert.equal(learnTimes({ serviceMs: undefined, loadMs: undefined }, { heldMs: 10, loadMs: 80 }).serviceMs, 0);
  });
});

describe("the order of admission (queue-order-policy)", () => {
  it("puts a request after everyone of the same or a higher priority in its model's queue", () => {
    const queue = [5, 5, 0, 0].map((priority) => ({ priority }));
    assert.deepEqual(
      [10, 5, 1, 0, -1].map((p) => queueInsertIndex(queue, p)),
      [0, 2, 2, 4, 4],
    );
    assert.equal(queueInsertIndex([], 3), 0);
  });

  it("offers free slots to the queue heads highest priority first, then the one waiting longest", () => {
    const heads = [
      { id: "low-old", priority: 0, enqueuedAt: 1 },
      { id: "high-new", priority: 5, enqueuedAt: 9 },
      { id: "low-new", priority: 0, enqueuedAt: 5 },
      { id: "high-old", priority: 5, enqueuedAt: 3 },
    ];
    assert.deepEqual(
      heads.sort(compareHeads).map((h) => h.id),
      ["high-old", "high-new", "low-old", "low-new"],
    );
  });
});
