// The simulator, driven by the official `ollama` npm client: if this client is happy, the wire
// format (streams, non-streams, errors) matches what real applications expect from Ollama.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Ollama } from "ollama";
import type { Tool } from "ollama";
import { startSimulator, type Simulator } from "../src/simulator/index.js";

interface ClientError {
  readonly name: string;
  readonly message: string;
  readonly status_code?: number;
}

/** Awaits a promise that must reject and returns its error as a ClientError. */
async function rejection(promise: Promise<unknown>): Promise<ClientError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof Error, "rejects with an Error");
    const status = (error as { status_code?: unknown }).status_code;
    return { name: error.name, message: error.message, ...(typeof status === "number" ? { status_code: status } : {}) };
  }
  assert.fail("expected the call to reject");
}

const weatherTool: Tool = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Current weather for a city",
    parameters: {
      type: "object",
      required: ["city"],
      properties: {
        city: { type: "string", description: "City name" },
        unit: { type: "string", enum: ["celsius", "fahrenheit"], description: "Unit" },
      },
    },
  },
};

describe("the simulator, driven by the official ollama client", () => {
  let sim: Simulator;
  let client: Ollama;

  before(async () => {
    sim = await startSimulator();
    client = new Ollama({ host: sim.url });
  });
  after(() => sim.close());

  it("reports a version", async () => {
    assert.deepEqual(await client.version(), { version: "0.12.6" });
  });

  it("streams a chat answer token by token and ends with a done message carrying metrics", async () => {
    const stream = await client.chat({
      model: "llama3.2",
      messages: [{ role: "user", content: "Why is the sky blue?" }],
      stream: true,
    });
    const parts: string[] = [];
    let last;
    for await (const chunk of stream) {
      last = chunk;
      if (!chunk.done) {
        assert.equal(chunk.message.role, "assistant");
        parts.push(chunk.message.content);
      }
    }
    assert.ok(last?.done, "the stream ends with done: true");
    assert.equal(last.done_reason, "stop");
    assert.equal(last.model, "llama3.2", "model echoes the request string");
    assert.ok(parts.length >= 8 && parts.length <= 40, `8-40 tokens, got ${parts.length}`);
    assert.equal(last.eval_count, parts.length, "eval_count counts the streamed tokens");
    assert.ok(last.total_duration > 0 && last.eval_duration > 0 && last.prompt_eval_count > 0);
  });

  it("answers a non-streaming chat with the same text as the stream", async () => {
    const request = { model: "llama3.2", messages: [{ role: "user", content: "Tell me a story" }] };
    const whole = await client.chat({ ...request, stream: false });
    let streamed = "";
    for await (const chunk of await client.chat({ ...request, stream: true })) streamed += chunk.message.content;
    assert.equal(whole.done, true);
    assert.equal(whole.message.content, streamed);
    assert.ok(whole.message.content.length > 0);
  });

  it("generates text deterministically and honours num_predict", async () => {
    const a = await client.generate({ model: "llama3.2", prompt: "Count to ten", options: { num_predict: 7 } });
    const b = await client.generate({ model: "llama3.2", prompt: "Count to ten", options: { num_predict: 7 } });
    const longer = await client.generate({ model: "llama3.2", prompt: "Count to ten", options: { num_predict: 12 } });
    assert.equal(a.response, b.response, "same input, same output");
    assert.equal(a.done_reason, "length");
    assert.equal(a.eval_count, 7);
    assert.ok((longer.response ?? "").startsWith(a.response ?? "-"), "a shorter answer is a prefix of a longer one");
    assert.ok(Array.isArray(a.context) && a.context.length > 0, "generate returns a context");
    const other = await client.generate({
      model: "llama3.2",
      prompt: "Something else entirely",
      options: { num_predict: 7 },
    });
    assert.notEqual(other.response, a.response);
  });

  it("cuts the answer before a stop sequence", async () => {
    const full = await client.generate({ model: "llama3.2", prompt: "stop test", options: { num_predict: 20 } });
    const text = full.response ?? "";
    const words = text.split(" ");
    const stopAt = words[5] ?? "";
    const cut = await client.generate({
      model: "llama3.2",
      prompt: "stop test",
      options: { num_predict: 20, stop: [` ${stopAt}`] },
    });
    assert.equal(cut.done_reason, "stop");
    assert.ok(stopAt !== "" && text.includes(` ${stopAt}`));
    assert.equal(cut.response, text.slice(0, text.indexOf(` ${stopAt}`)));
  });

  it("streams thinking before content for a thinking model, and none when think is false", async () => {
    let thinking = "";
    let content = "";
    let thinkingAfterContent = false;
    for await (const chunk of await client.chat({
      model: "qwen3",
      messages: [{ role: "user", content: "hi" }],
      stream: true,
    })) {
      if (chunk.message.thinking) {
        if (content !== "") thinkingAfterContent = true;
        thinking += chunk.message.thinking;
      }
      content += chunk.message.content;
    }
    assert.ok(thinking.length > 0, "thinks by default");
    assert.ok(content.length > 0, "then answers");
    assert.equal(thinkingAfterContent, false, "thinking comes first");

    const quiet = await client.chat({ model: "qwen3", messages: [{ role: "user", content: "hi" }], think: false });
    assert.equal(quiet.message.thinking, undefined);
    const generated = await client.generate({ model: "qwen3", prompt: "hi", think: "high" });
    assert.ok((generated.thinking ?? "").length > 0, "generate reports thinking too");
  });

  it("calls a tool when the user asks for it, with arguments built from the schema", async () => {
    const res = await client.chat({
      model: "llama3.2",
      messages: [{ role: "user", content: "What's the weather in Tokyo? Use get_weather." }],
      tools: [weatherTool],
    });
    assert.equal(res.message.content, "");
    assert.equal(res.done_reason, "stop");
    const calls = res.message.tool_calls ?? [];
    assert.equal(calls.length, 1);
    const call = calls[0] as unknown as {
      id: string;
      function: { index: number; name: string; arguments: Record<string, unknown> };
    };
    assert.match(call.id, /^call_[a-z0-9]{8}$/);
    assert.equal(call.function.index, 0);
    assert.equal(call.function.name, "get_weather");
    assert.deepEqual(call.function.arguments, { city: "Tokyo" });

    const answer = await client.chat({
      model: "llama3.2",
      messages: [
        { role: "user", content: "What's the weather in Tokyo? Use get_weather." },
        { role: "assistant", content: "", tool_calls: calls },
        { role: "tool", content: "22 degrees and sunny", tool_name: "get_weather" },
      ],
      tools: [weatherTool],
    });
    assert.equal(answer.message.tool_calls, undefined, "after a tool result the model answers in text");
    assert.ok(answer.message.content.length > 0);
  });

  it("streams a tool call as one chunk followed by the done chunk", async () => {
    const chunks = [];
    for await (const chunk of await client.chat({
      model: "qwen3",
      think: false,
      messages: [{ role: "user", content: "please call get_weather for Paris" }],
      tools: [weatherTool],
      stream: true,
    })) {
      chunks.push(chunk);
    }
    assert.equal(chunks.length, 2);
    assert.equal(chunks[0]?.message.tool_calls?.[0]?.function.name, "get_weather");
    assert.deepEqual(chunks[0]?.message.tool_calls?.[0]?.function.arguments, { city: "Paris" });
    assert.equal(chunks[1]?.done, true);
  });

  it("embeds text into deterministic, L2-normalised vectors", async () => {
    const res = await client.embed({ model: "all-minilm", input: ["hello world", "goodbye moon"] });
    assert.equal(res.model, "all-minilm");
    assert.equal(res.embeddings.length, 2);
    for (const vector of res.embeddings) {
      assert.equal(vector.length, 384);
      const norm = Math.sqrt(vector.reduce((s, v) => s + v * v, 0));
      assert.ok(Math.abs(norm - 1) < 1e-5, `norm ${norm}`);
    }
    const again = await client.embed({ model: "all-minilm", input: "hello world" });
    assert.deepEqual(again.embeddings[0], res.embeddings[0]);
    assert.equal(res.prompt_eval_count, 4);
    const cut = await client.embed({ model: "nomic-embed-text", input: "hello", dimensions: 64 });
    assert.equal(cut.embeddings[0]?.length, 64);
    const legacy = await client.embeddings({ model: "nomic-embed-text", prompt: "hello" });
    assert.equal(legacy.embedding.length, 768);
  });

  it("lists installed models newest first with details and capabilities", async () => {
    const { models } = await client.list();
    assert.deepEqual(
      models.map((m) => m.name),
      ["llama3.2:latest", "qwen3:latest", "all-minilm:latest", "nomic-embed-text:latest", "llava:latest"],
    );
    const llama = models[0];
    assert.match(llama?.digest ?? "", /^[0-9a-f]{64}$/);
    assert.equal(llama?.details.family, "llama");
    assert.equal(llama?.details.parameter_size, "3.2B");
    assert.deepEqual((llama as unknown as { capabilities: string[] }).capabilities, ["completion", "tools"]);
  });

  it("shows model metadata, case-insensitively", async () => {
    const show = await client.show({ model: "LLaVA" });
    assert.deepEqual(show.capabilities, ["completion", "vision"]);
    // ollama-js types model_info as a Map, but on the wire it is a JSON object.
    const info = show.model_info as unknown as Record<string, unknown>;
    assert.equal(info["general.architecture"], "llama");
    assert.equal(info["llama.context_length"], 32768);
    assert.equal(info["llama.embedding_length"], 4096);
    assert.match(show.modelfile, /^# Modelfile generated by "ollama show"/);
    assert.ok(show.template.length > 0);
    assert.match(show.parameters, /^stop\s+"\[INST\]"$/m);
  });

  it("lists loaded models in ps with expiry and context length", async () => {
    await client.generate({ model: "llama3.2", prompt: "warm up" });
    const { models } = await client.ps();
    const llama = models.find((m) => m.name === "llama3.2:latest");
    assert.ok(llama, "llama3.2 is loaded");
    assert.ok(new Date(llama.expires_at).getTime() > Date.now() + 4 * 60_000, "expires in ~5 minutes");
    assert.ok(llama.size_vram > 0);
    assert.equal((llama as unknown as { context_length: number }).context_length, 4096);
  });

  it("reports partial offload in ps when a model is larger than the node's VRAM", async () => {
    const small = await startSimulator({ vramBytes: 1e9 });
    try {
      const tight = new Ollama({ host: small.url });
      await tight.generate({ model: "llama3.2", prompt: "warm up" });
      const { models } = await tight.ps();
      assert.equal(models.length, 1);
      assert.equal(models[0]?.size_vram, 1e9, "the GPU holds what fits");
      assert.ok((models[0]?.size ?? 0) > 1e9, "the rest is offloaded to the CPU");
    } finally {
      await small.close();
    }
  });

  it("pulls a model with streamed progress, then lists it", async () => {
    const statuses: string[] = [];
    for await (const progress of await client.pull({ model: "tinyllama", stream: true }))
      statuses.push(progress.status);
    assert.equal(statuses[0], "pulling manifest");
    assert.ok(statuses.some((s) => /^pulling [0-9a-f]{12}$/.test(s)));
    assert.deepEqual(statuses.slice(-3), ["verifying sha256 digest", "writing manifest", "success"]);
    const { models } = await client.list();
    assert.equal(models[0]?.name, "tinyllama:latest", "the pulled model is the newest");
    assert.equal((await client.generate({ model: "tinyllama", prompt: "hi" })).done, true);
  });

  it("pulls without streaming and returns only the final status", async () => {
    assert.deepEqual(await client.pull({ model: "mistral", stream: false }), { status: "success" });
  });

  it("reports an unknown model during a streamed pull as a stream error", async () => {
    const stream = await client.pull({ model: "no-such-model", stream: true });
    const error = await rejection(
      (async () => {
        for await (const _ of stream) {
          // drain
        }
      })(),
    );
    assert.equal(error.message, "pull model manifest: file does not exist");
  });

  it("pushes an installed model with streamed progress and refuses an unknown one", async () => {
    const statuses: string[] = [];
    for await (const progress of await client.push({ model: "llama3.2", stream: true })) statuses.push(progress.status);
    assert.equal(statuses[0], "retrieving manifest");
    assert.ok(statuses.some((s) => /^pushing [0-9a-f]{12}$/.test(s)));
    assert.deepEqual(statuses.slice(-2), ["pushing manifest", "success"]);
    const error = await rejection(client.push({ model: "ghost", stream: false }));
    assert.equal(error.status_code, 500);
    assert.match(error.message, /no such file or directory$/);
  });

  it("copies and deletes models", async () => {
    assert.deepEqual(await client.copy({ source: "llama3.2", destination: "my-llama" }), { status: "success" });
    const copy = await client.show({ model: "my-llama" });
    assert.deepEqual(copy.capabilities, ["completion", "tools"]);
    assert.deepEqual(await client.delete({ model: "my-llama" }), { status: "success" });
    const gone = await rejection(client.show({ model: "my-llama" }));
    assert.equal(gone.status_code, 404);
    assert.equal(gone.message, "model 'my-llama:latest' not found");
  });

  it("surfaces errors as ResponseError with Ollama's status and message", async () => {
    const cases: Array<[Promise<unknown>, number, string]> = [
      [client.generate({ model: "nope", prompt: "x" }), 404, "model 'nope' not found"],
      [client.chat({ model: "nope", messages: [{ role: "user", content: "x" }] }), 404, "model 'nope' not found"],
      [client.embed({ model: "nope", input: "x" }), 404, 'model "nope" not found, try pulling it first'],
      [client.chat({ model: "", messages: [] }), 400, "model is required"],
      [
        client.chat({ model: "llama3.2", messages: [{ role: "user", content: "x" }], think: true }),
        400,
        '"llama3.2" does not support thinking',
      ],
      [
        client.chat({ model: "llava", messages: [{ role: "user", content: "x" }], tools: [weatherTool] }),
        400,
        "registry.ollama.ai/library/llava:latest does not support tools",
      ],
      [client.generate({ model: "all-minilm", prompt: "x" }), 400, '"all-minilm" does not support generate'],
      [
        client.chat({ model: "all-minilm", messages: [{ role: "user", content: "x" }] }),
        400,
        '"all-minilm" does not support chat',
      ],
      [
        client.generate({ model: "llama3.2", prompt: "x", raw: true, system: "s" }),
        400,
        "raw mode does not support template, system, or context",
      ],
      [client.delete({ model: "nope" }), 404, "model 'nope' not found"],
      [client.copy({ source: "nope", destination: "x" }), 404, 'model "nope" not found'],
      [client.pull({ model: "Bad Name!" }), 400, "invalid model name"],
    ];
    for (const [promise, status, message] of cases) {
      const error = await rejection(promise);
      assert.equal(error.name, "ResponseError", message);
      assert.equal(error.status_code, status, message);
      assert.equal(error.message, message);
    }
  });

  it("lets the client abort a stream", async () => {
    const slow = await startSimulator({ tokenMs: 20 });
    try {
      const c = new Ollama({ host: slow.url });
      const stream = await c.generate({
        model: "llama3.2",
        prompt: "long",
        stream: true,
        options: { num_predict: 500 },
      });
      const seen = slow.events.next("disconnect");
      let count = 0;
      const error = await rejection(
        (async () => {
          for await (const _ of stream) {
            if (++count === 3) stream.abort();
          }
        })(),
      );
      assert.equal(error.name, "AbortError");
      const event = await seen;
      assert.equal(event.path, "/api/generate");
      assert.ok(event.tokens >= 3 && event.tokens < 10, `stopped after ${event.tokens} tokens`);
    } finally {
      await slow.close();
    }
  });
});
