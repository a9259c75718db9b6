import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  borrowBounds,
  budgetBytes,
  createCapacity,
  evictionsFor,
  fitsForSure,
  maxLoaded,
  observeLoad,
  observeResidency,
  residencyCertain,
} from "../src/routing/capacity-model.js";
import type { NodeCapacity, ResidentModel, ResidentUse } from "../src/routing/capacity-model.js";
import {
  createSlotLearning,
  observeSlots,
  ollamaTimings,
  SLOT_EVIDENCE,
  SLOT_WINDOW,
  slotWaitMs,
  waitedForSlot,
} from "../src/routing/slot-learning.js";
import type { OllamaTimings, SlotLearning } from "../src/routing/slot-learning.js";

// The capacity model and the slot learning are pure: each case is a node's history and what the
// gateway should conclude from it (README, "Routing across a fleet", Capacity).

const GB = 1e9;
const T = 1_000_000;

/** A model /api/ps lists: `gb` loaded, all of it on the GPU unless `vramGb` says less. */
function ps(name: string, gb: number, vramGb = gb): ResidentModel {
  return { name, sizeBytes: gb * GB, vramBytes: vramGb * GB };
}

/** A node configured for `maxLoaded` models that went through these observations, in order. */
function history(
  maxLoaded: number,
  steps: ({ seen: ResidentModel[] } | { loaded: string; before: ResidentModel[]; after: ResidentModel[] })[] = [],
  vramGb?: number,
): NodeCapacity {
  let c = createCapacity({ maxLoadedModels: maxLoaded, vramBytes: vramGb === undefined ? undefined : vramGb * GB });
  steps.forEach((s, i) => {
    c =
      "seen" in s
        ? observeResidency(c, s.seen, T + i)
        : observeLoad(c, { model: s.loaded, before: s.before, after: s.after, now: T + i });
  });
  return c;
}

/** Models resident on a node: a number is its requests running (used in this order: first = least recently). */
function resident(spec: Record<string, number>): Map<string, ResidentUse> {
  return new Map(Object.entries(spec).map(([name, inFlight], i) => [name, { inFlight, lastUsed: T + i }]));
}

// The fleet: VRAM for one of llama (3 GB), llava (6 GB) and qwen (6.5 GB), a configured count of 3.
const learnedOne = history(3, [
  { seen: [ps("llama", 3)] },
  { loaded: "qwen", before: [ps("llama", 3)], after: [ps("qwen", 6.5)] },
]);

describe("a node's capacity model", () => {
  describe("learning from what /api/ps shows and what Ollama evicts", () => {
    const cases: { name: string; node: NodeCapacity; budgetGb: number | undefined; maxLoaded?: number }[] = [
      {
        name: "knows no budget before anything was seen (the count alone limits)",
        node: history(3),
        budgetGb: undefined,
      },
      { name: "starts from the configured vramBytes", node: history(3, [], 24), budgetGb: 24 },
      {
        name: "still knows no budget after seeing models loaded together (no eviction yet)",
        node: history(3, [{ seen: [ps("llama", 3), ps("qwen", 6.5)] }]),
        budgetGb: undefined,
      },
      {
        name: "after an eviction, uses the largest total seen to fit",
        node: learnedOne,
        budgetGb: 6.5,
      },
      {
        name: "is loosened by co-residence seen later",
        node: history(3, [
          { seen: [ps("llama", 3)] },
          { loaded: "qwen", before: [ps("llama", 3)], after: [ps("qwen", 6.5)] },
          { loaded: "mini", before: [ps("qwen", 6.5)], after: [ps("qwen", 6.5), ps("mini", 0.5)] },
        ]),
        budgetGb: 7,
      },
      {
        name: "learns nothing about memory from an eviction the configured count explains",
        node: history(1, [
          { seen: [ps("llama", 3)] },
          { loaded: "qwen", before: [ps("llama", 3)], after: [ps("qwen", 6.5)] },
        ]),
        budgetGb: undefined,
        maxLoaded: 1,
      },
      {
        name: "keeps the configured budget while the evidence agrees with it",
        node: history(3, [{ loaded: "qwen", before: [ps("llama", 3)], after: [ps("qwen", 6.5)] }], 8),
        budgetGb: 8,
      },
      {
        name: "tightens a configured budget that an eviction proved too large",
        node: history(3, [{ loaded: "qwen", before: [ps("llama", 3)], after: [ps("qwen", 6.5)] }], 24),
        budgetGb: 9.5 - 1e-9,
      },
      {
        name: "loosens a configured budget that co-residence proved too small",
        node: history(3, [{ seen: [ps("llama", 3), ps("qwen", 6.5)] }], 8),
        budgetGb: 9.5,
      },
      {
        name: "reads a partly offloaded model as the budget it filled, and its full size as too much",
        node: history(3, [{ seen: [ps("big", 12, 7)] }]),
        budgetGb: 7,
      },
      {
        name: "counts the whole size as held on a CPU-only node (size_vram 0)",
        node: history(3, [
          { seen: [ps("llama", 3, 0)] },
          { loaded: "qwen", before: [ps("llama", 3, 0)], after: [ps("qwen", 6.5, 0)] },
        ]),
        budgetGb: 6.5,
      },
      {
        name: "learns a smaller count when Ollama evicts although the total was known to fit",
        node: history(3, [
          { seen: [ps("a", 1), ps("b", 1)] },
          { loaded: "c", before: [ps("a", 1)], after: [ps("c", 0.5)] },
        ]),
        budgetGb: undefined,
        maxLoaded: 1,
      },
      {
        name: "raises a learned count again when more models are seen together",
        node: history(3, [
          { seen: [ps("a", 1), ps("b", 1)] },
          { loaded: "c", before: [ps("a", 1)], after: [ps("c", 0.5)] },
          { seen: [ps("a", 0.5), ps("c", 0.5)] },
        ]),
        budgetGb: undefined,
        maxLoaded: 2,
      },
      {
        name: "drops old bounds that new co-residence contradicts (the node changed)",
        node: history(3, [
          { seen: [ps("llama", 3)] },
          { loaded: "qwen", before: [ps("llama", 3)], after: [ps("qwen", 6.5)] },
          { seen: [ps("qwen", 6.5), ps("llama", 3), ps("mini", 0.5)] },
        ]),
        budgetGb: undefined,
      },
    ];
    for (const c of cases) {
      it(c.name, () => {
        const budget = budgetBytes(c.node);
        if (c.budgetGb === undefined) assert.equal(budget, undefined);
        else assert.ok(Math.abs((budget ?? Number.NaN) - c.budgetGb * GB) < 2, `budget ${budget}`);
        assert.equal(maxLoaded(c.node), c.maxLoaded ?? 3);
      });
    }

    it("records the evidence newest first, with the models and the total", () => {
      const c = history(3, [
        { seen: [ps("llama", 3)] },
        { loaded: "qwen", before: [ps("llama", 3)], after: [ps("qwen", 6.5)] },
      ]);
      assert.deepEqual(
        c.evidence.map((e) => [e.kind, e.models, e.totalBytes / GB]),
        [
          ["evicted", ["qwen", "llama"], 9.5],
          ["fits", ["qwen"], 6.5],
          ["fits", ["llama"], 3],
        ],
      );
      assert.equal(c.overflowBytes, 9.5 * GB);
      assert.deepEqual(
        [...c.sizes],
        [
          ["llama", 3 * GB],
          ["qwen", 6.5 * GB],
        ],
      );
    });

    it("keeps at most eight pieces of evidence", () => {
      let c = createCapacity({ maxLoadedModels: 3 });
      for (let i = 1; i <= 12; i++) c = observeResidency(c, [ps("m", i)], T + i);
      assert.equal(c.evidence.length, 8);
      assert.equal(c.evidence[0]!.totalBytes, 12 * GB);
    });

    it("never changes the model it was given (plain data, safe to share)", () => {
      const before = history(3, [{ seen: [ps("llama", 3)] }]);
      const frozen = JSON.stringify({ ...before, sizes: [...before.sizes] });
      observeLoad(before, { model: "qwen", before: [ps("llama", 3)], after: [ps("qwen", 6.5)], now: T });
      assert.equal(JSON.stringify({ ...before, sizes: [...before.sizes] }), frozen);
    });
  });

  describe("borrowing the bound of a node configured alike", () => {
    const fresh = (): NodeCapacity => history(3, [{ seen: [ps("llama", 3)] }]);

    it("takes the upper bound of a node that saw an eviction, while it has seen none itself", () => {
      const c = borrowBounds(fresh(), learnedOne, "n0", T);
      assert.equal(c.overflowBytes, 9.5 * GB);
      assert.equal(c.borrowedFrom, "n0");
      assert.equal(budgetBytes(c), 3 * GB, "what fits is still its own: the largest total seen here");
      assert.deepEqual(evictionsFor(c, resident({ llama: 0 }), "qwen", 6.5 * GB), ["llama"]);
      assert.deepEqual(
        c.evidence.map((e) => [e.kind, e.from]),
        [
          ["borrowed", "n0"],
          ["fits", undefined],
        ],
      );
    });

    it("borrows from no node configured otherwise, nor when either has a configured budget", () => {
      assert.equal(borrowBounds(history(2), learnedOne, "n0", T).borrowedFrom, undefined, "another count");
      assert.equal(borrowBounds(history(3, [], 24), learnedOne, "n0", T).borrowedFrom, undefined, "configured");
      const configured = history(3, [{ loaded: "qwen", before: [ps("llama", 3)], after: [ps("qwen", 6.5)] }], 8);
      assert.equal(borrowBounds(fresh(), configured, "n0", T).borrowedFrom, undefined);
    });

    it("keeps its own bound, and never lends a borrowed one", () => {
      assert.equal(borrowBounds(learnedOne, history(3, [{ seen: [ps("x", 1)] }]), "n1", T), learnedOne);
      const borrowed = borrowBounds(fresh(), learnedOne, "n0", T);
      assert.equal(borrowBounds(fresh(), borrowed, "n1", T).borrowedFrom, undefined);
    });

    it("replaces a borrowed bound with its own eviction", () => {
      const borrowed = borrowBounds(fresh(), learnedOne, "n0", T);
      const own = observeLoad(borrowed, { model: "llava", before: [ps("llama", 3)], after: [ps("llava", 6)], now: T });
      assert.equal(own.borrowedFrom, undefined);
      assert.equal(own.overflowBytes, 9 * GB);
      assert.equal(own.evidence[0]!.kind, "evicted");
    });

    it("drops a borrowed bound its own co-residence contradicts, and borrows no more", () => {
      const borrowed = borrowBounds(fresh(), learnedOne, "n0", T);
      const bigger = observeResidency(borrowed, [ps("llama", 3), ps("qwen", 6.5)], T);
      assert.equal(bigger.overflowBytes, undefined);
      assert.equal(bigger.borrowedFrom, undefined);
      assert.equal(bigger.mayBorrow, false);
      assert.equal(borrowBounds(bigger, learnedOne, "n0", T), bigger);
    });
  });

  describe("which models would leave for another (evictionsFor)", () => {
    const cases: {
      name: string;
      node: NodeCapacity;
      loaded: Record<string, number>;
      model: string;
      hintGb?: number;
      expect: string[];
    }[] = [
      {
        name: "none while the count has room and no budget is known",
        node: history(3),
        loaded: { llama: 0 },
        model: "qwen",
        expect: [],
      },
      {
        name: "the least recently used idle model when the count is reached",
        node: history(2),
        loaded: { llama: 0, qwen: 0 },
        model: "llava",
        expect: ["llama"],
      },
      {
        name: "an idle model before a busy one, though the busy one was used earlier",
        node: history(2),
        loaded: { llama: 2, qwen: 0 },
        model: "llava",
        expect: ["qwen"],
      },
      {
        name: "the loaded model when the newcomer does not fit next to it in the learned budget",
        node: learnedOne,
        loaded: { llama: 0 },
        model: "llava",
        hintGb: 6,
        expect: ["llama"],
      },
      {
        name: "as many as the newcomer needs, not more",
        node: history(4, [
          { seen: [ps("a", 2), ps("b", 2), ps("c", 2)] },
          { loaded: "big", before: [ps("a", 2), ps("b", 2), ps("c", 2)], after: [ps("big", 7)] },
        ]),
        loaded: { a: 0, b: 0, c: 0 },
        model: "d",
        hintGb: 3,
        expect: ["a"],
      },
      {
        name: "everything for a model larger than the budget (it still loads, partly offloaded)",
        node: learnedOne,
        loaded: { llama: 0, mini: 0 },
        model: "huge",
        hintGb: 40,
        expect: ["llama", "mini"],
      },
      {
        name: "none for a model that is loaded already",
        node: learnedOne,
        loaded: { qwen: 1 },
        model: "qwen",
        expect: [],
      },
      {
        name: "none on an empty node, whatever the size",
        node: learnedOne,
        loaded: {},
        model: "huge",
        hintGb: 40,
        expect: [],
      },
      {
        name: "the node's own size of the model over the hint",
        node: history(3, [
          { seen: [ps("llama", 3)] },
          { loaded: "qwen", before: [ps("llama", 3)], after: [ps("qwen", 6.5)] },
          { seen: [ps("mini", 0.5)] },
        ]),
        loaded: { mini: 0 },
        model: "llama",
        hintGb: 7,
        expect: [],
      },
    ];
    for (const c of cases) {
      it(c.name, () => {
        const hint = c.hintGb === undefined ? undefined : c.hintGb * GB;
        assert.deepEqual(evictionsFor(c.node, resident(c.loaded), c.model, hint), c.expect);
      });
    }
  });

  describe("known room and a settled picture", () => {
    it("knows an empty node has room, and a node with models only once the total was seen to fit", () => {
      assert.equal(fitsForSure(history(3), resident({}), "llama", 3 * GB), true);
      assert.equal(fitsForSure(history(3), resident({ qwen: 0 }), "llama", 3 * GB), false, "not known yet");
      const seen = history(3, [{ seen: [ps("qwen", 6.5), ps("llama", 3)] }]);
      assert.equal(fitsForSure(seen, resident({ qwen: 0 }), "llama", undefined), true);
      const configured = history(3, [{ seen: [ps("qwen", 6.5)] }], 24);
      assert.equal(
        fitsForSure(configured, resident({ qwen: 0 }), "llama", 3 * GB),
        true,
        "within the configured budget",
      );
      assert.equal(fitsForSure(configured, resident({ qwen: 0 }), "llama", undefined), false, "size unknown");
      const one = history(1, [{ seen: [ps("qwen", 6.5)] }], 24);
      assert.equal(fitsForSure(one, resident({ qwen: 0 }), "llama", 3 * GB), false, "the count is reached");
    });

    it("calls the resident models settled when they are one, or known to fit together", () => {
      assert.equal(residencyCertain(history(3), resident({ qwen: 1 })), true);
      assert.equal(residencyCertain(history(3), resident({ qwen: 1, llama: 0 })), false);
      const seen = history(3, [{ seen: [ps("qwen", 6.5), ps("llama", 3)] }]);
      assert.equal(residencyCertain(seen, resident({ qwen: 1, llama: 0 })), true);
      assert.equal(residencyCertain(learnedOne, resident({ qwen: 1, llama: 0 })), false);
    });
  });
});

describe("parallel slots observed (slot learning)", () => {
  const t = (totalMs: number, evalMs: number, more: Partial<OllamaTimings> = {}): OllamaTimings => ({
    totalMs,
    evalMs,
    loadMs: 1,
    promptEvalMs: 10,
    ...more,
  });

  describe("telling a wait for a slot from the rest", () => {
    const cases: { name: string; timings: OllamaTimings; waitMs: number | undefined; waited: boolean | undefined }[] = [
      { name: "a request that did nothing but work did not wait", timings: t(620, 600), waitMs: 9, waited: false },
      { name: "the time nothing explains is a wait for a slot", timings: t(1220, 600), waitMs: 609, waited: true },
      {
        name: "a short unexplained gap is noise, not a wait",
        timings: t(700, 600),
        waitMs: 89,
        waited: false,
      },
      {
        name: "a gap under a quarter of a long request's work is not a wait",
        timings: t(4300, 2000, { promptEvalMs: 2000 }),
        waitMs: 299,
        waited: false,
      },
      {
        name: "a long prompt is work, not a wait",
        timings: t(5620, 600, { promptEvalMs: 5000 }),
        waitMs: 19,
        waited: false,
      },
      {
        name: "a request that loaded the model cannot tell (its wait is the load)",
        timings: t(4000, 600, { loadMs: 3000 }),
        waitMs: undefined,
        waited: undefined,
      },
      { name: "missing timings cannot tell", timings: { loadMs: 1 }, waitMs: undefined, waited: undefined },
    ];
    for (const c of cases) {
      it(c.name, () => {
        const wait = slotWaitMs(c.timings);
        if (c.waitMs === undefined) assert.equal(wait, undefined);
        else assert.ok(Math.abs((wait ?? Number.NaN) - c.waitMs) < 1e-6, `wait ${wait}`);
        assert.equal(waitedForSlot(c.timings), c.waited);
      });
    }

    it("reads Ollama's nanosecond durations from a final chunk", () => {
      assert.deepEqual(
        ollamaTimings({ total_duration: 2_000_000_000, load_duration: 1_000_000, eval_duration: 5e8, done: true }),
        { totalMs: 2000, loadMs: 1, promptEvalMs: undefined, evalMs: 500 },
      );
    });
  });

  /** The learning after requests that each waited (true) or not (false), with their peaks (default 4). */
  function after(configured: number, samples: { waited: boolean; peak?: number }[]): SlotLearning {
    let s = createSlotLearning(configured);
    samples.forEach((x, i) => {
      s = observeSlots(s, { timings: x.waited ? t(1500, 600) : t(620, 600), peak: x.peak ?? 4, at: T + i }).next;
    });
    return s;
  }

  const waited = (peak = 4) => ({ waited: true, peak });
  const served = (peak = 4) => ({ waited: false, peak });

  const cases: { name: string; configured: number; samples: { waited: boolean; peak?: number }[]; slots: number }[] = [
    {
      name: "keeps the configured slots while nothing waits",
      configured: 4,
      samples: [served(), served(), served()],
      slots: 4,
    },
    {
      name: `keeps them after ${SLOT_EVIDENCE - 1} waits (one or two may be another client)`,
      configured: 4,
      samples: [waited(), served(), waited()],
      slots: 4,
    },
    {
      name: `lowers them after ${SLOT_EVIDENCE} waits among the last ${SLOT_WINDOW} requests that ran next to another`,
      configured: 4,
      samples: [waited(), served(), waited(), served(), waited()],
      slots: 3,
    },
    {
      name: "lowers to the most cautious bound of the evidence (the largest peak − 1)",
      configured: 4,
      samples: [waited(2), waited(4), waited(3)],
      slots: 3,
    },
    {
      name: "lowers step by step while the waits go on",
      configured: 4,
      samples: [waited(4), waited(4), waited(4), waited(3), waited(3), waited(3), waited(2), waited(2), waited(2)],
      slots: 1,
    },
    {
      name: "ignores requests that ran alone (they cannot have waited for the gateway's own)",
      configured: 4,
      samples: [waited(1), waited(1), waited(1), waited(1)],
      slots: 4,
    },
    {
      name: `forgets waits that left the window of ${SLOT_WINDOW}`,
      configured: 4,
      samples: [waited(), waited(), ...Array.from({ length: SLOT_WINDOW - 1 }, () => served()), waited()],
      slots: 4,
    },
    {
      name: "never goes below one slot",
      configured: 2,
      samples: [waited(2), waited(2), waited(2), waited(2)],
      slots: 1,
    },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const s = after(c.configured, c.samples);
      assert.equal(s.slots, c.slots);
      assert.equal(s.configured, c.configured);
    });
  }

  it("says when a request lowered the slots, and counts the waits", () => {
    let s = createSlotLearning(2);
    const results: boolean[] = [];
    for (let i = 0; i < 3; i++) {
      const r = observeSlots(s, { timings: t(1500, 600), peak: 2, at: T + i });
      results.push(r.lowered);
      s = r.next;
    }
    assert.deepEqual(results, [false, false, true]);
    assert.equal(s.waits, 3);
    assert.equal(s.loweredAt, T + 2);
  });
});
