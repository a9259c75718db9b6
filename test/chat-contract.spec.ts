// The Chat and Generate contract through the gateway: every proto field reaches Ollama as the
// JSON Ollama documents (checked on the exact body the simulator received), and what Ollama
// answers reaches the client in its proto shape (tool-call arguments as a Struct).
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import type { Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import type { ChatResponse, GenerateResponse } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { DoneReason, Role, ThinkMode } from "../src/gen/ollama/gateway/v1/types_pb.js";
import { defaultCatalog, startSimulator } from "../src/simulator/index.js";
import type { Simulator } from "../src/simulator/index.js";
import { eventually, ndjson, post } from "./helpers/sim-http.js";
import { startTestGateway } from "./helpers/test-gateway.js";
import type { TestGateway } from "./helpers/test-gateway.js";
import { TRANSPORTS } from "./helpers/transports.js";
import type { NamedTransport } from "./helpers/transports.js";

type Inference = Client<typeof InferenceService>;
type ChatInit = Parameters<Inference["chat"]>[0];
type GenerateInit = Parameters<Inference["generate"]>[0];
type Json = Record<string, unknown>;

/** Every transport, plus Connect with the JSON codec (Struct and bytes travel as JSON there). */
const ALL_TRANSPORTS: NamedTransport[] = [
  ...TRANSPORTS,
  {
    name: "Connect JSON over HTTP/1.1",
    make: (baseUrl) => createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: false }),
  },
];

const FORECAST_TOOL = {
  name: "get_forecast",
  description: "Weather forecast for a city",
  parameters: {
    type: "object",
    properties: {
      city: { type: "string", description: "City name" },
      days: { type: "integer" },
      metric: { type: "boolean" },
      unit: { type: "string", enum: ["celsius", "fahrenheit"] },
      hours: { type: "array", items: { type: "integer" } },
    },
    required: ["city", "days", "metric", "unit", "hours"],
  },
};

/** A PNG signature and every byte value: base64 must carry both unchanged. */
const IMAGE_A = new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 0x0d]);
const IMAGE_B = Uint8Array.from({ length: 256 }, (_, i) => i);
const base64 = (bytes: Uint8Array): string => Buffer.from(bytes).toString("base64");

async function chat(client: Inference, req: ChatInit): Promise<ChatResponse[]> {
  const out: ChatResponse[] = [];
  for await (const m of client.chat(req)) out.push(m);
  return out;
}

async function generate(client: Inference, req: GenerateInit): Promise<GenerateResponse[]> {
  const out: GenerateResponse[] = [];
  for await (const m of client.generate(req)) out.push(m);
  return out;
}

/** Runs `call` and returns its result with the JSON body the simulator received on `path` meanwhile. */
async function withUpstreamBody<T>(
  sim: Simulator,
  path: string,
  call: () => Promise<T>,
): Promise<{ body: Json; result: T }> {
  const seen = sim.events.next("request", { filter: (e) => e.path === path, signal: AbortSignal.timeout(10_000) });
  const [event, result] = await Promise.all([seen, call()]);
  assert.ok(event.body !== undefined, `the simulator recorded the body of ${path}`);
  return { body: JSON.parse(event.body.toString("utf8")) as Json, result };
}

function content(messages: ChatResponse[]): string {
  return messages.map((m) => m.message?.content ?? "").join("");
}

describe("the chat and generate contract through the gateway", () => {
  let sim: Simulator;
  let gw: TestGateway;
  let client: Inference;

  before(async () => {
    sim = await startSimulator({
      models: [...defaultCatalog(), { name: "fim-vision", capabilities: ["completion", "insert", "vision"] }],
    });
    gw = await startTestGateway({ OLLAMA_URL: sim.url });
    client = createClient(InferenceService, TRANSPORTS[0]!.make(gw.url));
  });
  after(async () => {
    await gw.close();
    await sim.close();
  });

  for (const t of ALL_TRANSPORTS) {
    it(`completes a tool round trip over ${t.name}: Struct arguments out, JSON objects to Ollama, tool results back`, async () => {
      const c = createClient(InferenceService, t.make(gw.url));
      const system = { role: Role.SYSTEM, content: "You are a weather assistant." };
      const user = { role: Role.USER, content: "Please call get_forecast for Paris" };

      // Leg 1: the model asks for a tool call.
      const first = await withUpstreamBody(sim, "/api/chat", () =>
        chat(c, { model: "llama3.2", messages: [system, user], tools: [FORECAST_TOOL] }),
      );
      assert.deepEqual(first.body, {
        model: "llama3.2",
        messages: [
          { role: "system", content: "You are a weather assistant." },
          { role: "user", content: "Please call get_forecast for Paris" },
        ],
        stream: true,
        tools: [{ type: "function", function: FORECAST_TOOL }],
      });
      const calls = first.result.flatMap((m) => m.message?.toolCalls ?? []);
      assert.equal(calls.length, 1);
      const call = calls[0]!;
      assert.match(call.id, /^call_[a-z0-9]{8}$/);
      assert.equal(call.name, "get_forecast");
      assert.equal(call.index, 0);
      assert.deepEqual(call.arguments, { city: "Paris", days: 1, metric: true, unit: "celsius", hours: [] });
      // The same request straight to Ollama: the client got exactly Ollama's tool call.
      const direct = ndjson(await post(`${sim.url}/api/chat`, first.body));
      const ollamaCalls = direct.flatMap(
        (chunk) => ((chunk["message"] as Json | undefined)?.["tool_calls"] as Json[] | undefined) ?? [],
      );
      assert.deepEqual(ollamaCalls, [
        { id: call.id, function: { index: 0, name: "get_forecast", arguments: call.arguments } },
      ]);
      const last = first.result.at(-1)!;
      assert.equal(last.done, true);
      assert.equal(last.doneReason, DoneReason.STOP);

      // Leg 2: the client sends the call back with two tool results, one naming its tool.
      const second = {
        id: "call_zz99yy88",
        name: "get_forecast",
        arguments: {
          city: "Lyon",
          days: 2,
          metric: false,
          unit: "fahrenheit",
          hours: [6, 18],
          note: null,
          extra: { nested: [1.5, "x"] },
        },
        index: 1,
      };
      const back = await withUpstreamBody(sim, "/api/chat", () =>
        chat(c, {
          model: "llama3.2",
          messages: [
            system,
            user,
            { role: Role.ASSISTANT, content: "", toolCalls: [call, second] },
            { role: Role.TOOL, content: '{"high":21}', toolName: "get_forecast", toolCallId: call.id },
            { role: Role.TOOL, content: '{"high":19}' },
          ],
          tools: [FORECAST_TOOL],
        }),
      );
      assert.deepEqual(back.body["messages"], [
        { role: "system", content: "You are a weather assistant." },
        { role: "user", content: "Please call get_forecast for Paris" },
        {
          role: "assistant",
          content: "",
          tool_calls: [
            {
              id: call.id,
              function: {
                index: 0,
                name: "get_forecast",
                arguments: { city: "Paris", days: 1, metric: true, unit: "celsius", hours: [] },
              },
            },
            { id: "call_zz99yy88", function: { index: 1, name: "get_forecast", arguments: second.arguments } },
          ],
        },
        { role: "tool", content: '{"high":21}', tool_name: "get_forecast", tool_call_id: call.id },
        { role: "tool", content: '{"high":19}' },
      ]);
      assert.equal(
        back.result.flatMap((m) => m.message?.toolCalls ?? []).length,
        0,
        "after a tool result the model answers in text",
      );
      assert.ok(content(back.result).length > 0);
      assert.equal(back.result.at(-1)?.doneReason, DoneReason.STOP);
    });
  }

  it("sends chat images as base64 strings and counts them on a vision model", async () => {
    const { body, result } = await withUpstreamBody(sim, "/api/chat", () =>
      chat(client, {
        model: "llava",
        messages: [{ role: Role.USER, content: "What is in this picture?", images: [IMAGE_A, IMAGE_B] }],
      }),
    );
    assert.deepEqual(body, {
      model: "llava",
      messages: [{ role: "user", content: "What is in this picture?", images: [base64(IMAGE_A), base64(IMAGE_B)] }],
      stream: true,
    });
    const last = result.at(-1)!;
    assert.equal(last.done, true);
    // 5 words + 1 for the message, and 576 per image on a vision model: both images arrived.
    assert.equal(last.usage?.promptTokens, 6 + 2 * 576);
  });

  it('sends format "json" as the string json and a JSON-schema Struct as a JSON object, and gets JSON back', async () => {
    const messages = [{ role: Role.USER, content: "Describe a person" }];
    const json = await withUpstreamBody(sim, "/api/chat", () =>
      chat(client, { model: "llama3.2", messages, format: { kind: { case: "json", value: true } } }),
    );
    assert.equal(json.body["format"], "json");
    assert.doesNotThrow(() => JSON.parse(content(json.result)), content(json.result));

    const schema = {
      type: "object",
      properties: {
        name: { type: "string" },
        age: { type: "integer" },
        tags: { type: "array", items: { type: "string" } },
      },
      required: ["name", "age"],
    };
    const structured = await withUpstreamBody(sim, "/api/chat", () =>
      chat(client, { model: "llama3.2", messages, format: { kind: { case: "jsonSchema", value: schema } } }),
    );
    assert.deepEqual(structured.body["format"], schema);
    const doc = JSON.parse(content(structured.result)) as Json;
    assert.deepEqual(Object.keys(doc).sort(), ["age", "name"], "the required properties");
    assert.equal(typeof doc["name"], "string");
    assert.equal(typeof doc["age"], "number");

    const off = await withUpstreamBody(sim, "/api/chat", () =>
      chat(client, { model: "llama3.2", messages, format: { kind: { case: "json", value: false } } }),
    );
    assert.deepEqual(
      off.body,
      { model: "llama3.2", messages: [{ role: "user", content: "Describe a person" }], stream: true },
      "json false sends no format",
    );
  });

  it("sends generate's system, suffix, images, format, think, every typed option, the extra options and keep_alive", async () => {
    const { body, result } = await withUpstreamBody(sim, "/api/generate", () =>
      generate(client, {
        model: "fim-vision",
        prompt: "def add(a, b):",
        system: "You complete code.",
        suffix: "return result",
        images: [IMAGE_A, IMAGE_B],
        format: { kind: { case: "json", value: true } },
        think: ThinkMode.OFF,
        keepAlive: { seconds: 90n, nanos: 500_000_000 },
        options: {
          numCtx: 8192,
          numPredict: 5,
          temperature: 0.25,
          topK: 20,
          topP: 0.5,
          minP: 0.05,
          typicalP: 0.75,
          seed: 42n,
          stop: ["<|end|>"],
          repeatLastN: 32,
          repeatPenalty: 1.5,
          presencePenalty: 0.5,
          frequencyPenalty: 0.25,
          numKeep: 8,
          numBatch: 256,
          numGpu: 0,
          mainGpu: 0,
          numThread: 2,
          useMmap: false,
          extra: {
            mirostat: create(ValueSchema, { kind: { case: "numberValue", value: 2 } }),
            mirostat_tau: create(ValueSchema, { kind: { case: "numberValue", value: 4.5 } }),
            penalize_newline: create(ValueSchema, { kind: { case: "boolValue", value: true } }),
          },
        },
      }),
    );
    assert.deepEqual(body, {
      model: "fim-vision",
      prompt: "def add(a, b):",
      stream: true,
      system: "You complete code.",
      suffix: "return result",
      images: [base64(IMAGE_A), base64(IMAGE_B)],
      format: "json",
      options: {
        num_ctx: 8192,
        num_predict: 5,
        temperature: 0.25,
        top_k: 20,
        top_p: 0.5,
        min_p: 0.05,
        typical_p: 0.75,
        repeat_last_n: 32,
        repeat_penalty: 1.5,
        presence_penalty: 0.5,
        frequency_penalty: 0.25,
        num_keep: 8,
        num_batch: 256,
        num_gpu: 0,
        main_gpu: 0,
        num_thread: 2,
        use_mmap: false,
        seed: 42,
        stop: ["<|end|>"],
        mirostat: 2,
        mirostat_tau: 4.5,
        penalize_newline: true,
      },
      keep_alive: 90.5,
      think: false,
    });
    assert.equal(result.filter((m) => !m.done).length, 5);
    const last = result.at(-1)!;
    assert.equal(last.doneReason, DoneReason.LENGTH);
    assert.equal(last.usage?.completionTokens, 5);
    // system 3 + prompt 3 + suffix 2 words, and 576 per image: all of them reached Ollama.
    assert.equal(last.usage?.promptTokens, 8 + 2 * 576);
    // Ollama keeps the runner 90.5 s after the request.
    let left = 0;
    const kept = await eventually(() => {
      const runner = sim.loaded().find((r) => r.name === "fim-vision:latest");
      left = runner !== undefined && runner.refCount === 0 ? runner.expiresAt - Date.now() : 0;
      return left > 80_000 && left <= 90_500;
    });
    assert.ok(kept, `the runner expires in ${left} ms`);
  });

  it("sends raw generate requests without a template and a negative keep_alive as forever", async () => {
    const { body, result } = await withUpstreamBody(sim, "/api/generate", () =>
      generate(client, {
        model: "llama3.2",
        prompt: "[INST] hi [/INST]",
        raw: true,
        keepAlive: { seconds: -1n, nanos: 0 },
        options: { numPredict: 3 },
      }),
    );
    assert.deepEqual(body, {
      model: "llama3.2",
      prompt: "[INST] hi [/INST]",
      stream: true,
      raw: true,
      options: { num_predict: 3 },
      keep_alive: -1,
    });
    assert.equal(result.at(-1)?.usage?.completionTokens, 3);
    // Ollama stores "forever" as the largest duration (MaxInt64 ns): centuries away.
    const centuries = 100 * 365 * 24 * 3600 * 1000;
    assert.ok(
      await eventually(() =>
        sim
          .loaded()
          .some((r) => r.name === "llama3.2:latest" && r.refCount === 0 && r.expiresAt - Date.now() > centuries),
      ),
    );
  });
});
