import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createCache, createSingleFlight } from "../src/cache/cache.js";
import type { Client } from "@connectrpc/connect";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { ModelService } from "../src/gen/ollama/gateway/v1/model_pb.js";
import { defaultCatalog } from "../src/simulator/catalog.js";
import type { SimModelSpec } from "../src/simulator/catalog.js";
import { startSimulator } from "../src/simulator/simulator.js";
import type { Simulator } from "../src/simulator/simulator.js";
import { startRedis } from "./helpers/redis-server.js";
import type { RedisServer } from "./helpers/redis-server.js";
import { delay, eventually, json, post, send } from "./helpers/sim-http.js";
import { captureLogs } from "./helpers/log-capture.js";
import { startTestGateway } from "./helpers/test-gateway.js";
import type { TestGateway } from "./helpers/test-gateway.js";
import { TRANSPORTS } from "./helpers/transports.js";

/** The client's deadline in the stall tests. */
const DEADLINE_MS = 300;
/** How much later than its deadline a call may end: generous, for a loaded CI machine. */
const SLACK_MS = 1000;
/** How long a stalled Ollama route keeps a request waiting: far longer than any deadline here. */
const STALL_MS = 5000;
/** The gateway's default bound on the age of the /api/tags answer behind an Embed's cache key. */
const DIGEST_MAX_AGE_MS = 1000;

type Models = Client<typeof ModelService>;
type Inference = Client<typeof InferenceService>;

function clients(gw: TestGateway): { models: Models; inference: Inference } {
  const transport = TRANSPORTS[0]!.make(gw.url); // gRPC over HTTP/2: a real connect gRPC client
  return { models: createClient(ModelService, transport), inference: createClient(InferenceService, transport) };
}

/**
 * Call options carrying a deadline of `ms` on the wire only (`grpc-timeout`), without the
 * client's own timer: a DEADLINE_EXCEEDED seen then comes from the gateway (with `timeoutMs` the
 * client gives up by itself, whatever the server does). The signal is a safety net, so a gateway
 * that never answers fails the test (CANCELLED) instead of hanging it.
 */
function wireDeadline(ms: number): { headers: Record<string, string>; signal: AbortSignal } {
  return { headers: { "grpc-timeout": `${ms}m` }, signal: AbortSignal.timeout(ms + 3 * SLACK_MS) };
}

/** Runs a call that must fail; its status code and how long it took. */
async function failure(call: () => Promise<unknown>): Promise<{ code: Code; ms: number; error: ConnectError }> {
  const t0 = performance.now();
  try {
    await call();
  } catch (e) {
    const error = ConnectError.from(e);
    return { code: error.code, ms: performance.now() - t0, error };
  }
  throw new Error("expected the call to fail");
}

/** Runs a call that must succeed; its result and how long it took. */
async function timed<T>(call: () => Promise<T>): Promise<{ value: T; ms: number }> {
  const t0 = performance.now();
  const value = await call();
  return { value, ms: performance.now() - t0 };
}

async function drain(stream: AsyncIterable<unknown>): Promise<number> {
  let n = 0;
  for await (const _ of stream) n++;
  return n;
}

/**
 * The gateway's own log line for the RPC `method` (e.g. "ModelService/ListModels"): the server
 * side of the call, since a client's deadline alone ends the call on the client whatever the
 * server does.
 */
async function serverEnd(gw: TestGateway, method: string): Promise<{ code: string; ms: number; line: string }> {
  const full = `ollama.gateway.v1.${method}`;
  const find = (): Record<string, unknown> | undefined => gw.logs.find("rpc").find((l) => l["method"] === full);
  assert.ok(
    await eventually(() => find() !== undefined, DEADLINE_MS + 2 * SLACK_MS),
    `the gateway never finished ${method}`,
  );
  const line = find()!;
  return { code: String(line["code"]), ms: Number(line["ms"]), line: JSON.stringify(line) };
}

/** Resolves with `performance.now()` when the simulator sees a client give up on `path`. */
function disconnectOn(sim: Simulator, path: string, withinMs = DEADLINE_MS + 2 * SLACK_MS): Promise<number> {
  return sim.events.next("disconnect", { filter: (e) => e.path === path, signal: AbortSignal.timeout(withinMs) }).then(
    (e) => e.at,
    () => {
      throw new Error(`the gateway did not give up its ${path} request within ${withinMs} ms`);
    },
  );
}

/** A vector as it comes back through the gateway's `repeated float` (float32 precision). */
function asFloat32(values: readonly number[]): number[] {
  return values.map((v) => Math.fround(v));
}

/** The vector the simulator itself gives `text` now. */
async function directVector(sim: Simulator, model: string, text: string): Promise<number[]> {
  const res = await post(`${sim.url}/api/embed`, { model, input: [text] });
  assert.equal(res.status, 200, res.text);
  return asFloat32(json<{ embeddings: number[][] }>(res).embeddings[0]!);
}

function stall(sim: Simulator, path: string, ms = STALL_MS): void {
  sim.faults.add({ kind: "stall", path, ms, times: Number.POSITIVE_INFINITY });
}

describe("an RPC whose Ollama node stalls", { timeout: 60_000 }, () => {
  let sim: Simulator;
  before(async () => {
    sim = await startSimulator({ pullMs: 10 });
  });
  after(async () => {
    sim.faults.clear();
    await sim.close();
  });

  /** A fresh memory-only gateway (nothing cached yet) for one test. */
  async function withGateway(
    body: (gw: TestGateway, c: { models: Models; inference: Inference }) => Promise<void>,
  ): Promise<void> {
    const gw = await startTestGateway({ OLLAMA_URL: sim.url });
    try {
      await body(gw, clients(gw));
    } finally {
      sim.faults.clear();
      await gw.close();
    }
  }

  /** The call failed with DEADLINE_EXCEEDED near its deadline, on the client and in the gateway. */
  async function assertDeadline(gw: TestGateway, method: string, result: { code: Code; ms: number }): Promise<void> {
    assert.equal(result.code, Code.DeadlineExceeded, `client saw ${Code[result.code]}`);
    assert.ok(result.ms < DEADLINE_MS + SLACK_MS, `client waited ${result.ms.toFixed(0)} ms`);
    const end = await serverEnd(gw, method);
    assert.equal(end.code, "DeadlineExceeded", `the gateway ended ${method} with ${end.line}`);
    assert.ok(end.ms < DEADLINE_MS + SLACK_MS, `the gateway took ${end.ms} ms`);
  }

  it("ends ListModels with DEADLINE_EXCEEDED at its deadline, and stops asking /api/tags then", async () => {
    await withGateway(async (gw, { models }) => {
      stall(sim, "/api/tags");
      const t0 = performance.now();
      const cut = disconnectOn(sim, "/api/tags");
      await assertDeadline(
        gw,
        "ModelService/ListModels",
        await failure(() => models.listModels({}, wireDeadline(DEADLINE_MS))),
      );
      // The shared load had only this caller: it must not run on to its own 10 s bound.
      assert.ok((await cut) - t0 < DEADLINE_MS + SLACK_MS);
    });
  });

  it("ends GetModel with DEADLINE_EXCEEDED when /api/tags stalls", async () => {
    await withGateway(async (gw, { models }) => {
      stall(sim, "/api/tags");
      const cut = disconnectOn(sim, "/api/tags");
      await assertDeadline(
        gw,
        "ModelService/GetModel",
        await failure(() => models.getModel({ model: "llama3.2" }, wireDeadline(DEADLINE_MS))),
      );
      await cut;
    });
  });

  it("ends GetModel with DEADLINE_EXCEEDED when /api/show stalls, and stops asking /api/show then", async () => {
    await withGateway(async (gw, { models }) => {
      await models.listModels({}); // the tags are cached; only the show goes upstream
      stall(sim, "/api/show");
      const t0 = performance.now();
      const cut = disconnectOn(sim, "/api/show");
      await assertDeadline(
        gw,
        "ModelService/GetModel",
        await failure(() => models.getModel({ model: "qwen3" }, wireDeadline(DEADLINE_MS))),
      );
      assert.ok((await cut) - t0 < DEADLINE_MS + SLACK_MS);
    });
  });

  it("lets a shared /api/show finish for a caller with time left when another caller's deadline passes", async () => {
    await withGateway(async (gw, { models }) => {
      await models.listModels({});
      sim.faults.add({ kind: "stall", path: "/api/show", ms: 800 });
      const shows = sim.stats.requests["/api/show"] ?? 0;
      const disconnects = sim.stats.disconnects;
      const [impatient, patient] = await Promise.all([
        failure(() => models.getModel({ model: "llava" }, wireDeadline(DEADLINE_MS))),
        timed(() => models.getModel({ model: "llava" }, wireDeadline(10_000))),
      ]);
      assert.equal(impatient.code, Code.DeadlineExceeded);
      assert.ok(impatient.ms < DEADLINE_MS + SLACK_MS, `the impatient caller waited ${impatient.ms.toFixed(0)} ms`);
      assert.equal(patient.value.name, "llava:latest");
      assert.ok(patient.ms >= 700, "the patient caller got the stalled answer");
      assert.equal((sim.stats.requests["/api/show"] ?? 0) - shows, 1, "one shared /api/show");
      assert.equal(sim.stats.disconnects - disconnects, 0, "the shared call was not cut for the caller that stayed");
      assert.equal(
        (await serverEnd(gw, "ModelService/GetModel")).code,
        "DeadlineExceeded",
        "the first to end was the impatient one",
      );
    });
  });

  it("ends PullModel with DEADLINE_EXCEEDED when /api/pull stalls", async () => {
    await withGateway(async (gw, { models }) => {
      stall(sim, "/api/pull");
      const cut = disconnectOn(sim, "/api/pull");
      await assertDeadline(
        gw,
        "ModelService/PullModel",
        await failure(() => drain(models.pullModel({ model: "tinyllama" }, wireDeadline(DEADLINE_MS)))),
      );
      await cut;
    });
  });

  it("ends Generate with DEADLINE_EXCEEDED when the model is not in the tags cache and /api/tags stalls", async () => {
    await withGateway(async (gw, { models, inference }) => {
      await models.listModels({}); // tags cached, without the model below
      const pulled = await post(`${sim.url}/api/pull`, { model: "mistral", stream: false }); // behind the gateway's back
      assert.equal(pulled.status, 200, pulled.text);
      stall(sim, "/api/tags");
      const cut = disconnectOn(sim, "/api/tags");
      const result = await failure(() =>
        drain(inference.generate({ model: "mistral", prompt: "hi" }, wireDeadline(DEADLINE_MS))),
      );
      await assertDeadline(gw, "InferenceService/Generate", result);
      await cut;
      assert.equal(sim.stats.requests["/api/generate"] ?? 0, 0, "nothing was generated");
    });
  });

  it("ends Embed with DEADLINE_EXCEEDED when /api/tags stalls", async () => {
    await withGateway(async (gw, { inference }) => {
      stall(sim, "/api/tags");
      const cut = disconnectOn(sim, "/api/tags");
      await assertDeadline(
        gw,
        "InferenceService/Embed",
        await failure(() => inference.embed({ model: "all-minilm", inputs: ["a"] }, wireDeadline(DEADLINE_MS))),
      );
      await cut;
    });
  });

  it("answers an Embed without the cache when its digest cannot be confirmed within a second", async () => {
    await withGateway(async (_gw, { inference }) => {
      const first = await inference.embed({ model: "all-minilm", inputs: ["confirm me"] });
      await delay(DIGEST_MAX_AGE_MS + 100); // the /api/tags answer behind the cache key is too old now
      stall(sim, "/api/tags");
      const embeds = sim.stats.requests["/api/embed"] ?? 0;
      const cut = disconnectOn(sim, "/api/tags", 4 * SLACK_MS);
      const second = await timed(() =>
        inference.embed({ model: "all-minilm", inputs: ["confirm me"] }, wireDeadline(5000)),
      );
      assert.equal(second.value.cachedInputs, 0, "not served from the cache");
      assert.deepEqual(second.value.embeddings[0]!.values, first.embeddings[0]!.values);
      assert.equal((sim.stats.requests["/api/embed"] ?? 0) - embeds, 1, "embedded by Ollama instead");
      assert.ok(second.ms < DIGEST_MAX_AGE_MS + SLACK_MS, `took ${second.ms.toFixed(0)} ms`);
      await cut; // and the abandoned /api/tags stops once the call is over
    });
  });

  it("ends ListRunningModels with DEADLINE_EXCEEDED when /api/ps stalls", async () => {
    await withGateway(async (gw, { models }) => {
      stall(sim, "/api/ps");
      const cut = disconnectOn(sim, "/api/ps");
      await assertDeadline(
        gw,
        "ModelService/ListRunningModels",
        await failure(() => models.listRunningModels({}, wireDeadline(DEADLINE_MS))),
      );
      await cut;
    });
  });

  it("ends UnloadModel with DEADLINE_EXCEEDED, not an empty success, when /api/ps stalls", async () => {
    await withGateway(async (gw, { models }) => {
      stall(sim, "/api/ps");
      await assertDeadline(
        gw,
        "ModelService/UnloadModel",
        await failure(() => models.unloadModel({ model: "llama3.2" }, wireDeadline(DEADLINE_MS))),
      );
    });
  });
});

describe("a gateway whose Redis accepts connections but never answers", { timeout: 60_000 }, () => {
  let redis: RedisServer;
  let sim: Simulator;
  let gw: TestGateway;
  /** A second replica whose Redis commands may take a whole second before they give up. */
  let slow: TestGateway;

  before(async () => {
    redis = await startRedis();
    sim = await startSimulator({ pullMs: 10 });
    const env = { OLLAMA_URL: sim.url, REDIS_URL: redis.url, CACHE_TAGS_TTL_MS: "600000", CACHE_PS_TTL_MS: "600000" };
    gw = await startTestGateway(env);
    slow = await startTestGateway({ ...env, REDIS_COMMAND_TIMEOUT_MS: "1000" });
    assert.ok(await eventually(() => gw.cache.healthy() && slow.cache.healthy(), 5000), "both replicas reach Redis");
  });
  after(async () => {
    redis.resume();
    await gw.close();
    await slow.close();
    await sim.close();
    await redis.stop();
  });

  /** Both replicas use Redis (again): a reconnect flushes their memory tiers, so warm them after this. */
  async function bothHealthy(): Promise<void> {
    assert.ok(await eventually(() => gw.cache.healthy() && slow.cache.healthy(), 8000), "both replicas reach Redis");
  }

  async function whilePaused(body: () => Promise<void>): Promise<void> {
    redis.pause();
    try {
      await body();
    } finally {
      redis.resume();
    }
  }

  it("still answers every kind of call from Ollama, each within a bounded time", async () => {
    const { models, inference } = clients(gw);
    const bound = 2500; // a few command timeouts (250 ms) in a row, plus slack
    await bothHealthy();
    await whilePaused(async () => {
      const before = { ...sim.stats.requests };
      const errors = gw.cache.stats().redisErrors;
      const took: Record<string, number> = {};
      const list = await timed(() => models.listModels({}));
      took["ListModels"] = list.ms;
      assert.ok(list.value.models.some((m) => m.name === "llama3.2:latest"));
      const got = await timed(() => models.getModel({ model: "llama3.2" }));
      took["GetModel"] = got.ms;
      assert.equal(got.value.name, "llama3.2:latest");
      const emb = await timed(() => inference.embed({ model: "all-minilm", inputs: ["hung redis"] }));
      took["Embed"] = emb.ms;
      assert.equal(emb.value.embeddings.length, 1);
      took["CopyModel"] = (await timed(() => models.copyModel({ source: "llama3.2", destination: "while-hung" }))).ms;
      took["DeleteModel"] = (await timed(() => models.deleteModel({ model: "while-hung" }))).ms;
      took["PullModel"] = (await timed(() => drain(models.pullModel({ model: "tinyllama" })))).ms;
      for (const [method, ms] of Object.entries(took)) assert.ok(ms < bound, `${method} took ${ms.toFixed(0)} ms`);
      for (const path of ["/api/tags", "/api/show", "/api/embed", "/api/copy", "/api/delete", "/api/pull"]) {
        assert.ok((sim.stats.requests[path] ?? 0) > (before[path] ?? 0), `${path} was asked`);
      }
      assert.ok(gw.cache.stats().redisErrors > errors, "Redis commands really were sent and timed out");
    });
  });

  it("answers a successful DeleteModel before its deadline although Redis would take longer to invalidate", async () => {
    const { models } = clients(slow);
    await bothHealthy();
    await models.copyModel({ source: "llama3.2", destination: "deadline-doomed" });
    assert.ok((await models.listModels({})).models.some((m) => m.name === "deadline-doomed:latest"));
    await whilePaused(async () => {
      const deadline = 400; // well under the replica's 1 s Redis command timeout
      const deleted = await timed(() => models.deleteModel({ model: "deadline-doomed" }, wireDeadline(deadline)));
      assert.equal(deleted.value.nodes.length, 1, "deleted on the node");
      assert.ok(deleted.ms < deadline, `DeleteModel took ${deleted.ms.toFixed(0)} ms`);
      const end = await serverEnd(slow, "ModelService/DeleteModel");
      assert.equal(end.code, "ok");
      // This replica dropped its entry at once.
      assert.ok(!(await models.listModels({})).models.some((m) => m.name === "deadline-doomed:latest"));
    });
  });

  it("still invalidates on every replica at once when Redis answers: a copy made with a deadline through one is listed by the other", async () => {
    const a = clients(gw).models;
    const b = clients(slow).models;
    await bothHealthy();
    assert.ok(
      !(await b.listModels({})).models.some((m) => m.name === "seen-at-once:latest"),
      "B has the old list cached",
    );
    await a.copyModel({ source: "llama3.2", destination: "seen-at-once" }, wireDeadline(2000));
    assert.ok((await b.listModels({})).models.some((m) => m.name === "seen-at-once:latest"));
  });
});

describe("the vectors of a model pulled again with new weights", { timeout: 60_000 }, () => {
  const catalog = defaultCatalog();
  const spec = (name: string): SimModelSpec => catalog.find((m) => m.name === name)!;
  /** What the registry serves now: the same models, re-published with new weights. */
  const NEW_MINILM = "ab".repeat(32);
  const NEW_NOMIC = "cd".repeat(32);
  let sim: Simulator;
  let gw: TestGateway;
  let models: Models;
  let inference: Inference;

  before(async () => {
    sim = await startSimulator({
      pullMs: 10,
      models: [spec("all-minilm:latest"), spec("nomic-embed-text:latest")],
      registry: [
        { ...spec("all-minilm:latest"), digest: NEW_MINILM },
        { ...spec("nomic-embed-text:latest"), digest: NEW_NOMIC },
      ],
    });
    gw = await startTestGateway({ OLLAMA_URL: sim.url });
    ({ models, inference } = clients(gw));
  });
  after(async () => {
    await gw.close();
    await sim.close();
  });

  it("are new in the simulator itself once it pulls a newer registry version", async () => {
    const other = await startSimulator({
      pullMs: 5,
      models: [{ name: "all-minilm" }],
      registry: [{ name: "all-minilm", digest: NEW_MINILM }],
    });
    try {
      const tags = async (): Promise<string> =>
        json<{ models: { digest: string }[] }>(await send("GET", `${other.url}/api/tags`)).models[0]!.digest;
      const old = await tags();
      assert.notEqual(old, NEW_MINILM);
      const before = await directVector(other, "all-minilm", "weights");
      assert.equal((await post(`${other.url}/api/pull`, { model: "all-minilm", stream: false })).status, 200);
      assert.equal(await tags(), NEW_MINILM);
      assert.notDeepEqual(await directVector(other, "all-minilm", "weights"), before);
    } finally {
      await other.close();
    }
  });

  it("are never the old ones after PullModel through the gateway", async () => {
    const old = await inference.embed({ model: "all-minilm", inputs: ["re-pulled"] });
    assert.equal((await inference.embed({ model: "all-minilm", inputs: ["re-pulled"] })).cachedInputs, 1, "cached");
    const statuses: string[] = [];
    for await (const p of models.pullModel({ model: "all-minilm" })) statuses.push(p.status);
    assert.equal(statuses.at(-1), "success");
    assert.equal((await models.getModel({ model: "all-minilm" })).digest, NEW_MINILM);
    const now = await inference.embed({ model: "all-minilm", inputs: ["re-pulled"] });
    assert.equal(now.cachedInputs, 0);
    assert.deepEqual(now.embeddings[0]!.values, await directVector(sim, "all-minilm", "re-pulled"));
    assert.notDeepEqual(now.embeddings[0]!.values, old.embeddings[0]!.values);
  });

  it(`are served within ${DIGEST_MAX_AGE_MS} ms after the model is pulled again directly on Ollama, and are only ever old or new`, async () => {
    const input = "pulled behind the gateway's back";
    const old = (await inference.embed({ model: "nomic-embed-text", inputs: [input] })).embeddings[0]!.values;
    assert.equal((await inference.embed({ model: "nomic-embed-text", inputs: [input] })).cachedInputs, 1, "cached");
    const pulled = await post(`${sim.url}/api/pull`, { model: "nomic-embed-text", stream: false });
    assert.equal(pulled.status, 200, pulled.text);
    const t0 = performance.now();
    const fresh = await directVector(sim, "nomic-embed-text", input);
    assert.notDeepEqual(fresh, old);
    let switchedAfter: number | undefined;
    while (switchedAfter === undefined && performance.now() - t0 < 3 * DIGEST_MAX_AGE_MS) {
      const got = await inference.embed({ model: "nomic-embed-text", inputs: [input] });
      const values = got.embeddings[0]!.values;
      if (JSON.stringify(values) === JSON.stringify(fresh)) switchedAfter = performance.now() - t0;
      else assert.deepEqual(values, old, "neither the old nor the new weights' vector");
      await delay(25);
    }
    assert.ok(switchedAfter !== undefined, "the old vector was still served 3 s after the re-pull");
    assert.ok(
      switchedAfter < DIGEST_MAX_AGE_MS + 400,
      `the new vector came ${switchedAfter.toFixed(0)} ms after the re-pull`,
    );
    const again = await inference.embed({ model: "nomic-embed-text", inputs: [input] });
    assert.equal(again.cachedInputs, 1, "the new vector is cached under the new digest");
    assert.deepEqual(again.embeddings[0]!.values, fresh);
  });
});

describe("a call shared by several waiters (single flight)", () => {
  it("runs on while one waiter leaves, and is aborted once the last one has left", async () => {
    const flight = createSingleFlight<string>();
    let shared: AbortSignal | undefined;
    const work = (signal: AbortSignal): Promise<string> => {
      shared = signal;
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => resolve("done"), 5000);
        signal.addEventListener("abort", () => {
          clearTimeout(timer);
          reject(new Error("abandoned"));
        });
      });
    };
    const first = new AbortController();
    const second = new AbortController();
    const a = flight("k", work, first.signal);
    const b = flight("k", work, second.signal);
    first.abort(new Error("first gone"));
    await assert.rejects(a, /first gone/, "the waiter that left is told at once, with its own reason");
    assert.equal(shared?.aborted, false, "the other waiter still waits");
    second.abort(new Error("second gone"));
    await assert.rejects(b, /second gone/);
    assert.equal(shared?.aborted, true, "nobody waits any more");
    assert.equal(await flight("k", async () => "again"), "again", "a later caller starts a new call");
  });

  it("is never abandoned while a waiter without a signal shares it", async () => {
    const flight = createSingleFlight<string>();
    let shared: AbortSignal | undefined;
    const leaving = new AbortController();
    const work = async (signal: AbortSignal): Promise<string> => {
      shared = signal;
      await delay(50);
      return "value";
    };
    const gone = flight("k", work, leaving.signal);
    const staying = flight("k", work);
    leaving.abort(new Error("gone"));
    await assert.rejects(gone, /gone/);
    assert.equal(await staying, "value");
    assert.equal(shared?.aborted, false);
  });

  it("rejects a waiter whose signal has already aborted without starting anything", async () => {
    const flight = createSingleFlight<string>();
    let runs = 0;
    await assert.rejects(
      flight("k", async () => String(++runs), AbortSignal.abort(new Error("too late"))),
      /too late/,
    );
    assert.equal(runs, 0);
  });
});

describe("the cache's callers when Redis hangs", { timeout: 30_000 }, () => {
  let redis: RedisServer;
  before(async () => {
    redis = await startRedis();
  });
  after(async () => {
    redis.resume();
    await redis.stop();
  });

  it("stop waiting when their signal aborts, before the command timeout; an invalidation carries on and is remembered", async () => {
    const cache = createCache({ redisUrl: redis.url, log: captureLogs().log, commandTimeoutMs: 1000 });
    try {
      assert.ok(await eventually(() => cache.healthy(), 5000), "connected");
      redis.pause();
      try {
        const t0 = performance.now();
        await assert.rejects(
          cache.get("tags:n1", AbortSignal.timeout(100)),
          (e: unknown) => e instanceof DOMException && e.name === "TimeoutError",
        );
        await assert.rejects(
          cache.set("tags:n1", Buffer.from("v"), 60_000, AbortSignal.timeout(100)),
          (e: unknown) => e instanceof DOMException,
        );
        await cache.invalidate({ keys: ["ps:n1"] }, AbortSignal.timeout(100));
        const took = performance.now() - t0;
        assert.ok(took < 3 * 100 + 400, `three calls took ${took.toFixed(0)} ms (each Redis command may take 1000 ms)`);
        assert.equal(cache.stats().pendingInvalidations, 0, "the invalidation's Redis part is still running");
        assert.ok(
          await eventually(() => cache.stats().pendingInvalidations === 1, 2000),
          "it gave up at its own bound and waits to be replayed",
        );
        assert.equal(
          (await cache.get("tags:n1"))?.toString(),
          "v",
          "the write reached memory although its caller left",
        );
      } finally {
        redis.resume();
      }
    } finally {
      await cache.close();
    }
  });
});
