import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { Code } from "@connectrpc/connect";
import { ThinkMode } from "../src/gen/ollama/gateway/v1/types_pb.js";
import { fleet, reason, run } from "./helpers/fleet.js";
import type { Fleet, GenerateInit } from "./helpers/fleet.js";
import { holdSlot } from "./helpers/held-request.js";
import { eventually } from "./helpers/sim-http.js";

/** Keeps `clients` requests for `model` in flight until `stop` is set; returns every outcome. */
async function closedLoop(
  f: Fleet,
  model: string,
  clients: number,
  stop: { now: boolean },
  tokens = 8,
): Promise<Awaited<ReturnType<typeof run>>[]> {
  const out: Awaited<ReturnType<typeof run>>[] = [];
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      for (let i = 0; !stop.now; i++) {
        const req: GenerateInit = {
          model,
          prompt: `${model} ${c} ${i}`,
          think: ThinkMode.OFF,
          options: { numPredict: tokens },
        };
        out.push(await run(f.client, req, { timeoutMs: 10_000 }));
      }
    }),
  );
  return out;
}

const errors = (rs: Awaited<ReturnType<typeof run>>[]): string[] =>
  rs.filter((r) => r.error).map((r) => `${r.error!.code} ${r.error!.message}`);

/** Every drain the scheduler starts from now on, as "node:model" (the hook sees even short ones). */
function drains(f: Fleet): string[] {
  const seen: string[] = [];
  f.gw.scheduler.onDrainChange((list) => {
    for (const d of list) if (!seen.includes(`${d.node}:${d.model}`)) seen.push(`${d.node}:${d.model}`);
  });
  return seen;
}

/** Resolves once the two busy models are loaded one on each node and both have requests waiting. */
async function bothNodesBusy(f: Fleet): Promise<void> {
  const loaded = (): string[] =>
    f.sims.map((s) =>
      s
        .loaded()
        .map((r) => r.name)
        .join("+"),
    );
  const busy = (): boolean =>
    [...loaded()].sort().join(",") === "llama3.2:latest,qwen3:latest" && f.gw.scheduler.queues().length === 2;
  assert.ok(
    await eventually(busy, 10_000),
    `loaded ${JSON.stringify(loaded())}, queues ${JSON.stringify(f.gw.scheduler.queues())}`,
  );
}

describe("moving models between nodes as demand shifts", { timeout: 60_000 }, () => {
  it("serves a model loaded nowhere while two busier models keep every node occupied", async () => {
    const f = await fleet(2, { loadMs: 100, tokenMs: 10 });
    const stop = { now: false };
    try {
      const seen = drains(f);
      const busy = [closedLoop(f, "llama3.2", 2, stop), closedLoop(f, "qwen3", 2, stop)];
      await bothNodesBusy(f);
      const rare = await run(
        f.client,
        { model: "llava", prompt: "a rare request", options: { numPredict: 4 } },
        { timeoutMs: 10_000 },
      );
      stop.now = true;
      const [a, b] = await Promise.all(busy);
      assert.equal(rare.error, undefined, `llava: ${rare.error?.message}`);
      assert.deepEqual(errors([...a!, ...b!]), [], "the busy models kept being served");
      assert.ok(
        seen.some((s) => s.endsWith(":llava:latest")),
        `a node was drained for llava: ${seen.join(", ") || "nothing"}`,
      );
    } finally {
      stop.now = true;
      await f.close();
    }
  });

  it("with REBALANCE=off, leaves that request waiting while the busy models hold every node", async () => {
    const f = await fleet(2, { loadMs: 100, tokenMs: 10 }, { REBALANCE: "off" });
    const stop = { now: false };
    try {
      const seen = drains(f);
      const busy = [closedLoop(f, "llama3.2", 2, stop), closedLoop(f, "qwen3", 2, stop)];
      await bothNodesBusy(f);
      const rare = await run(
        f.client,
        { model: "llava", prompt: "a rare request", options: { numPredict: 4 } },
        { timeoutMs: 1_500 },
      );
      stop.now = true;
      await Promise.all(busy);
      assert.equal(rare.error?.code, Code.DeadlineExceeded, "nothing made room for it");
      assert.equal(
        f.sims.reduce((n, s) => n + (s.stats.loads["llava:latest"] ?? 0), 0),
        0,
      );
      assert.deepEqual(seen, [], "no node was drained");
    } finally {
      stop.now = true;
      await f.close();
    }
  });

  it("loads a hot model on a second node when its queue waits longer than a load, taking an idle node", async () => {
    const f = await fleet(2, { loadMs: 150, tokenMs: 10 });
    try {
      // llama3.2 on one node, qwen3 on the other, then qwen3 goes quiet.
      const first = await run(f.client, { model: "llama3.2", prompt: "warm", options: { numPredict: 2 } });
      const other = await run(f.client, {
        model: "qwen3",
        prompt: "warm",
        think: ThinkMode.OFF,
        options: { numPredict: 2 },
      });
      assert.notEqual(first.node, other.node);
      const burst = await Promise.all(
        Array.from({ length: 16 }, (_, i) =>
          run(f.client, { model: "llama3.2", prompt: `burst ${i}`, options: { numPredict: 20 } }),
        ),
      );
      assert.deepEqual(errors(burst), []);
      const byNode = new Map<string, number>();
      for (const r of burst) byNode.set(r.node!, (byNode.get(r.node!) ?? 0) + 1);
      assert.ok((byNode.get(other.node!) ?? 0) >= 3, `served by ${JSON.stringify([...byNode])}`);
      const idx = Number(other.node!.slice(1));
      assert.equal(f.sims[idx]!.stats.loads["llama3.2:latest"], 1, "llama3.2 was loaded on the idle node");
    } finally {
      await f.close();
    }
  });
});

describe("a queue wait budget (QUEUE_MAX_WAIT_MS)", { timeout: 30_000 }, () => {
  it("refuses at once when the expected wait is over the budget, even with a long deadline", async () => {
    const f = await fleet(1, { tokenMs: 20 }, { QUEUE_MAX_WAIT_MS: "300" });
    try {
      // Teach the gateway that a request holds its slot at least 30 tokens of 20 ms.
      await run(f.client, { model: "llama3.2", prompt: "learn", options: { numPredict: 30 } });
      const holder = await holdSlot(f, { model: "llama3.2", prompt: "holder" });
      const refused = await run(
        f.client,
        { model: "llama3.2", prompt: "late", options: { numPredict: 30 } },
        { timeoutMs: 30_000 },
      );
      assert.equal(refused.error?.code, Code.ResourceExhausted);
      assert.equal(reason(refused.error), "QUEUE_WAIT_TOO_LONG");
      assert.match(refused.error!.message, /expected wait/, "refused on the prediction, not after waiting");
      assert.equal(f.sims[0]!.stats.requests["/api/generate"], 2, "it never reached Ollama");
      await holder.release();
    } finally {
      await f.close();
    }
  });

  it("takes a request out of the queue when it has waited the budget, before it reaches Ollama", async () => {
    const f = await fleet(1, {}, { QUEUE_MAX_WAIT_MS: "300" });
    try {
      // Nothing measured yet, so the request is admitted, then leaves the queue at the budget.
      const holder = await holdSlot(f, { model: "llama3.2", prompt: "holder" });
      const started = performance.now();
      const queued = await run(
        f.client,
        { model: "llama3.2", prompt: "queued", options: { numPredict: 5 } },
        { timeoutMs: 30_000 },
      );
      const waited = performance.now() - started;
      assert.equal(queued.error?.code, Code.ResourceExhausted);
      assert.equal(reason(queued.error), "QUEUE_WAIT_TOO_LONG");
      assert.match(queued.error!.message, /waited 300 ms/);
      assert.ok(waited >= 250, `it waited the budget (${Math.round(waited)} ms)`);
      assert.equal(f.sims[0]!.stats.requests["/api/generate"], 1, "only the held request reached the simulator");
      assert.deepEqual((await f.status.getStatus({})).queues, []);
      await holder.release();
    } finally {
      await f.close();
    }
  });
});
