import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  deadlineTooShort,
  expectedWaitTooLong,
  gatewayOverloaded,
  modelNotFound,
  noHealthyNodeFor,
  queueFull,
  rateLimited,
  waitedTooLong,
} from "../src/errors/domain-errors.js";
import { parseAliases } from "../src/config/load-config.js";
import {
  aliasUsable,
  fallbackReason,
  pickTarget,
  resolveModel,
  stableUnit,
  usableAlias,
} from "../src/routing/model-aliases.js";
import type { AliasMap, ModelAlias } from "../src/routing/model-aliases.js";

// Alias resolution and fallback choice are pure functions (README, "Model aliases"): each case is
// an alias table and the route expected for it.

const CHAT: ModelAlias = {
  name: "chat",
  targets: [
    { model: "llama3.2:3b", weight: 90 },
    { model: "qwen3:4b", weight: 10 },
  ],
  fallbacks: ["qwen3:4b", "smollm2:135m"],
};
const ALIASES: AliasMap = new Map([["chat:latest", CHAT]]);

/** A deterministic sequence of numbers in [0, 1) (a linear congruential generator). */
function seeded(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

describe("model aliases: picking a target", () => {
  const cases: { u: number; expected: string | undefined }[] = [
    { u: 0, expected: "llama3.2:3b" },
    { u: 0.8999, expected: "llama3.2:3b" },
    { u: 0.9, expected: "qwen3:4b" },
    { u: 0.9999, expected: "qwen3:4b" },
  ];
  for (const c of cases) {
    it(`a point at ${c.u} of the 90/10 weights picks ${c.expected}`, () => {
      assert.equal(pickTarget(CHAT.targets, c.u), c.expected);
    });
  }

  it("no target (or only zero weights) picks nothing", () => {
    assert.equal(pickTarget([], 0.5), undefined);
    assert.equal(pickTarget([{ model: "a", weight: 0 }], 0.5), undefined);
  });

  it("a name that is no alias is served as written, without fallbacks", () => {
    const route = resolveModel("llama3.2:3b", ALIASES, undefined, Math.random);
    assert.equal(route.alias, undefined);
    assert.deepEqual(route.models, ["llama3.2:3b"]);
  });

  it("an alias is found under its canonical name (chat = chat:latest, any case)", () => {
    assert.equal(resolveModel("CHAT", ALIASES, "s", Math.random).alias, CHAT);
    assert.equal(resolveModel("chat:latest", ALIASES, "s", Math.random).alias, CHAT);
  });

  it("over 1,000 calls without a session key the 90/10 weights hold within a wide binomial bound", () => {
    const random = seeded(42);
    let canary = 0;
    for (let i = 0; i < 1000; i++) {
      if (resolveModel("chat", ALIASES, undefined, random).models[0] === "qwen3:4b") canary++;
    }
    // Mean 100, standard deviation about 9.5: 5 deviations either side.
    assert.ok(canary > 52 && canary < 148, `canary served ${canary} of 1000`);
  });

  it("over 1,000 different session keys the 90/10 weights hold too (the hash spreads keys)", () => {
    let canary = 0;
    for (let i = 0; i < 1000; i++) {
      if (resolveModel("chat", ALIASES, `session-${i}`, Math.random).models[0] === "qwen3:4b") canary++;
    }
    assert.ok(canary > 52 && canary < 148, `canary served ${canary} of 1000`);
  });

  it("one session key always picks the same target, whatever the random source says", () => {
    for (let i = 0; i < 50; i++) {
      const key = `conversation-${i}`;
      const first = resolveModel("chat", ALIASES, key, () => 0).models[0];
      for (const r of [0.1, 0.5, 0.95, 0.999]) {
        assert.equal(resolveModel("chat", ALIASES, key, () => r).models[0], first);
      }
    }
  });

  it("the stable hash is in [0, 1) and depends on the key only", () => {
    assert.equal(stableUnit("a"), stableUnit("a"));
    assert.notEqual(stableUnit("a"), stableUnit("b"));
    for (let i = 0; i < 100; i++) {
      const u = stableUnit(String(i));
      assert.ok(u >= 0 && u < 1);
    }
  });
});

describe("model aliases: fallback order", () => {
  it("the picked target comes first, then the fallbacks in order, each model once", () => {
    assert.deepEqual(resolveModel("chat", ALIASES, undefined, () => 0).models, [
      "llama3.2:3b",
      "qwen3:4b",
      "smollm2:135m",
    ]);
    assert.deepEqual(resolveModel("chat", ALIASES, undefined, () => 0.95).models, ["qwen3:4b", "smollm2:135m"]);
  });

  it("targets and fallbacks the caller may not use are left out before the pick", () => {
    const allowed = (m: string): boolean => m !== "llama3.2:3b";
    for (const r of [0, 0.5, 0.99]) {
      assert.deepEqual(resolveModel("chat", ALIASES, undefined, () => r, allowed).models, ["qwen3:4b", "smollm2:135m"]);
    }
  });

  it("a caller allowed none of the alias's models gets an empty route", () => {
    assert.deepEqual(resolveModel("chat", ALIASES, undefined, Math.random, () => false).models, []);
  });

  // What ListModels and GetModel show of an alias is what a call may use (one rule).
  const usable: { name: string; allowed: (m: string) => boolean; targets: string[]; fallbacks: string[] }[] = [
    {
      name: "everything",
      allowed: () => true,
      targets: ["llama3.2:3b", "qwen3:4b"],
      fallbacks: ["qwen3:4b", "smollm2:135m"],
    },
    {
      name: "all but the main target",
      allowed: (m) => m !== "llama3.2:3b",
      targets: ["qwen3:4b"],
      fallbacks: ["qwen3:4b", "smollm2:135m"],
    },
    { name: "only a fallback", allowed: (m) => m === "smollm2:135m", targets: [], fallbacks: ["smollm2:135m"] },
    { name: "nothing", allowed: () => false, targets: [], fallbacks: [] },
  ];
  for (const c of usable) {
    it(`a caller allowed ${c.name} is shown targets [${c.targets.join(", ")}] and fallbacks [${c.fallbacks.join(", ")}]`, () => {
      const u = usableAlias(CHAT, c.allowed);
      assert.deepEqual(
        u.targets.map((t) => t.model),
        c.targets,
      );
      assert.deepEqual(u.fallbacks, c.fallbacks);
      assert.equal(u.name, "chat");
      assert.equal(aliasUsable(u), c.targets.length + c.fallbacks.length > 0, "usable while a model is left");
      const route = resolveModel("chat", ALIASES, undefined, () => 0.5, c.allowed).models;
      assert.ok(
        route.every((m) => [...c.targets, ...c.fallbacks].includes(m)),
        "a call uses only what is shown",
      );
    });
  }

  it("keeps each remaining target's weight as configured", () => {
    assert.deepEqual(usableAlias(CHAT, (m) => m !== "llama3.2:3b").targets, [{ model: "qwen3:4b", weight: 10 }]);
  });

  const reasons: { error: unknown; expected: string | undefined }[] = [
    { error: queueFull("m", 3, 100), expected: "queue-full" },
    { error: deadlineTooShort("m", 5000), expected: "deadline-too-short" },
    { error: expectedWaitTooLong("m", 5000, 100), expected: "queue-wait-too-long" },
    { error: waitedTooLong("m", 100, undefined), expected: "queue-wait-too-long" },
    { error: noHealthyNodeFor("m"), expected: "no-healthy-node" },
    { error: modelNotFound("m"), expected: "model-not-found" },
    { error: gatewayOverloaded(10), expected: undefined },
    { error: rateLimited("p", 1, 1, 1000), expected: undefined },
    { error: new Error("plain"), expected: undefined },
  ];
  for (const c of reasons) {
    const name = c.error instanceof Error ? c.error.message : String(c.error);
    it(`an admission error "${name}" ${c.expected ? `allows a fallback (${c.expected})` : "allows no fallback"}`, () => {
      assert.equal(fallbackReason(c.error), c.expected);
    });
  }
});

describe("model aliases: the config file's aliases section", () => {
  it("reads weighted targets, fallbacks and the one-model shorthand, keyed by canonical name", () => {
    const problems: string[] = [];
    const aliases = parseAliases(
      {
        chat: { targets: { "llama3.2:3b": 90, "qwen3:4b": 10 }, fallbacks: ["smollm2:135m"] },
        "embed:v2": "nomic-embed-text",
      },
      problems,
    );
    assert.deepEqual(problems, []);
    assert.deepEqual(aliases.get("chat:latest"), {
      name: "chat",
      targets: [
        { model: "llama3.2:3b", weight: 90 },
        { model: "qwen3:4b", weight: 10 },
      ],
      fallbacks: ["smollm2:135m"],
    });
    assert.deepEqual(aliases.get("embed:v2")?.targets, [{ model: "nomic-embed-text", weight: 1 }]);
  });

  const invalid: { name: string; raw: unknown; problem: RegExp }[] = [
    { name: "not an object", raw: [], problem: /aliases must be an object/ },
    { name: "no targets", raw: { chat: { fallbacks: [] } }, problem: /aliases\.chat must be a model name/ },
    { name: "an empty target list", raw: { chat: { targets: {} } }, problem: /at least one model/ },
    { name: "a zero weight", raw: { chat: { targets: { a: 0 } } }, problem: /weight above 0/ },
    { name: "fallbacks not a list", raw: { chat: { targets: { a: 1 }, fallbacks: "b" } }, problem: /array/ },
    { name: "an unknown field", raw: { chat: { targets: { a: 1 }, weights: {} } }, problem: /not a known field/ },
    {
      name: "an alias naming an alias",
      raw: { chat: "fast", fast: "llama3.2:1b" },
      problem: /an alias must name models/,
    },
  ];
  for (const c of invalid) {
    it(`refuses ${c.name}, saying why`, () => {
      const problems: string[] = [];
      parseAliases(c.raw, problems);
      assert.ok(
        problems.some((p) => c.problem.test(p)),
        problems.join("; "),
      );
    });
  }
});
