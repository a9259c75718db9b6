import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import type { Client } from "@connectrpc/connect";
import { Ollama } from "ollama";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { createEmbedBatcher } from "../src/services/embed-batcher.js";
import type { EmbedAnswer, EmbedShare } from "../src/services/embed-batcher.js";
import { startSimulator } from "../src/simulator/simulator.js";
import type { Simulator } from "../src/simulator/simulator.js";
import { startTestGateway } from "./helpers/test-gateway.js";
import type { TestGateway } from "./helpers/test-gateway.js";
import { TRANSPORTS } from "./helpers/transports.js";

describe("Embed micro-batching", () => {
  let sim: Simulator;
  let batched: TestGateway;
  let unbatched: TestGateway;
  let client: Client<typeof InferenceService>;

  before(async () => {
    sim = await startSimulator({ firstTokenMs: 5 });
    batched = await startTestGateway({ OLLAMA_URL: sim.url, EMBED_CACHE: "off", EMBED_BATCH_WINDOW_MS: "5" });
    unbatched = await startTestGateway({ OLLAMA_URL: sim.url, EMBED_CACHE: "off", EMBED_BATCH_WINDOW_MS: "0" });
    client = createClient(InferenceService, TRANSPORTS[0]!.make(batched.url));
  });
  after(async () => {
    await batched.close();
    await unbatched.close();
    await sim.close();
  });

  it("merges concurrent calls into fewer upstream requests and gives each caller its own vectors in order", async () => {
    const before = sim.stats.requests["/api/embed"] ?? 0;
    const inputs = Array.from({ length: 24 }, (_, i) => [`text ${i} a`, `text ${i} b`]);
    const answers = await Promise.all(inputs.map((pair) => client.embed({ model: "all-minilm", inputs: pair })));
    const upstream = (sim.stats.requests["/api/embed"] ?? 0) - before;
    assert.ok(upstream < 12, `${upstream} upstream requests for 24 calls`);
    const direct = await new Ollama({ host: sim.url }).embed({ model: "all-minilm", input: inputs.flat() });
    answers.forEach((a, i) => {
      assert.equal(a.embeddings.length, 2);
      a.embeddings.forEach((e, j) => {
        const want = direct.embeddings[i * 2 + j]!;
        assert.ok(
          e.values.every((x, k) => Math.abs(x - want[k]!) < 1e-6),
          `call ${i} input ${j}`,
        );
      });
    });
  });

  it("sends the first call at once when nothing else is in flight", async () => {
    const t0 = performance.now();
    await createClient(InferenceService, TRANSPORTS[0]!.make(batched.url)).embed({
      model: "all-minilm",
      inputs: ["alone"],
    });
    assert.ok(performance.now() - t0 < 1000);
    const before = sim.stats.requests["/api/embed"] ?? 0;
    await client.embed({ model: "all-minilm", inputs: ["alone again"] });
    assert.equal((sim.stats.requests["/api/embed"] ?? 0) - before, 1);
  });

  it("gives an error only to the caller whose input Ollama rejects", async () => {
    const long = Array.from({ length: 5000 }, (_, i) => `w${i}`).join(" ");
    const calls = [
      client.embed({ model: "all-minilm", inputs: ["fine one"], truncate: false }),
      client.embed({ model: "all-minilm", inputs: ["fine two"], truncate: false }),
      client.embed({ model: "all-minilm", inputs: [long], truncate: false }),
      client.embed({ model: "all-minilm", inputs: ["fine three"], truncate: false }),
    ];
    const results = await Promise.allSettled(calls);
    assert.deepEqual(
      results.map((r) => r.status),
      ["fulfilled", "fulfilled", "rejected", "fulfilled"],
    );
    const e = ConnectError.from((results[2] as PromiseRejectedResult).reason);
    assert.equal(e.code, Code.InvalidArgument);
  });

  it("sends one upstream request per call when batching is off", async () => {
    const off = createClient(InferenceService, TRANSPORTS[0]!.make(unbatched.url));
    const before = sim.stats.requests["/api/embed"] ?? 0;
    await Promise.all(Array.from({ length: 10 }, (_, i) => off.embed({ model: "all-minilm", inputs: [`off ${i}`] })));
    assert.equal((sim.stats.requests["/api/embed"] ?? 0) - before, 10);
  });
});

describe("the Embed batcher with a controllable node", () => {
  /** A batcher whose upstream answers only when the test says so; records what it was sent. */
  function fakeUpstream(windowMs: number) {
    const sent: { input: string[]; signal: AbortSignal; answer: () => void }[] = [];
    const batcher = createEmbedBatcher({
      windowMs,
      maxInputs: 256,
      isRejection: () => false,
      send: (body, signal) =>
        new Promise<EmbedAnswer>((resolve, reject) => {
          const input = body["input"] as string[];
          signal.addEventListener("abort", () => reject(signal.reason as Error), { once: true });
          sent.push({
            input,
            signal,
            answer: () =>
              resolve({
                raw: { embeddings: input.map((t) => [t.length]), prompt_eval_count: input.length },
                node: "fake",
                queueMs: 0,
              }),
          });
        }),
    });
    return { batcher, sent };
  }
  const tick = (): Promise<void> => new Promise((r) => setTimeout(r, 1));

  it("lets a caller leave a waiting batch without failing the others", async () => {
    const { batcher, sent } = fakeUpstream(20);
    const first = batcher.embed({ model: "m" }, ["a"], new AbortController().signal);
    const leaving = new AbortController();
    const joined = [
      batcher.embed({ model: "m" }, ["bb"], new AbortController().signal),
      batcher.embed({ model: "m" }, ["ccc"], leaving.signal),
      batcher.embed({ model: "m" }, ["dddd"], new AbortController().signal),
    ];
    const settled = Promise.allSettled([first, ...joined]);
    await tick();
    assert.equal(sent.length, 1, "only the first call went out; the rest wait for it");
    leaving.abort(new Error("client went away"));
    await assert.rejects(joined[1]!, /client went away/, "the caller that left is answered at once");
    sent[0]!.answer();
    await new Promise((r) => setTimeout(r, 30));
    assert.deepEqual(sent[1]?.input, ["bb", "dddd"], "the batch went out without the caller that left");
    sent[1]!.answer();
    const [a, b, c, d] = await settled;
    assert.deepEqual((a as PromiseFulfilledResult<EmbedShare>).value.vectors, [[1]]);
    assert.deepEqual((b as PromiseFulfilledResult<EmbedShare>).value.vectors, [[2]]);
    assert.equal(c!.status, "rejected");
    assert.deepEqual((d as PromiseFulfilledResult<EmbedShare>).value.vectors, [[4]]);
  });

  it("aborts the upstream request only when every caller in the batch has gone", async () => {
    const { batcher, sent } = fakeUpstream(1);
    const blocker = batcher.embed({ model: "m" }, ["x"], new AbortController().signal);
    const c1 = new AbortController();
    const c2 = new AbortController();
    const p1 = batcher.embed({ model: "m" }, ["y"], c1.signal);
    const p2 = batcher.embed({ model: "m" }, ["z"], c2.signal);
    const settled = Promise.allSettled([p1, p2]);
    await new Promise((r) => setTimeout(r, 10));
    assert.equal(sent.length, 2);
    c1.abort(new Error("gone"));
    assert.equal(sent[1]!.signal.aborted, false, "one caller left, the other still waits");
    c2.abort(new Error("gone"));
    assert.equal(sent[1]!.signal.aborted, true);
    sent[0]!.answer();
    await blocker;
    assert.deepEqual(
      (await settled).map((r) => r.status),
      ["rejected", "rejected"],
    );
  });
});
