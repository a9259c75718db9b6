import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";
import type { GenerateResponse } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { startSimulator } from "../src/simulator/simulator.js";
import { RetryInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { fleet, loads, reason, run } from "./helpers/fleet.js";

describe("routing across a fleet of Ollama nodes", () => {
  it("keeps sending a model to the node where it is loaded instead of loading it elsewhere", async () => {
    const f = await fleet(3, { loadMs: 100 });
    try {
      const first = await run(f.client, { model: "llama3.2", prompt: "hi", options: { numPredict: 3 } });
      assert.equal(first.error, undefined);
      for (let i = 0; i < 8; i++) {
        const r = await run(f.client, { model: "llama3.2", prompt: `q${i}`, options: { numPredict: 3 } });
        assert.equal(r.node, first.node);
      }
      assert.equal(loads(f.sims), 1, "the model was loaded once in the whole fleet");
    } finally {
      await f.close();
    }
  });

  it("gives two models their own nodes instead of thrashing one node with reloads", async () => {
    const f = await fleet(2, { loadMs: 100, tokenMs: 2 });
    try {
      const jobs: Promise<unknown>[] = [];
      for (let i = 0; i < 12; i++) {
        const model = i % 2 === 0 ? "llama3.2" : "qwen3";
        jobs.push(run(f.client, { model, prompt: `p${i}`, think: 1, options: { numPredict: 5 } }));
      }
      const results = (await Promise.all(jobs)) as Awaited<ReturnType<typeof run>>[];
      assert.deepEqual(
        results.map((r) => r.error?.message),
        results.map(() => undefined),
      );
      assert.equal(loads(f.sims), 2, `loads per node: ${f.sims.map((s) => s.stats.loadsTotal).join(", ")}`);
      for (const s of f.sims) {
        for (const [model, n] of Object.entries(s.stats.maxInFlight)) assert.ok(n <= 1, `${model} ran ${n} at once`);
      }
    } finally {
      await f.close();
    }
  });

  it("never runs more requests on a node than its slots, queueing the rest in the gateway", async () => {
    const f = await fleet(2, { loadMs: 50, tokenMs: 2 }, {}, 2, 2);
    try {
      const results = await Promise.all(
        Array.from({ length: 30 }, (_, i) =>
          run(f.client, { model: "llama3.2", prompt: `x${i}`, options: { numPredict: 10 } }),
        ),
      );
      assert.ok(results.every((r) => r.error === undefined));
      for (const s of f.sims)
        assert.ok((s.stats.maxInFlight["llama3.2:latest"] ?? 0) <= 2, JSON.stringify(s.stats.maxInFlight));
      const status = await f.status.getStatus({});
      assert.deepEqual(status.queues, []);
      assert.ok(status.nodes.every((n) => n.inFlight === 0 && n.circuitState === "closed"));
    } finally {
      await f.close();
    }
  });

  it("refuses at once with RESOURCE_EXHAUSTED and RetryInfo when the model's queue is full", async () => {
    const f = await fleet(1, { tokenMs: 20 }, { QUEUE_MAX_PER_MODEL: "2" });
    try {
      const running = [0, 1, 2].map((i) =>
        run(f.client, { model: "llama3.2", prompt: `busy${i}`, options: { numPredict: 30 } }),
      );
      await new Promise((r) => setTimeout(r, 150));
      const t0 = performance.now();
      const over = await run(f.client, { model: "llama3.2", prompt: "one too many" });
      assert.ok(
        performance.now() - t0 < 500,
        `refused without waiting (${Math.round(performance.now() - t0)} ms, ${over.error?.code})`,
      );
      assert.equal(over.error?.code, Code.ResourceExhausted);
      assert.equal(reason(over.error), "QUEUE_FULL");
      assert.ok(over.error?.findDetails(RetryInfoSchema)[0]?.retryDelay !== undefined);
      assert.ok(
        (await Promise.all(running)).every((r) => r.error === undefined),
        "the queued ones were served",
      );
    } finally {
      await f.close();
    }
  });

  it("lets a queued request's deadline expire in the queue without ever sending it upstream", async () => {
    const f = await fleet(1, { tokenMs: 20 });
    try {
      const long = run(f.client, { model: "llama3.2", prompt: "long", options: { numPredict: 50 } });
      await new Promise((r) => setTimeout(r, 100));
      const before = f.sims[0]!.stats.requests["/api/generate"] ?? 0;
      const t0 = performance.now();
      const late = await run(f.client, { model: "llama3.2", prompt: "late" }, { timeoutMs: 300 });
      const took = performance.now() - t0;
      assert.equal(late.error?.code, Code.DeadlineExceeded);
      assert.ok(took >= 250 && took < 1000, `${Math.round(took)} ms`);
      assert.equal(f.sims[0]!.stats.requests["/api/generate"] ?? 0, before, "never reached Ollama");
      assert.deepEqual((await f.status.getStatus({})).queues, []);
      assert.equal((await long).error, undefined);
    } finally {
      await f.close();
    }
  });

  it("refuses at once when the deadline is shorter than the expected wait", async () => {
    const f = await fleet(1, { tokenMs: 10 });
    try {
      // Teach the gateway how long a request takes (~0.5 s).
      await run(f.client, { model: "llama3.2", prompt: "measure", options: { numPredict: 50 } });
      const busy = [0, 1, 2].map((i) =>
        run(f.client, { model: "llama3.2", prompt: `b${i}`, options: { numPredict: 50 } }),
      );
      await new Promise((r) => setTimeout(r, 50));
      const t0 = performance.now();
      const hopeless = await run(f.client, { model: "llama3.2", prompt: "now" }, { timeoutMs: 400 });
      assert.equal(hopeless.error?.code, Code.ResourceExhausted);
      assert.equal(reason(hopeless.error), "DEADLINE_TOO_SHORT");
      assert.ok(performance.now() - t0 < 200, "refused at once");
      await Promise.all(busy);
    } finally {
      await f.close();
    }
  });

  it("takes a cancelled request out of the queue at once", async () => {
    const f = await fleet(1, { tokenMs: 20 });
    try {
      const long = run(f.client, { model: "llama3.2", prompt: "long", options: { numPredict: 30 } });
      await new Promise((r) => setTimeout(r, 100));
      const controller = new AbortController();
      const queued = run(f.client, { model: "llama3.2", prompt: "queued" }, { signal: controller.signal });
      await new Promise((r) => setTimeout(r, 100));
      assert.deepEqual(
        (await f.status.getStatus({})).queues.map((q) => [q.model, q.depth]),
        [["llama3.2:latest", 1]],
      );
      const before = f.sims[0]!.stats.requests["/api/generate"] ?? 0;
      controller.abort();
      await queued;
      await new Promise((r) => setTimeout(r, 50));
      assert.deepEqual((await f.status.getStatus({})).queues, []);
      await long;
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(
        f.sims[0]!.stats.requests["/api/generate"] ?? 0,
        before,
        "the cancelled request never reached Ollama",
      );
    } finally {
      await f.close();
    }
  });

  it("serves higher priority first among queued requests", async () => {
    const f = await fleet(1, { tokenMs: 10 });
    try {
      const order: string[] = [];
      const tracked = (name: string, priority: number, numPredict = 5) =>
        run(
          f.client,
          { model: "llama3.2", prompt: name, options: { numPredict } },
          { headers: { "x-priority": String(priority) } },
        ).then(() => order.push(name));
      // "first" holds the only slot for ~400 ms, so both others are surely queued behind it.
      const first = tracked("first", 0, 40);
      await new Promise((r) => setTimeout(r, 30));
      const low = tracked("low", 0);
      await new Promise((r) => setTimeout(r, 10));
      const high = tracked("high", 5);
      await Promise.all([first, low, high]);
      assert.deepEqual(order, ["first", "high", "low"]);
    } finally {
      await f.close();
    }
  });

  it("keeps a session on its node while both nodes have the model loaded", async () => {
    const f = await fleet(2, {}, {}, 4, 2);
    try {
      await Promise.all(
        [0, 1, 2, 3].map((i) => run(f.client, { model: "llama3.2", prompt: `warm${i}`, options: { numPredict: 2 } })),
      );
      const nodes = new Set<string | undefined>();
      for (let i = 0; i < 6; i++) {
        nodes.add(
          (
            await run(f.client, {
              model: "llama3.2",
              prompt: `turn ${i}`,
              sessionKey: "user-42",
              options: { numPredict: 2 },
            })
          ).node,
        );
      }
      assert.equal(nodes.size, 1);
    } finally {
      await f.close();
    }
  });

  it("retries on another node when the first answers busy before any token", async () => {
    const f = await fleet(2, {}, {}, 1, 2);
    try {
      const warm = await run(f.client, { model: "llama3.2", prompt: "warm" });
      const loadedOn = Number(warm.node!.slice(1));
      f.sims[loadedOn]!.faults.add({ kind: "busy", path: "/api/generate", times: 1 });
      const r = await run(f.client, { model: "llama3.2", prompt: "retry me" });
      assert.equal(r.error, undefined);
      assert.equal(f.sims[loadedOn]!.stats.faultsTriggered, 1, "the node where it was loaded refused first");
      assert.equal(r.node, `n${1 - loadedOn}`, "and the other node served it");
    } finally {
      await f.close();
    }
  });

  it("ends a stream with UNAVAILABLE when its node dies mid-stream, frees the slot, routes around it, and uses it again once it is back", async () => {
    const f = await fleet(2, { tokenMs: 20 }, { CIRCUIT_OPEN_MS: "300" }, 1, 2);
    try {
      const first = await run(f.client, { model: "llama3.2", prompt: "where", options: { numPredict: 2 } });
      const victim = Number(first.node!.slice(1));
      const port = f.sims[victim]!.port;
      let count = 0;
      const stream = (async () => {
        const got: GenerateResponse[] = [];
        try {
          for await (const m of f.client.generate({
            model: "llama3.2",
            prompt: "where",
            options: { numPredict: 200 },
          })) {
            got.push(m);
            if (++count === 3) void f.sims[victim]!.close();
          }
          return { got };
        } catch (e) {
          return { got, error: ConnectError.from(e) };
        }
      })();
      const cut = await stream;
      assert.ok(cut.got.length >= 3 && cut.got.length < 200);
      assert.equal(cut.error?.code, Code.Unavailable);

      const status = await f.status.getStatus({});
      const dead = status.nodes[victim]!;
      assert.equal(dead.inFlight, 0, "the slot was freed");
      const other = await run(f.client, { model: "llama3.2", prompt: "again", options: { numPredict: 2 } });
      assert.equal(other.error, undefined);
      assert.equal(other.node, `n${1 - victim}`);

      f.sims[victim] = await startSimulator({ port, numParallel: 1, maxLoadedModels: 2 });
      const until = Date.now() + 3000;
      let healthy = false;
      while (Date.now() < until && !healthy) {
        healthy = (await f.status.getStatus({})).nodes[victim]!.healthy;
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.ok(healthy, "the node is routable again");
      // Two long requests at once need both nodes.
      const both = await Promise.all(
        [0, 1].map((i) => run(f.client, { model: "llama3.2", prompt: `both${i}`, options: { numPredict: 20 } })),
      );
      assert.deepEqual(new Set(both.map((b) => b.node)).size, 2);
    } finally {
      await f.close();
    }
  });

  it("reports circuits, slots, loaded models and queues in GetStatus", async () => {
    const f = await fleet(2, { tokenMs: 20 });
    try {
      const a = run(f.client, { model: "llama3.2", prompt: "s1", options: { numPredict: 20 } });
      const b = run(f.client, { model: "llama3.2", prompt: "s2", options: { numPredict: 20 } });
      const c = run(f.client, { model: "llama3.2", prompt: "s3", options: { numPredict: 20 } });
      await new Promise((r) => setTimeout(r, 150));
      const status = await f.status.getStatus({});
      assert.deepEqual(
        status.nodes.map((n) => [n.name, n.circuitState, n.parallel, n.maxLoadedModels]),
        [
          ["n0", "closed", 1, 1],
          ["n1", "closed", 1, 1],
        ],
      );
      assert.equal(
        status.nodes.reduce((n, x) => n + x.inFlight, 0),
        2,
        JSON.stringify(status.nodes.map((n) => [n.name, n.inFlight, n.models.map((m) => [m.model, m.inFlight])])),
      );
      assert.ok(status.nodes.every((n) => n.models.some((m) => m.model === "llama3.2:latest" && m.slots === 1)));
      assert.deepEqual(
        status.queues.map((q) => [q.model, q.depth]),
        [["llama3.2:latest", 1]],
      );
      await Promise.all([a, b, c]);
    } finally {
      await f.close();
    }
  });
});
