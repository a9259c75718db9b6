import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createClient } from "@connectrpc/connect";
import { compressionGzip, createGrpcTransport } from "@connectrpc/connect-node";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import type { ChatResponse, GenerateResponse } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { DoneReason, Role, ThinkMode } from "../src/gen/ollama/gateway/v1/types_pb.js";
import { startSimulator } from "../src/simulator/simulator.js";
import type { Simulator } from "../src/simulator/simulator.js";
import { eventually } from "./helpers/sim-http.js";
import { startTestGateway } from "./helpers/test-gateway.js";
import type { TestGateway } from "./helpers/test-gateway.js";
import { TRANSPORTS } from "./helpers/transports.js";

const WEATHER_TOOL = {
  name: "get_weather",
  description: "Current weather in a city",
  parameters: {
    type: "object",
    properties: { city: { type: "string", description: "City name" } },
    required: ["city"],
  },
};

describe("inference through the gateway", () => {
  let sim: Simulator;
  let gw: TestGateway;

  before(async () => {
    sim = await startSimulator();
    gw = await startTestGateway({ OLLAMA_URL: sim.url });
  });
  after(async () => {
    await gw.close();
    await sim.close();
  });

  for (const t of TRANSPORTS) {
    describe(t.name, () => {
      it("streams Generate as deltas that end in one done message with usage", async () => {
        const client = createClient(InferenceService, t.make(gw.url));
        const got: GenerateResponse[] = [];
        for await (const m of client.generate({
          model: "llama3.2",
          prompt: "Tell me about llamas",
          options: { numPredict: 12 },
        })) {
          got.push(m);
        }
        assert.equal(got.length, 13, "12 tokens and one final message");
        assert.ok(got.slice(0, -1).every((m) => !m.done && m.text !== ""));
        const last = got.at(-1)!;
        assert.equal(last.done, true);
        assert.equal(last.doneReason, DoneReason.LENGTH);
        assert.equal(last.usage?.completionTokens, 12);
        assert.ok((last.usage?.promptTokens ?? 0) > 0);
        assert.equal(last.usage?.node, `127.0.0.1:${new URL(sim.url).port}`);
        assert.ok(last.usage?.totalDuration !== undefined);
      });

      it("gives the same text for the same prompt (the simulator is deterministic)", async () => {
        const client = createClient(InferenceService, t.make(gw.url));
        const text = async (): Promise<string> => {
          let s = "";
          for await (const m of client.generate({ model: "llama3.2", prompt: "same prompt" })) s += m.text;
          return s;
        };
        const a = await text();
        assert.ok(a.length > 0);
        assert.equal(await text(), a);
      });

      it("streams a Chat tool call with its arguments as a JSON object", async () => {
        const client = createClient(InferenceService, t.make(gw.url));
        const got: ChatResponse[] = [];
        for await (const m of client.chat({
          model: "llama3.2",
          messages: [{ role: Role.USER, content: "Please call get_weather for Paris" }],
          tools: [WEATHER_TOOL],
        })) {
          got.push(m);
        }
        const calls = got.flatMap((m) => m.message?.toolCalls ?? []);
        assert.equal(calls.length, 1);
        assert.equal(calls[0]!.name, "get_weather");
        assert.equal(typeof calls[0]!.arguments?.["city"], "string");
        assert.match(calls[0]!.id, /^call_/);
        assert.equal(got.at(-1)!.done, true);
        assert.ok(got.every((m) => m.message?.role === Role.ASSISTANT));
      });

      it("streams thinking before content for a thinking model", async () => {
        const client = createClient(InferenceService, t.make(gw.url));
        const kinds: string[] = [];
        for await (const m of client.chat({
          model: "qwen3",
          messages: [{ role: Role.USER, content: "Why is the sky blue?" }],
          think: ThinkMode.ON,
        })) {
          if (m.message?.thinking) kinds.push("thinking");
          if (m.message?.content) kinds.push("content");
        }
        const firstContent = kinds.indexOf("content");
        assert.ok(kinds.indexOf("thinking") === 0, kinds.join(","));
        assert.ok(firstContent > 0 && !kinds.slice(firstContent).includes("thinking"), kinds.join(","));
      });

      it("does not think when thinking is switched off", async () => {
        const client = createClient(InferenceService, t.make(gw.url));
        for await (const m of client.chat({
          model: "qwen3",
          messages: [{ role: Role.USER, content: "Why is the sky blue?" }],
          think: ThinkMode.OFF,
        })) {
          assert.equal(m.message?.thinking ?? "", "");
        }
      });

      it("embeds a batch as L2-normalised float vectors in input order", async () => {
        const client = createClient(InferenceService, t.make(gw.url));
        // Texts differ per protocol so the embedding cache does not answer.
        const res = await client.embed({
          model: "all-minilm",
          inputs: [`alpha ${t.name}`, `beta ${t.name}`, `alpha ${t.name}`],
        });
        assert.equal(res.embeddings.length, 3);
        for (const e of res.embeddings) {
          assert.equal(e.values.length, 384);
          const norm = Math.sqrt(e.values.reduce((s, x) => s + x * x, 0));
          assert.ok(Math.abs(norm - 1) < 1e-3, `norm ${norm}`);
        }
        assert.deepEqual(res.embeddings[0]!.values, res.embeddings[2]!.values);
        assert.notDeepEqual(res.embeddings[0]!.values, res.embeddings[1]!.values);
        assert.ok((res.usage?.promptTokens ?? 0) > 0);
      });
    });
  }

  it("accepts gzip-compressed requests", async () => {
    const transport = createGrpcTransport({ baseUrl: gw.url, sendCompression: compressionGzip, compressMinBytes: 0 });
    const res = await createClient(InferenceService, transport).embed({
      model: "all-minilm",
      inputs: ["compressed ".repeat(200)],
    });
    assert.equal(res.embeddings[0]!.values.length, 384);
  });

  it("cuts embeddings to the requested dimensions", async () => {
    const client = createClient(InferenceService, TRANSPORTS[0]!.make(gw.url));
    const res = await client.embed({ model: "all-minilm", inputs: ["alpha"], dimensions: 64 });
    assert.equal(res.embeddings[0]!.values.length, 64);
  });

  it("loads a model when the prompt is empty and says so", async () => {
    const client = createClient(InferenceService, TRANSPORTS[0]!.make(gw.url));
    const got: GenerateResponse[] = [];
    for await (const m of client.generate({ model: "llama3.2" })) got.push(m);
    assert.equal(got.length, 1);
    assert.equal(got[0]!.done, true);
    assert.equal(got[0]!.doneReason, DoneReason.LOAD);
  });

  it("logs one line per RPC with request id, method, model, node and code", async () => {
    const client = createClient(InferenceService, TRANSPORTS[0]!.make(gw.url));
    for await (const _ of client.generate(
      { model: "llama3.2", prompt: "log me" },
      { headers: { "x-request-id": "req-42" } },
    ))
      void _;
    const lines = (): Record<string, unknown>[] => gw.logs.find("rpc").filter((l) => l["requestId"] === "req-42");
    assert.ok(await eventually(() => lines().length > 0), "the line is written when the call ends");
    assert.equal(lines().length, 1);
    const line = lines()[0]!;
    assert.equal(line["method"], "ollama.gateway.v1.InferenceService/Generate");
    assert.equal(line["model"], "llama3.2");
    assert.equal(line["code"], "ok");
    assert.equal(typeof line["ms"], "number");
    assert.ok(String(line["node"]).length > 0);
    assert.ok(!JSON.stringify(line).includes("log me"), "prompts are not logged");
  });
});
