import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { Code } from "@connectrpc/connect";
import { ThinkMode } from "../src/gen/ollama/gateway/v1/types_pb.js";
import { fleet, loads, reason, run } from "./helpers/fleet.js";
import type { Fleet, GenerateInit } from "./helpers/fleet.js";

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

describe("moving models between nodes as demand shifts", { timeout: 60_000 }, () => {
  it("serves a model loaded nowhere while two busier models keep every node occupied", async () => {
    const f = await fleet(2, { loadMs: 100, tokenMs: 10 });
    const stop = { now: false };
    try {
      const busy = [closedLoop(f, "llama3.2", 2, stop), closedLoop(f, "qwen3", 2, stop)];
      await sleep(800); // both nodes taken, each with a request waiting behind the running one
      const seen = new Set<string>();
      const watching = (async () => {
        while (!stop.now) {
          for (const n of (await f.status.getStatus({})).nodes)
            if (n.drainingFor) seen.add(`${n.name}:${n.drainingFor}`);
          await sleep(15);
        }
      })();
      const started = Date.now();
      const rare = await run(
        f.client,
        { model: "llava", prompt: "a rare request", options: { numPredict: 4 } },
        { timeoutMs: 5_000 },
      );
      const took = Date.now() - started;
      stop.now = true;
      const [a, b] = await Promise.all(busy);
      await watching;
      assert.equal(rare.error, undefined, `llava: ${rare.error?.message}`);
      assert.ok(took < 4_000, `llava waited ${took} ms`);
      assert.deepEqual(errors([...a!, ...b!]), [], "the busy models kept being served");
      assert.ok(
        [...seen].some((s) => s.endsWith(":llava:latest")),
        `GetStatus showed the drain: ${[...seen].join(", ") || "nothing"}`,
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
      const busy = [closedLoop(f, "llama3.2", 2, stop), closedLoop(f, "qwen3", 2, stop)];
      await sleep(800);
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

  it("does not move models while every queue stays shorter than a load", async () => {
    const f = await fleet(2, { loadMs: 400, tokenMs: 5 });
    const stop = { now: false };
    try {
      // One node each, then both models busy: two requests each in flight at all times.
      await run(f.client, { model: "llama3.2", prompt: "warm", options: { numPredict: 2 } });
      await run(f.client, { model: "qwen3", prompt: "warm", think: ThinkMode.OFF, options: { numPredict: 2 } });
      const busy = [closedLoop(f, "llama3.2", 2, stop, 4), closedLoop(f, "qwen3", 2, stop, 4)];
      await sleep(2_500);
      stop.now = true;
      const [a, b] = await Promise.all(busy);
      assert.deepEqual(errors([...a!, ...b!]), []);
      assert.ok(
        a!.length > 20 && b!.length > 20,
        `${a!.length} and ${b!.length} requests; loads ${f.sims.map((s) => JSON.stringify(s.stats.loads)).join(" ")}; qwen nodes ${b!.map((r) => r.node).join("")}`,
      );
      assert.equal(loads(f.sims), 2, `loads per node: ${f.sims.map((s) => JSON.stringify(s.stats.loads)).join(" ")}`);
    } finally {
      stop.now = true;
      await f.close();
    }
  });
});

describe("a queue wait budget (QUEUE_MAX_WAIT_MS)", { timeout: 30_000 }, () => {
  it("refuses at once when the expected wait is over the budget, even with a long deadline", async () => {
    const f = await fleet(1, { tokenMs: 20 }, { QUEUE_MAX_WAIT_MS: "300" });
    try {
      await run(f.client, { model: "llama3.2", prompt: "learn", options: { numPredict: 30 } }); // ~600 ms of service
      const long = run(f.client, { model: "llama3.2", prompt: "long", options: { numPredict: 30 } });
      await sleep(50);
      const started = Date.now();
      const refused = await run(
        f.client,
        { model: "llama3.2", prompt: "late", options: { numPredict: 30 } },
        { timeoutMs: 30_000 },
      );
      assert.equal(refused.error?.code, Code.ResourceExhausted);
      assert.equal(reason(refused.error), "QUEUE_WAIT_TOO_LONG");
      assert.ok(Date.now() - started < 250, "refused at once");
      assert.equal((await long).error, undefined);
    } finally {
      await f.close();
    }
  });

  it("takes a request out of the queue when it has waited the budget, before it reaches Ollama", async () => {
    const f = await fleet(1, { tokenMs: 20 }, { QUEUE_MAX_WAIT_MS: "300" });
    try {
      // Nothing measured yet, so the second request is admitted, then times out in the queue.
      const long = run(f.client, { model: "llama3.2", prompt: "long", options: { numPredict: 50 } });
      await sleep(50);
      const started = Date.now();
      const queued = await run(
        f.client,
        { model: "llama3.2", prompt: "queued", options: { numPredict: 5 } },
        { timeoutMs: 30_000 },
      );
      const waited = Date.now() - started;
      assert.equal(queued.error?.code, Code.ResourceExhausted);
      assert.equal(reason(queued.error), "QUEUE_WAIT_TOO_LONG");
      assert.ok(waited >= 250 && waited < 900, `left the queue after ${waited} ms`);
      assert.equal((await long).error, undefined);
      assert.equal(f.sims[0]!.stats.requests["/api/generate"], 1, "only the running request reached the simulator");
      assert.deepEqual((await f.status.getStatus({})).queues, []);
    } finally {
      await f.close();
    }
  });
});
