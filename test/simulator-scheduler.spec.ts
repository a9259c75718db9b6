// The simulator's scheduler behaves like Ollama's: per-model parallel slots with unbounded
// waiters, a bounded pending-load queue (503 when full), one load at a time, eviction, reloads
// on runner-option changes, keep-alive semantics, and prompt cancellation on disconnect.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Client } from "undici";
import { SERVER_BUSY_MESSAGE, startSimulator, type SimulatorOptions } from "../src/simulator/index.js";
import type { Simulator } from "../src/simulator/index.js";
import { delay, eventually, json, ndjson, post, send, streamLines } from "./helpers/sim-http.js";

/** Starts a simulator for one test and always closes it. */
async function withSim(options: SimulatorOptions, body: (sim: Simulator) => Promise<void>): Promise<void> {
  const sim = await startSimulator(options);
  try {
    await body(sim);
  } finally {
    await sim.close();
  }
}

const generate = (sim: Simulator, body: Record<string, unknown>) =>
  post(`${sim.url}/api/generate`, { stream: false, prompt: "hello", ...body });

describe("the simulator's scheduler", () => {
  describe("parallel slots", () => {
    it("makes a second request wait while NUM_PARALLEL=1 is busy, never running two at once", () =>
      withSim({ tokenMs: 10, numParallel: 1 }, async (sim) => {
        const body = { model: "llama3.2", options: { num_predict: 10 } };
        const started = performance.now();
        const [a, b] = await Promise.all([generate(sim, body), generate(sim, body)]);
        const elapsed = performance.now() - started;
        assert.equal(a.status, 200);
        assert.equal(b.status, 200);
        assert.equal(sim.stats.maxInFlight["llama3.2:latest"], 1);
        assert.ok(elapsed >= 170, `two 10-token answers ran one after the other (${elapsed.toFixed(0)} ms)`);
        const totals = [json(a), json(b)].map((r) => Number(r.total_duration) / 1e6).sort((x, y) => x - y);
        assert.ok((totals[1] ?? 0) >= 170, `the waiter's total_duration includes the wait: ${totals.join(", ")} ms`);
        assert.equal(sim.stats.inFlight["llama3.2:latest"], 0);
      }));

    it("runs up to NUM_PARALLEL generations of one model at once and queues the rest without a 503", () =>
      withSim({ tokenMs: 5, numParallel: 2, maxQueue: 1 }, async (sim) => {
        const results = await Promise.all(
          Array.from({ length: 6 }, () => generate(sim, { model: "llama3.2", options: { num_predict: 8 } })),
        );
        assert.deepEqual(
          results.map((r) => r.status),
          [200, 200, 200, 200, 200, 200],
        );
        assert.equal(sim.stats.maxInFlight["llama3.2:latest"], 2);
        assert.equal(sim.stats.loads["llama3.2:latest"], 1, "Ollama never loads the same model twice");
      }));

    it("gives embedding models a single slot whatever NUM_PARALLEL says", () =>
      withSim({ numParallel: 4, firstTokenMs: 20 }, async (sim) => {
        await Promise.all(
          [1, 2, 3].map((i) => post(`${sim.url}/api/embed`, { model: "all-minilm", input: `text ${i}` })),
        );
        assert.equal(sim.stats.maxInFlight["all-minilm:latest"], 1);
      }));
  });

  describe("the pending-load queue", () => {
    it("answers 503 with Ollama's exact text when more loads are pending than OLLAMA_MAX_QUEUE", () =>
      withSim({ loadMs: 300, maxQueue: 1 }, async (sim) => {
        const results = await Promise.all([
          post(`${sim.url}/api/generate`, { model: "llama3.2" }),
          post(`${sim.url}/api/chat`, { model: "qwen3", messages: [] }),
          post(`${sim.url}/api/generate`, { model: "llava" }),
          post(`${sim.url}/api/embed`, { model: "nomic-embed-text", input: "x" }),
        ]);
        const busy = results.filter((r) => r.status === 503);
        assert.equal(busy.length, 2, results.map((r) => `${r.status} ${r.text}`).join("\n"));
        for (const res of busy) {
          assert.deepEqual(json(res), { error: SERVER_BUSY_MESSAGE });
          assert.equal(res.headers["content-type"], "application/json; charset=utf-8");
        }
        assert.equal(SERVER_BUSY_MESSAGE, "server busy, please try again.  maximum pending requests exceeded");
        assert.equal(sim.stats.busyRejections, 2);
        assert.equal(sim.stats.maxPendingLoads, 1);
      }));

    it("lets requests for a model that is already loading attach without using the queue", () =>
      withSim({ loadMs: 150, maxQueue: 1 }, async (sim) => {
        const results = await Promise.all(
          Array.from({ length: 5 }, () => post(`${sim.url}/api/generate`, { model: "llama3.2" })),
        );
        assert.deepEqual(
          results.map((r) => r.status),
          [200, 200, 200, 200, 200],
        );
        assert.equal(sim.stats.loadsTotal, 1);
      }));

    it("loads one model at a time and reports the wait in load_duration", () =>
      withSim({ loadMs: 100 }, async (sim) => {
        const [a, b] = await Promise.all([
          generate(sim, { model: "llama3.2", options: { num_predict: 1 } }),
          generate(sim, { model: "qwen3", think: false, options: { num_predict: 1 } }),
        ]);
        const loads = [json(a), json(b)].map((r) => Number(r.load_duration) / 1e6).sort((x, y) => x - y);
        assert.ok((loads[0] ?? 0) >= 95, `first load took the load time: ${loads}`);
        assert.ok((loads[1] ?? 0) >= 190, `second load waited for the first: ${loads}`);
      }));
  });

  describe("eviction and reloads", () => {
    it("evicts the idle model when MAX_LOADED_MODELS is reached", () =>
      withSim({ maxLoadedModels: 1 }, async (sim) => {
        const unloads: string[] = [];
        sim.events.on("unload", (e) => unloads.push(`${e.model}:${e.reason}`));
        await generate(sim, { model: "llama3.2" });
        await generate(sim, { model: "qwen3" });
        assert.deepEqual(
          sim.loaded().map((r) => r.name),
          ["qwen3:latest"],
        );
        assert.deepEqual(unloads, ["llama3.2:latest:evicted"]);
        assert.equal(sim.stats.evictions, 1);
      }));

    it("waits for the victim's in-flight generation before evicting it", () =>
      withSim({ maxLoadedModels: 1, tokenMs: 15 }, async (sim) => {
        let llamaDone = 0;
        let qwenLoad = 0;
        sim.events.on("load", (e) => {
          if (e.model === "qwen3:latest") qwenLoad = performance.now();
        });
        const slow = generate(sim, { model: "llama3.2", options: { num_predict: 12 } }).then((r) => {
          llamaDone = performance.now();
          return r;
        });
        await delay(40);
        const other = generate(sim, { model: "qwen3", think: false, options: { num_predict: 1 } });
        const [a, b] = await Promise.all([slow, other]);
        assert.equal(a.status, 200);
        assert.equal(b.status, 200);
        assert.equal(json(a).eval_count, 12, "the victim finished its answer");
        assert.ok(qwenLoad > 0 && qwenLoad + 5 >= llamaDone - 20, "qwen3 loaded only after llama3.2 went idle");
      }));

    it("picks the idle model with the soonest expiry as the victim", () =>
      withSim({ maxLoadedModels: 2 }, async (sim) => {
        await generate(sim, { model: "llama3.2", keep_alive: "1h" });
        await generate(sim, { model: "qwen3", keep_alive: "2m" });
        await generate(sim, { model: "llava" });
        assert.deepEqual(
          sim
            .loaded()
            .map((r) => r.name)
            .sort(),
          ["llama3.2:latest", "llava:latest"],
        );
      }));

    // Sizes at num_ctx 4096 and one slot (weights + KV cache): llama3.2 2.47 GB, qwen3 5.83 GB,
    // all-minilm 0.05 GB, nomic-embed-text 0.28 GB.
    it("evicts a model when the next one does not fit in VRAM, below MAX_LOADED_MODELS", () =>
      withSim({ maxLoadedModels: 3, vramBytes: 7e9 }, async (sim) => {
        const unloads: string[] = [];
        sim.events.on("unload", (e) => unloads.push(`${e.model}:${e.reason}`));
        await generate(sim, { model: "llama3.2" });
        await generate(sim, { model: "qwen3", think: false });
        assert.deepEqual(
          sim.loaded().map((r) => r.name),
          ["qwen3:latest"],
        );
        assert.deepEqual(unloads, ["llama3.2:latest:evicted"]);
        assert.equal(sim.stats.evictions, 1);
      }));

    it("keeps models that fit together side by side, each wholly in VRAM", () =>
      withSim({ maxLoadedModels: 3, vramBytes: 7e9 }, async (sim) => {
        await generate(sim, { model: "llama3.2" });
        await post(`${sim.url}/api/embed`, { model: "all-minilm", input: "x" });
        const ps = json<{ models: Array<{ name: string; size: number; size_vram: number }> }>(
          await send("GET", `${sim.url}/api/ps`),
        );
        assert.deepEqual(ps.models.map((m) => m.name).sort(), ["all-minilm:latest", "llama3.2:latest"]);
        for (const m of ps.models) assert.equal(m.size_vram, m.size, `${m.name} is wholly in VRAM`);
        assert.equal(sim.stats.evictions, 0);
      }));

    it("evicts only as many models as the new one needs, the soonest expiry first", () =>
      withSim({ maxLoadedModels: 4, vramBytes: 7e9 }, async (sim) => {
        await generate(sim, { model: "llama3.2", keep_alive: "1m" });
        await post(`${sim.url}/api/embed`, { model: "all-minilm", input: "x", keep_alive: "1h" });
        await post(`${sim.url}/api/embed`, { model: "nomic-embed-text", input: "x", keep_alive: "1h" });
        await generate(sim, { model: "qwen3", think: false });
        assert.deepEqual(
          sim
            .loaded()
            .map((r) => r.name)
            .sort(),
          ["all-minilm:latest", "nomic-embed-text:latest", "qwen3:latest"],
        );
        assert.equal(sim.stats.evictions, 1);
      }));

    it("still evicts by count when the memory would hold more", () =>
      withSim({ maxLoadedModels: 1, vramBytes: 100e9 }, async (sim) => {
        await generate(sim, { model: "llama3.2" });
        await generate(sim, { model: "qwen3", think: false });
        assert.deepEqual(
          sim.loaded().map((r) => r.name),
          ["qwen3:latest"],
        );
        assert.equal(sim.stats.evictions, 1);
      }));

    it("loads a model larger than the whole budget alone, partly offloaded (size_vram < size)", () =>
      withSim({ maxLoadedModels: 3, vramBytes: 4e9 }, async (sim) => {
        await generate(sim, { model: "llama3.2" });
        await generate(sim, { model: "qwen3", think: false });
        const ps = json<{ models: Array<{ name: string; size: number; size_vram: number }> }>(
          await send("GET", `${sim.url}/api/ps`),
        );
        assert.deepEqual(
          ps.models.map((m) => [m.name, m.size, m.size_vram]),
          [["qwen3:latest", 5_829_355_823, 4_000_000_000]],
          "the other model was evicted first, then qwen3 took the whole budget",
        );
        await generate(sim, { model: "llama3.2" });
        assert.deepEqual(
          sim.loaded().map((r) => [r.name, r.sizeVram === r.size]),
          [["llama3.2:latest", true]],
        );
      }));

    it("waits for a busy victim's generation before evicting it for memory", () =>
      withSim({ maxLoadedModels: 3, vramBytes: 7e9, tokenMs: 15 }, async (sim) => {
        let llamaDone = 0;
        let qwenLoad = 0;
        sim.events.on("load", (e) => {
          if (e.model === "qwen3:latest") qwenLoad = performance.now();
        });
        const slow = generate(sim, { model: "llama3.2", options: { num_predict: 12 } }).then((r) => {
          llamaDone = performance.now();
          return r;
        });
        await eventually(() => (sim.stats.inFlight["llama3.2:latest"] ?? 0) === 1, 2000);
        const other = generate(sim, { model: "qwen3", think: false, options: { num_predict: 1 } });
        const [a, b] = await Promise.all([slow, other]);
        assert.equal(a.status, 200);
        assert.equal(b.status, 200);
        assert.equal(json(a).eval_count, 12, "the victim finished its answer");
        assert.ok(qwenLoad > 0 && qwenLoad + 5 >= llamaDone - 20, "qwen3 loaded only after llama3.2 went idle");
      }));

    it("reloads a model when num_ctx changes, and reuses it when it does not", () =>
      withSim({}, async (sim) => {
        await generate(sim, { model: "llama3.2", options: { num_ctx: 2048 } });
        await generate(sim, { model: "llama3.2", options: { num_ctx: 2048 } });
        assert.equal(sim.stats.loads["llama3.2:latest"], 1);
        await generate(sim, { model: "llama3.2", options: { num_ctx: 8192 } });
        assert.equal(sim.stats.loads["llama3.2:latest"], 2);
        assert.equal(sim.stats.reloads, 1);
        const ps = json<{ models: Array<{ context_length: number }> }>(await send("GET", `${sim.url}/api/ps`));
        assert.equal(ps.models[0]?.context_length, 8192);
        await generate(sim, { model: "llama3.2", options: { temperature: 0.1 } });
        assert.equal(sim.stats.loads["llama3.2:latest"], 3, "the default num_ctx (4096) differs from 8192 too");
      }));
  });

  describe("keep-alive", () => {
    it("unloads right after the request when keep_alive is 0", () =>
      withSim({}, async (sim) => {
        const res = await generate(sim, { model: "llama3.2", keep_alive: 0 });
        assert.equal(json(res).done, true);
        assert.deepEqual(sim.loaded(), []);
        assert.equal(sim.stats.unloads["llama3.2:latest"], 1);
      }));

    it("starts the keep-alive timer only when the last request ends", () =>
      withSim({ tokenMs: 20 }, async (sim) => {
        let unloadedAt = 0;
        sim.events.on("unload", () => {
          unloadedAt = performance.now();
        });
        const res = await generate(sim, { model: "llama3.2", keep_alive: "150ms", options: { num_predict: 12 } });
        const endedAt = performance.now();
        assert.equal(res.status, 200);
        assert.equal(sim.loaded().length, 1, "still loaded right after a 240 ms answer");
        assert.ok(await eventually(() => unloadedAt > 0, 1000), "unloaded eventually");
        assert.ok(unloadedAt - endedAt >= 120, `unloaded ${(unloadedAt - endedAt).toFixed(0)} ms after the end`);
      }));

    it("keeps a model forever for a negative keep_alive and lets the last keep_alive win", () =>
      withSim({}, async (sim) => {
        await generate(sim, { model: "llama3.2", keep_alive: -1 });
        assert.ok(new Date(sim.loaded()[0]?.expiresAt ?? 0).getUTCFullYear() > 2200);
        await generate(sim, { model: "llama3.2", keep_alive: "1h30m" });
        const inNinety = Date.now() + 90 * 60_000;
        assert.ok(Math.abs((sim.loaded()[0]?.expiresAt ?? 0) - inNinety) < 5000);
        await generate(sim, { model: "llama3.2" });
        assert.ok(
          Math.abs((sim.loaded()[0]?.expiresAt ?? 0) - (Date.now() + 90 * 60_000)) < 5000,
          "absent keep_alive keeps 1h30m",
        );
      }));

    it("uses the configured default keep-alive for fresh loads", () =>
      withSim({ keepAliveMs: 100 }, async (sim) => {
        await generate(sim, { model: "llama3.2" });
        assert.equal(sim.loaded().length, 1);
        assert.ok(await eventually(() => sim.loaded().length === 0, 1000));
      }));
  });

  describe("client disconnects", () => {
    it("stops generating within 100 ms, frees the slot and counts tokens only until the cut", () =>
      withSim({ tokenMs: 200, numParallel: 1 }, async (sim) => {
        const controller = new AbortController();
        const disconnected = sim.events.next("disconnect");
        const lines: string[] = [];
        let abortedAt = 0;
        await assert.rejects(async () => {
          for await (const line of streamLines(
            `${sim.url}/api/chat`,
            {
              model: "llama3.2",
              messages: [{ role: "user", content: "a long answer please" }],
              options: { num_predict: 1000 },
            },
            controller.signal,
          )) {
            lines.push(line);
            if (lines.length === 2) {
              abortedAt = performance.now();
              controller.abort();
            }
          }
        });
        const event = await disconnected;
        assert.equal(event.path, "/api/chat");
        assert.equal(event.model, "llama3.2");
        // The answer would run for 1,000 tokens; a generous bound for a loaded machine.
        assert.ok(event.at - abortedAt < 1_000, `noticed after ${(event.at - abortedAt).toFixed(1)} ms`);
        assert.equal(sim.stats.disconnects, 1);
        assert.ok(
          await eventually(() => sim.stats.inFlight["llama3.2:latest"] === 0 && sim.loaded()[0]?.refCount === 0, 50),
          "slot and runner reference freed at once, not after the next token's delay",
        );
        assert.equal(sim.stats.tokensEmitted, 2, "tokens counted until the cut");
        await delay(250);
        assert.equal(sim.stats.tokensEmitted, 2, "no tokens after the cut");
        const next = ndjson(
          await post(`${sim.url}/api/chat`, {
            model: "llama3.2",
            messages: [{ role: "user", content: "x" }],
            options: { num_predict: 1 },
          }),
        );
        assert.equal(next.at(-1)?.done, true, "the freed slot serves the next request");
      }));

    it("frees a disconnected client's slot before a request that arrives in the same turn on another connection", () =>
      withSim({ tokenMs: 10, numParallel: 8 }, async (sim) => {
        // Go's net/http cancels a request's context as soon as its connection reads EOF or a reset,
        // so a gateway that cancels one request and at once sends the next never has both counted.
        const body = (prompt: string, n: number) =>
          JSON.stringify({ model: "llama3.2", prompt, options: { num_predict: n } });
        const held = new Client(sim.url);
        const next = new Client(sim.url);
        try {
          await (await next.request({ path: "/api/generate", method: "POST", body: body("warm", 1) })).body.text();
          for (let i = 0; i < 3; i++) {
            const controller = new AbortController();
            const long = await held.request({
              path: "/api/generate",
              method: "POST",
              body: body("long", 100_000),
              signal: controller.signal,
            });
            const lines = long.body[Symbol.asyncIterator]();
            await lines.next();
            controller.abort();
            const short = next.request({ path: "/api/generate", method: "POST", body: body("next", 2) });
            // Both the disconnect and the next request are now in the simulator's sockets, to be read in one turn.
            const until = performance.now() + 30;
            while (performance.now() < until);
            await (await short).body.text();
            await lines.next().catch(() => undefined);
          }
          assert.equal(sim.stats.maxInFlight["llama3.2:latest"], 1, "never two requests counted at once");
          assert.equal(sim.stats.disconnects, 3);
        } finally {
          await Promise.allSettled([held.close(), next.close()]);
        }
      }));

    it("drops a request that disconnects while waiting for a slot", () =>
      withSim({ tokenMs: 20, numParallel: 1 }, async (sim) => {
        const first = generate(sim, { model: "llama3.2", options: { num_predict: 10 } });
        await delay(30);
        const controller = new AbortController();
        const waiting = post(
          `${sim.url}/api/generate`,
          { model: "llama3.2", prompt: "x", options: { num_predict: 10 } },
          { signal: controller.signal },
        );
        await delay(20);
        assert.equal(sim.loaded()[0]?.refCount, 2, "the second request is attached, waiting for the slot");
        controller.abort();
        await assert.rejects(waiting);
        assert.ok(await eventually(() => sim.loaded()[0]?.refCount === 1, 50), "the waiter let go at once");
        assert.equal((await first).status, 200);
        assert.ok(await eventually(() => sim.stats.disconnects === 1));
        assert.equal(sim.stats.tokensEmitted, 10, "the waiter never generated");
      }));
  });
});
