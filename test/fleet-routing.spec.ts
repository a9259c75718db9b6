import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";
import type { GenerateResponse } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { startSimulator } from "../src/simulator/simulator.js";
import { RetryInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { fleet, loads, reason, run } from "./helpers/fleet.js";
import type { Fleet } from "./helpers/fleet.js";
import { holdSlot } from "./helpers/held-request.js";
import { eventually } from "./helpers/sim-http.js";

/** Requests waiting in the gateway's queue for llama3.2. */
const queued = (f: Fleet): number => f.gw.scheduler.queues().find((q) => q.model === "llama3.2:latest")?.depth ?? 0;

/** Prompts of the Generates a simulator receives from now on, in order of arrival. */
function arrivals(f: Fleet, sim = 0): string[] {
  const seen: string[] = [];
  f.sims[sim]!.events.on("request", (e) => {
    if (e.path === "/api/generate" && e.body)
      seen.push(String((JSON.parse(e.body.toString("utf8")) as { prompt?: unknown }).prompt));
  });
  return seen;
}

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
    const f = await fleet(1, {}, { QUEUE_MAX_PER_MODEL: "2" });
    try {
      const holder = await holdSlot(f, { model: "llama3.2", prompt: "holder" });
      const waiting = [0, 1].map((i) => run(f.client, { model: "llama3.2", prompt: `queued${i}` }));
      assert.ok(await eventually(() => queued(f) === 2, 10_000), "two requests wait behind the held one");
      const over = await run(f.client, { model: "llama3.2", prompt: "one too many" });
      assert.equal(over.error?.code, Code.ResourceExhausted);
      assert.equal(reason(over.error), "QUEUE_FULL");
      assert.ok(over.error?.findDetails(RetryInfoSchema)[0]?.retryDelay !== undefined);
      assert.equal(f.sims[0]!.stats.requests["/api/generate"], 1, "only the held request reached Ollama");
      await holder.release();
      assert.ok(
        (await Promise.all(waiting)).every((r) => r.error === undefined),
        "the queued ones were served",
      );
    } finally {
      await f.close();
    }
  });

  it("lets a queued request's deadline expire in the queue without ever sending it upstream", async () => {
    const f = await fleet(1, {});
    try {
      const holder = await holdSlot(f, { model: "llama3.2", prompt: "holder" });
      const t0 = performance.now();
      const late = await run(f.client, { model: "llama3.2", prompt: "late" }, { timeoutMs: 300 });
      const took = performance.now() - t0;
      assert.equal(late.error?.code, Code.DeadlineExceeded);
      assert.ok(took >= 250, `it waited for its deadline (${Math.round(took)} ms)`);
      assert.ok(await eventually(() => queued(f) === 0, 10_000), "and left the queue");
      assert.equal(f.sims[0]!.stats.requests["/api/generate"], 1, "never reached Ollama");
      await holder.release();
    } finally {
      await f.close();
    }
  });

  it("refuses at once when the deadline is shorter than the expected wait", async () => {
    const f = await fleet(1, { tokenMs: 10 });
    try {
      // Teach the gateway how long a request takes (at least 50 tokens of 10 ms).
      await run(f.client, { model: "llama3.2", prompt: "measure", options: { numPredict: 50 } });
      const holder = await holdSlot(f, { model: "llama3.2", prompt: "holder" });
      const hopeless = await run(f.client, { model: "llama3.2", prompt: "now" }, { timeoutMs: 400 });
      assert.equal(hopeless.error?.code, Code.ResourceExhausted);
      assert.equal(reason(hopeless.error), "DEADLINE_TOO_SHORT", "refused on the prediction, not after waiting");
      assert.equal(f.sims[0]!.stats.requests["/api/generate"], 2, "it never reached Ollama");
      await holder.release();
    } finally {
      await f.close();
    }
  });

  it("takes a cancelled request out of the queue at once", async () => {
    const f = await fleet(1, {});
    try {
      const holder = await holdSlot(f, { model: "llama3.2", prompt: "holder" });
      const seen = arrivals(f);
      const controller = new AbortController();
      const cancelled = run(f.client, { model: "llama3.2", prompt: "queued" }, { signal: controller.signal });
      assert.ok(await eventually(() => queued(f) === 1, 10_000), "it waits behind the held request");
      assert.deepEqual(
        (await f.status.getStatus({})).queues.map((q) => [q.model, q.depth]),
        [["llama3.2:latest", 1]],
      );
      controller.abort();
      assert.equal((await cancelled).error?.code, Code.Canceled);
      assert.ok(await eventually(() => queued(f) === 0, 10_000), "it left the queue");
      await holder.release();
      // FIFO: had it stayed queued, it would reach Ollama before this one.
      assert.equal((await run(f.client, { model: "llama3.2", prompt: "after" })).error, undefined);
      assert.deepEqual(seen, ["after"], "the cancelled request never reached Ollama");
    } finally {
      await f.close();
    }
  });

  it("serves higher priority first among queued requests", async () => {
    const f = await fleet(1, {});
    try {
      const holder = await holdSlot(f, { model: "llama3.2", prompt: "holder" });
      const seen = arrivals(f);
      const send = (name: string, priority: number) =>
        run(f.client, { model: "llama3.2", prompt: name }, { headers: { "x-priority": String(priority) } });
      const low = send("low", 0);
      assert.ok(await eventually(() => queued(f) === 1, 10_000));
      const high = send("high", 5);
      assert.ok(await eventually(() => queued(f) === 2, 10_000));
      await holder.release();
      const results = await Promise.all([low, high]);
      assert.deepEqual(
        results.map((r) => r.error),
        [undefined, undefined],
      );
      assert.deepEqual(seen, ["high", "low"], "the later, higher-priority request reached Ollama first");
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
      assert.ok(await eventually(() => f.gw.nodeHealth.isHealthy(`n${victim}`), 10_000), "the node is routable again");
      assert.equal((await f.status.getStatus({})).nodes[victim]!.healthy, true);
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
    const f = await fleet(2, {});
    try {
      const a = await holdSlot(f, { model: "llama3.2", prompt: "s1" });
      const b = await holdSlot(f, { model: "llama3.2", prompt: "s2" });
      assert.notEqual(a.sim, b.sim, "one on each node");
      const c = run(f.client, { model: "llama3.2", prompt: "s3" });
      assert.ok(await eventually(() => queued(f) === 1, 10_000));
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
      await Promise.all([a.release(), b.release()]);
      assert.equal((await c).error, undefined);
    } finally {
      await f.close();
    }
  });
});
