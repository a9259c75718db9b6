import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import type { Client } from "@connectrpc/connect";
import { ModelService } from "../src/gen/ollama/gateway/v1/model_pb.js";
import type { PullModelResponse } from "../src/gen/ollama/gateway/v1/model_pb.js";
import { GatewayService } from "../src/gen/ollama/gateway/v1/gateway_pb.js";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { ErrorInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { startSimulator } from "../src/simulator/simulator.js";
import type { Simulator } from "../src/simulator/simulator.js";
import { startTestGateway } from "./helpers/test-gateway.js";
import type { TestGateway } from "./helpers/test-gateway.js";
import { TRANSPORTS } from "./helpers/transports.js";

/** JSON for assertion messages (protobuf int64 fields are BigInts). */
function show(v: unknown): string {
  return JSON.stringify(v, (_, x: unknown) => (typeof x === "bigint" ? x.toString() : x));
}

async function codeOf(p: Promise<unknown>): Promise<{ code: Code; reason?: string; error: ConnectError }> {
  try {
    await p;
  } catch (e) {
    const error = ConnectError.from(e);
    return { code: error.code, reason: error.findDetails(ErrorInfoSchema)[0]?.reason, error };
  }
  throw new Error("expected the call to fail");
}

async function pull(
  client: Client<typeof ModelService>,
  model: string,
): Promise<{ messages: PullModelResponse[]; error?: ConnectError }> {
  const messages: PullModelResponse[] = [];
  try {
    for await (const m of client.pullModel({ model })) messages.push(m);
    return { messages };
  } catch (e) {
    return { messages, error: ConnectError.from(e) };
  }
}

describe("the model lifecycle API", () => {
  let a: Simulator;
  let b: Simulator;
  let gw: TestGateway;
  let models: Client<typeof ModelService>;

  before(async () => {
    a = await startSimulator({ loadMs: 150, pullMs: 20 });
    b = await startSimulator({ loadMs: 150, pullMs: 20, models: [{ name: "llama3.2" }, { name: "all-minilm" }] });
    gw = await startTestGateway({ OLLAMA_URLS: `a=${a.url},b=${b.url}` });
    models = createClient(ModelService, TRANSPORTS[0]!.make(gw.url));
  });
  after(async () => {
    await gw.close();
    await a.close();
    await b.close();
  });

  it("lists installed models merged across nodes, each saying which nodes have it", async () => {
    const res = await models.listModels({});
    const llama = res.models.find((m) => m.name === "llama3.2:latest");
    assert.ok(llama, JSON.stringify(res.models.map((m) => m.name)));
    assert.deepEqual(llama.nodes, ["a", "b"]);
    assert.match(llama.digest, /^[0-9a-f]{64}$/);
    assert.ok(llama.size > 0n);
    assert.equal(llama.details?.format, "gguf");
    assert.ok(llama.capabilities.includes("completion"));
    assert.ok(llama.modifiedAt !== undefined);
    assert.deepEqual(res.models.find((m) => m.name === "qwen3:latest")?.nodes, ["a"]);
    assert.deepEqual(res.unavailableNodes, []);
    assert.deepEqual(
      (await models.listModels({ node: "b" })).models.map((m) => m.name),
      ["all-minilm:latest", "llama3.2:latest"],
    );
  });

  it("describes a model with details, capabilities, parameters, template, license and model info", async () => {
    const m = await models.getModel({ model: "Qwen3" });
    assert.equal(m.name, "qwen3:latest");
    assert.ok(m.capabilities.includes("thinking"));
    assert.ok(m.template.length > 0);
    assert.ok(m.license.length > 0);
    assert.equal(typeof m.modelInfo?.["general.architecture"], "string");
    assert.deepEqual(m.nodes, ["a"]);
    assert.match(m.digest, /^[0-9a-f]{64}$/);
  });

  it("asks Ollama once when 100 calls miss the same model at the same time", async () => {
    const before = (a.stats.requests["/api/show"] ?? 0) + (b.stats.requests["/api/show"] ?? 0);
    const answers = await Promise.all(Array.from({ length: 100 }, () => models.getModel({ model: "llava" })));
    assert.ok(answers.every((r) => r.name === "llava:latest"));
    const after = (a.stats.requests["/api/show"] ?? 0) + (b.stats.requests["/api/show"] ?? 0);
    assert.equal(after - before, 1);
    await models.getModel({ model: "llava" });
    assert.equal(
      (a.stats.requests["/api/show"] ?? 0) + (b.stats.requests["/api/show"] ?? 0),
      after,
      "then served from the cache",
    );
  });

  it("answers NOT_FOUND for an unknown model and INVALID_ARGUMENT for an invalid name", async () => {
    const missing = await codeOf(models.getModel({ model: "nope" }));
    assert.equal(missing.code, Code.NotFound);
    assert.equal(missing.reason, "MODEL_NOT_FOUND");
    const invalid = await codeOf(models.getModel({ model: "bad name!" }));
    assert.equal(invalid.code, Code.InvalidArgument);
    assert.equal((await codeOf(models.deleteModel({ model: "" }))).code, Code.InvalidArgument);
    assert.equal((await codeOf(models.listModels({ node: "zzz" }))).code, Code.InvalidArgument);
  });

  it("loads a model, returns once it is loaded, lists it as running, and unloads it", async () => {
    const loaded = await models.loadModel({ model: "llama3.2", node: "b", keepAlive: { seconds: 600n } });
    assert.equal(loaded.node, "b");
    assert.ok(Number(loaded.loadDuration?.nanos ?? 0) / 1e6 + Number(loaded.loadDuration?.seconds ?? 0n) * 1000 >= 140);
    const running = await models.listRunningModels({});
    const entry = running.models.find((m) => m.node === "b" && m.name === "llama3.2:latest");
    assert.ok(entry, show(running.models));
    assert.ok(entry.size > 0n);
    assert.ok(entry.contextLength > 0n);
    const expires = Number(entry.expiresAt?.seconds ?? 0n) * 1000;
    assert.ok(expires > Date.now() + 500_000, "expires_at reflects the 10 minute keep_alive");

    const unloaded = await models.unloadModel({ model: "llama3.2" });
    assert.deepEqual(unloaded.nodes, ["b"]);
    await new Promise((r) => setTimeout(r, 50));
    const after = await models.listRunningModels({ node: "b" });
    assert.ok(!after.models.some((m) => m.name === "llama3.2:latest"), show(after.models));
  });

  it("pulls a model with progress, and it is listed at once", async () => {
    const { messages, error } = await pull(models, "tinyllama");
    assert.equal(error, undefined, error?.message);
    assert.equal(messages[0]?.status, "pulling manifest");
    assert.ok(messages.some((m) => m.status.startsWith("pulling ") && m.total > 0n && m.completed <= m.total));
    assert.deepEqual(
      messages
        .filter((m) => m.status === "success")
        .map((m) => m.node)
        .sort(),
      ["a", "b"],
    );
    const listed = await models.listModels({});
    assert.deepEqual(listed.models.find((m) => m.name === "tinyllama:latest")?.nodes, ["a", "b"]);
  });

  it("ends a pull of a model that does not exist with NOT_FOUND and the upstream's message", async () => {
    const { error } = await pull(models, "no-such-model-anywhere");
    assert.equal(error?.code, Code.NotFound);
    const info = error?.findDetails(ErrorInfoSchema)[0];
    assert.equal(info?.reason, "MODEL_NOT_FOUND");
    assert.match(info?.metadata["upstream_message"] ?? "", /file does not exist/);
  });

  it("copies and deletes models, and lists reflect it at once", async () => {
    const copied = await models.copyModel({ source: "llama3.2", destination: "my-llama" });
    assert.deepEqual(copied.nodes, ["a", "b"]);
    let listed = await models.listModels({});
    assert.deepEqual(listed.models.find((m) => m.name === "my-llama:latest")?.nodes, ["a", "b"]);

    const deleted = await models.deleteModel({ model: "my-llama", nodes: ["a"] });
    assert.deepEqual(deleted.nodes, ["a"]);
    listed = await models.listModels({});
    assert.deepEqual(listed.models.find((m) => m.name === "my-llama:latest")?.nodes, ["b"]);

    assert.equal((await codeOf(models.deleteModel({ model: "never-installed" }))).code, Code.NotFound);
    assert.equal((await codeOf(models.copyModel({ source: "never-installed", destination: "x" }))).code, Code.NotFound);
  });

  it("reports version, uptime, nodes and cache counters in GetStatus", async () => {
    const status = await createClient(GatewayService, TRANSPORTS[0]!.make(gw.url)).getStatus({});
    assert.match(status.version, /^\d+\.\d+\.\d+/);
    assert.ok(status.uptime !== undefined);
    assert.deepEqual(
      status.nodes.map((n) => [n.name, n.healthy]),
      [
        ["a", true],
        ["b", true],
      ],
    );
    assert.equal(status.nodes[0]!.ollamaVersion, "0.12.6");
    assert.equal(status.cache?.backend, "memory");
    assert.equal(status.cache?.healthy, true);
    const counters = status.cache?.counters.find((c) => c.kind === "show");
    assert.ok(counters && counters.misses >= 100n && counters.hits >= 1n, show(status.cache?.counters));
  });
});

describe("the embedding cache", () => {
  let sim: Simulator;
  let gw: TestGateway;
  let client: Client<typeof InferenceService>;

  before(async () => {
    sim = await startSimulator();
    gw = await startTestGateway({ OLLAMA_URL: sim.url });
    client = createClient(InferenceService, TRANSPORTS[0]!.make(gw.url));
  });
  after(async () => {
    await gw.close();
    await sim.close();
  });

  it("answers a repeated batch from the cache without calling Ollama", async () => {
    const first = await client.embed({ model: "all-minilm", inputs: ["one fish", "two fish"] });
    assert.equal(first.cachedInputs, 0);
    const calls = sim.stats.requests["/api/embed"] ?? 0;
    const second = await client.embed({ model: "all-minilm", inputs: ["one fish", "two fish"] });
    assert.equal(second.cachedInputs, 2);
    assert.equal(sim.stats.requests["/api/embed"] ?? 0, calls);
    assert.deepEqual(
      second.embeddings.map((e) => e.values),
      first.embeddings.map((e) => e.values),
    );
  });

  it("sends only the misses of a partly cached batch upstream and keeps input order", async () => {
    await client.embed({ model: "all-minilm", inputs: ["red", "green"] });
    const mixed = await client.embed({
      model: "all-minilm",
      inputs: ["blue sky", "red", "pale yellow moon", "green", "blue sky"],
    });
    assert.equal(mixed.cachedInputs, 2);
    assert.equal(
      mixed.usage?.promptTokens,
      5,
      "only 'blue sky' and 'pale yellow moon' were embedded (words are tokens)",
    );
    const direct = await client.embed({
      model: "all-minilm",
      inputs: ["blue sky", "red", "pale yellow moon", "green", "blue sky"],
    });
    assert.deepEqual(
      mixed.embeddings.map((e) => e.values),
      direct.embeddings.map((e) => e.values),
    );
    assert.deepEqual(mixed.embeddings[0]!.values, mixed.embeddings[4]!.values);
  });

  it("keys vectors by dimensions as well as text", async () => {
    const full = await client.embed({ model: "all-minilm", inputs: ["dims"] });
    const cut = await client.embed({ model: "all-minilm", inputs: ["dims"], dimensions: 32 });
    assert.equal(full.embeddings[0]!.values.length, 384);
    assert.equal(cut.embeddings[0]!.values.length, 32);
    assert.equal(cut.cachedInputs, 0);
  });

  it("never serves old vectors after the model name points at new weights", async () => {
    const before = await client.embed({ model: "all-minilm", inputs: ["digest check"] });
    assert.equal(before.embeddings[0]!.values.length, 384);
    const models = createClient(ModelService, TRANSPORTS[0]!.make(gw.url));
    await models.copyModel({ source: "nomic-embed-text", destination: "all-minilm" });
    const after = await client.embed({ model: "all-minilm", inputs: ["digest check"] });
    assert.equal(after.cachedInputs, 0);
    assert.equal(after.embeddings[0]!.values.length, 768, "vectors of the new weights");
  });
});
