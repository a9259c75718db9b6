import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import type { Client } from "@connectrpc/connect";
import { Ollama } from "ollama";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { GatewayService } from "../src/gen/ollama/gateway/v1/gateway_pb.js";
import { ErrorInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { batchUrgency, createEmbedBatcher } from "../src/services/embed-batcher.js";
import type { EmbedAnswer, EmbedShare } from "../src/services/embed-batcher.js";
import type { Urgency } from "../src/services/failover.js";
import { startSimulator } from "../src/simulator/simulator.js";
import type { Simulator, SimulatorOptions } from "../src/simulator/simulator.js";
import { startTestGateway } from "./helpers/test-gateway.js";
import type { TestGateway } from "./helpers/test-gateway.js";
import { reason } from "./helpers/fleet.js";
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

describe("Embed admission: priority and deadline", { timeout: 60_000 }, () => {
  /** One simulator behind a gateway that sends every Embed alone (no batching, no cache). */
  async function lone(options: SimulatorOptions = {}): Promise<{
    sim: Simulator;
    gw: TestGateway;
    client: Client<typeof InferenceService>;
    queued(): Promise<number>;
    close(): Promise<void>;
  }> {
    const sim = await startSimulator(options);
    const gw = await startTestGateway({ OLLAMA_URL: sim.url, EMBED_CACHE: "off", EMBED_BATCH_WINDOW_MS: "0" });
    const status = createClient(GatewayService, TRANSPORTS[0]!.make(gw.url));
    return {
      sim,
      gw,
      client: createClient(InferenceService, TRANSPORTS[0]!.make(gw.url)),
      queued: async () => (await status.getStatus({})).queues.reduce((n, q) => n + q.depth, 0),
      async close() {
        await gw.close();
        await sim.close();
      },
    };
  }

  /**
   * Takes the model's only slot (embedding models get one) with an Embed that Ollama holds until
   * the returned function ends it (the call is cancelled, which frees the slot).
   */
  async function holdTheSlot(sim: Simulator, client: Client<typeof InferenceService>): Promise<() => Promise<void>> {
    sim.faults.add({ kind: "stall", ms: 600_000, path: "/api/embed", times: 1 });
    const arrived = sim.events.next("request", { filter: (e) => e.path === "/api/embed" });
    const holding = new AbortController();
    const held = client.embed({ model: "all-minilm", inputs: ["holder"] }, { signal: holding.signal }).then(
      () => assert.fail("the held call was answered"),
      () => undefined,
    );
    await arrived;
    return async () => {
      holding.abort();
      await held;
    };
  }

  /** Polls an async condition every 10 ms until it holds or `ms` pass. */
  async function until(check: () => Promise<boolean>, ms = 10_000): Promise<void> {
    const end = Date.now() + ms;
    while (!(await check())) {
      if (Date.now() > end) assert.fail("the condition never held");
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  it("serves a queued Embed with a higher x-priority first", async () => {
    const f = await lone();
    try {
      const release = await holdTheSlot(f.sim, f.client);
      const order: string[] = [];
      f.sim.events.on("request", (e) => {
        if (e.path === "/api/embed" && e.body) order.push(String(JSON.parse(e.body.toString("utf8")).input));
      });
      const embed = (text: string, priority: number) =>
        f.client.embed({ model: "all-minilm", inputs: [text] }, { headers: { "x-priority": String(priority) } });
      const low = embed("low", 0);
      await until(async () => (await f.queued()) === 1);
      const high = embed("high", 5);
      await until(async () => (await f.queued()) === 2);
      await release();
      await Promise.all([low, high]);
      assert.deepEqual(order, ["high", "low"], "the later, more urgent call went to Ollama first");
    } finally {
      await f.close();
    }
  });

  it("refuses an Embed at once with DEADLINE_TOO_SHORT when its deadline is shorter than the learned wait", async () => {
    // Each input takes Ollama 500 ms, so one Embed of three teaches the gateway it holds the slot >= 1.5 s.
    const f = await lone({ firstTokenMs: 500 });
    try {
      await f.client.embed({ model: "all-minilm", inputs: ["slow one", "slow two", "slow three"] });
      const release = await holdTheSlot(f.sim, f.client);
      const hopeless = await f.client
        .embed({ model: "all-minilm", inputs: ["hopeless"] }, { timeoutMs: 500 })
        .then(() => undefined, ConnectError.from);
      assert.equal(hopeless?.code, Code.ResourceExhausted, hopeless?.message);
      assert.equal(reason(hopeless), "DEADLINE_TOO_SHORT");
      const info = hopeless?.findDetails(ErrorInfoSchema)[0];
      assert.ok(Number(info?.metadata["expected_wait_ms"]) >= 1_500, JSON.stringify(info?.metadata));
      // One with time enough waits for the slot and is served.
      const patient = f.client.embed({ model: "all-minilm", inputs: ["patient"] }, { timeoutMs: 60_000 });
      await until(async () => (await f.queued()) === 1);
      await release();
      assert.equal((await patient).embeddings.length, 1);
    } finally {
      await f.close();
    }
  });
});

describe("the Embed batcher with a controllable node", { timeout: 10_000 }, () => {
  /** One upstream request the batcher made: what it sent, with what urgency, and a way to answer it. */
  interface Sent {
    input: string[];
    signal: AbortSignal;
    urgency: Urgency;
    answer(): void;
  }

  /** A batcher whose upstream answers only when the test says so; `sent(i)` resolves once request `i` went out. */
  function fakeUpstream(windowMs: number) {
    const requests: Sent[] = [];
    const waiting = new Map<number, (s: Sent) => void>();
    const batcher = createEmbedBatcher({
      windowMs,
      maxInputs: 256,
      isRejection: () => false,
      send: (body, signal, urgency) =>
        new Promise<EmbedAnswer>((resolve, reject) => {
          const input = body["input"] as string[];
          signal.addEventListener("abort", () => reject(signal.reason as Error), { once: true });
          const request: Sent = {
            input,
            signal,
            urgency,
            answer: () =>
              resolve({
                raw: { embeddings: input.map((t) => [t.length]), prompt_eval_count: input.length },
                node: "fake",
                queueMs: 0,
              }),
          };
          requests.push(request);
          waiting.get(requests.length - 1)?.(request);
        }),
    });
    const sent = (i: number): Promise<Sent> =>
      requests[i] ? Promise.resolve(requests[i]) : new Promise((resolve) => waiting.set(i, resolve));
    return { batcher, requests, sent };
  }

  /** A caller's urgency: a fixed priority and time left. */
  const urgent = (priority: number, remainingMs: number): Urgency => ({
    priority: () => priority,
    remainingMs: () => remainingMs,
  });
  const anyone = urgent(0, 60_000);
  const live = (): AbortSignal => new AbortController().signal;

  it("lets a caller leave a waiting batch without failing the others", async () => {
    const { batcher, requests, sent } = fakeUpstream(20);
    const first = batcher.embed({ model: "m" }, ["a"], live(), anyone);
    const leaving = new AbortController();
    const joined = [
      batcher.embed({ model: "m" }, ["bb"], live(), anyone),
      batcher.embed({ model: "m" }, ["ccc"], leaving.signal, anyone),
      batcher.embed({ model: "m" }, ["dddd"], live(), anyone),
    ];
    const settled = Promise.allSettled([first, ...joined]);
    assert.equal(requests.length, 1, "only the first call went out; the rest wait for it");
    leaving.abort(new Error("client went away"));
    await assert.rejects(joined[1]!, /client went away/, "the caller that left is answered at once");
    (await sent(0)).answer();
    const batch = await sent(1);
    assert.deepEqual(batch.input, ["bb", "dddd"], "the batch went out without the caller that left");
    batch.answer();
    const [a, b, c, d] = await settled;
    assert.deepEqual((a as PromiseFulfilledResult<EmbedShare>).value.vectors, [[1]]);
    assert.deepEqual((b as PromiseFulfilledResult<EmbedShare>).value.vectors, [[2]]);
    assert.equal(c!.status, "rejected");
    assert.deepEqual((d as PromiseFulfilledResult<EmbedShare>).value.vectors, [[4]]);
  });

  it("answers a caller that leaves a batch in flight at once and aborts the upstream request only when every caller has gone", async () => {
    const { batcher, sent } = fakeUpstream(1);
    const blocker = batcher.embed({ model: "m" }, ["x"], live(), anyone);
    const c1 = new AbortController();
    const c2 = new AbortController();
    const p1 = batcher.embed({ model: "m" }, ["y"], c1.signal, anyone);
    const p2 = batcher.embed({ model: "m" }, ["z"], c2.signal, anyone);
    const batch = await sent(1);
    c1.abort(new Error("gone"));
    await assert.rejects(p1, /gone/, "the caller that left does not wait for the batch");
    assert.equal(batch.signal.aborted, false, "one caller left, the other still waits");
    c2.abort(new Error("gone too"));
    assert.equal(batch.signal.aborted, true);
    await assert.rejects(p2, /gone too/);
    (await sent(0)).answer();
    await blocker;
  });

  it("gives the others their vectors when one caller's deadline passes while the batch is in flight", async () => {
    const { batcher, sent } = fakeUpstream(1);
    const blocker = batcher.embed({ model: "m" }, ["x"], live(), anyone);
    const expiring = new AbortController();
    const short = batcher.embed({ model: "m" }, ["yy"], expiring.signal, urgent(0, 10));
    const long = batcher.embed({ model: "m" }, ["zzz"], live(), anyone);
    const batch = await sent(1);
    expiring.abort(new Error("deadline exceeded"));
    await assert.rejects(short, /deadline exceeded/);
    batch.answer();
    assert.deepEqual((await long).vectors, [[3]]);
    (await sent(0)).answer();
    await blocker;
  });

  it("admits a lone call with exactly its own priority and time left", async () => {
    const { batcher, sent } = fakeUpstream(1);
    const call = batcher.embed({ model: "m" }, ["alone"], live(), urgent(-7, 1234));
    const request = await sent(0);
    assert.deepEqual([request.urgency.priority(), request.urgency.remainingMs()], [-7, 1234]);
    request.answer();
    await call;
  });

  it("admits a batch with the highest priority and the longest time left among its members still waiting", async () => {
    const { batcher, sent } = fakeUpstream(1);
    const blocker = batcher.embed({ model: "m" }, ["x"], live(), anyone);
    const patient = new AbortController();
    const urgentOne = new AbortController();
    const members = [
      batcher.embed({ model: "m" }, ["a"], live(), urgent(1, 100)),
      batcher.embed({ model: "m" }, ["b"], urgentOne.signal, urgent(7, 50)),
      batcher.embed({ model: "m" }, ["c"], patient.signal, urgent(3, 900)),
    ];
    const settled = Promise.allSettled(members);
    const batch = await sent(1);
    assert.deepEqual([batch.urgency.priority(), batch.urgency.remainingMs()], [7, 900]);
    urgentOne.abort(new Error("gone"));
    patient.abort(new Error("gone"));
    assert.deepEqual(
      [batch.urgency.priority(), batch.urgency.remainingMs()],
      [1, 100],
      "members that left no longer count",
    );
    batch.answer();
    assert.deepEqual(
      (await settled).map((r) => r.status),
      ["fulfilled", "rejected", "rejected"],
    );
    (await sent(0)).answer();
    await blocker;
  });
});

describe("batchUrgency", () => {
  const member = (priority: number, remainingMs: number, aborted = false) => {
    const c = new AbortController();
    if (aborted) c.abort();
    return { signal: c.signal, urgency: { priority: () => priority, remainingMs: () => remainingMs } };
  };
  const cases: { name: string; members: ReturnType<typeof member>[]; want: [number, number] }[] = [
    { name: "one member: its own", members: [member(3, 500)], want: [3, 500] },
    { name: "highest priority, longest time left", members: [member(-5, 900), member(4, 100)], want: [4, 900] },
    { name: "members that left do not count", members: [member(9, 9_000, true), member(1, 100)], want: [1, 100] },
    { name: "all left: all count (the call is aborted anyway)", members: [member(2, 20, true)], want: [2, 20] },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const u = batchUrgency(c.members);
      assert.deepEqual([u.priority(), u.remainingMs()], c.want);
    });
  }
});
