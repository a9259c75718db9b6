// The simulator's wire format, checked byte by byte with a plain HTTP client: NDJSON framing,
// content types, omitted zero metrics, load/unload shortcuts, Ollama's exact error texts.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { startSimulator, type Simulator } from "../src/simulator/index.js";
import { json, ndjson, post, send } from "./helpers/sim-http.js";

const CREATED_AT = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$/;
const METRICS = [
  "total_duration",
  "load_duration",
  "prompt_eval_count",
  "prompt_eval_duration",
  "eval_count",
  "eval_duration",
];

describe("the simulator's wire format", () => {
  let sim: Simulator;
  let api: (path: string) => string;

  before(async () => {
    sim = await startSimulator({ loadMs: 60 });
    api = (path) => `${sim.url}${path}`;
  });
  after(() => sim.close());

  describe("streaming", () => {
    it("streams NDJSON by default when `stream` is absent, one newline-terminated object per token", async () => {
      const res = await post(api("/api/generate"), { model: "llama3.2", prompt: "hello", options: { num_predict: 4 } });
      assert.equal(res.status, 200);
      assert.equal(res.headers["content-type"], "application/x-ndjson");
      assert.equal(res.headers["transfer-encoding"], "chunked");
      const lines = ndjson(res);
      assert.equal(lines.length, 5, "4 token chunks and the done chunk");
      for (const chunk of lines.slice(0, -1)) {
        assert.deepEqual(
          Object.keys(chunk),
          ["model", "created_at", "response", "done"],
          "intermediate chunks carry no metrics",
        );
        assert.equal(chunk.done, false);
        assert.match(String(chunk.created_at), CREATED_AT);
      }
      const done = lines.at(-1) ?? {};
      assert.equal(done.done, true);
      assert.equal(done.response, "");
      assert.equal(done.done_reason, "length");
      assert.ok(Array.isArray(done.context), "non-raw generate carries context");
      for (const key of METRICS)
        assert.ok(Number.isInteger(done[key]) && Number(done[key]) > 0, `${key} is a positive integer`);
    });

    it("streams chat chunks with an assistant message and no context", async () => {
      const res = await post(api("/api/chat"), {
        model: "llama3.2",
        messages: [{ role: "user", content: "hi" }],
        options: { num_predict: 3 },
      });
      const lines = ndjson(res);
      assert.deepEqual(lines[0]?.message, {
        role: "assistant",
        content: (lines[0]?.message as { content: string } | undefined)?.content,
      });
      assert.deepEqual(Object.keys(lines.at(-1) ?? {}).slice(0, 5), [
        "model",
        "created_at",
        "message",
        "done_reason",
        "done",
      ]);
      assert.equal("context" in (lines.at(-1) ?? {}), false);
    });

    it("answers stream:false with one JSON object holding the concatenated text", async () => {
      const body = { model: "llama3.2", prompt: "hello", options: { num_predict: 4 } };
      const res = await post(api("/api/generate"), { ...body, stream: false });
      assert.equal(res.headers["content-type"], "application/json; charset=utf-8");
      const whole = json(res);
      const streamed = ndjson(await post(api("/api/generate"), body));
      assert.equal(whole.response, streamed.map((c) => c.response).join(""));
      assert.equal(whole.done, true);
      assert.equal(res.text.includes("\n"), false);
    });

    it("omits zero-valued metrics instead of sending 0", async () => {
      const res = await post(api("/api/chat"), {
        model: "llama3.2",
        messages: [{ role: "user", content: "hi" }],
        options: { num_predict: 0 },
        stream: false,
      });
      const body = json(res);
      assert.equal(body.done_reason, "length");
      assert.equal("eval_count" in body, false);
      assert.equal(res.text.includes(":0,"), false, res.text);
      assert.ok(Number(body.total_duration) > 0);
    });

    it("leaves out context for raw generate", async () => {
      const body = json(await post(api("/api/generate"), { model: "llama3.2", prompt: "x", raw: true, stream: false }));
      assert.equal("context" in body, false);
    });

    it("returns valid JSON content for format json and schema", async () => {
      const plain = json(
        await post(api("/api/generate"), { model: "llama3.2", prompt: "x", format: "json", stream: false }),
      );
      assert.equal(typeof (JSON.parse(String(plain.response)) as { response: unknown }).response, "string");
      const schema = {
        type: "object",
        properties: { name: { type: "string" }, age: { type: "integer" } },
        required: ["name", "age"],
      };
      const shaped = json(
        await post(api("/api/chat"), {
          model: "llama3.2",
          messages: [{ role: "user", content: "x" }],
          format: schema,
          stream: false,
        }),
      );
      const parsed = JSON.parse((shaped.message as { content: string }).content) as Record<string, unknown>;
      assert.deepEqual(Object.keys(parsed), ["name", "age"]);
      assert.equal(parsed.age, 1);
    });
  });

  describe("load and unload shortcuts", () => {
    it("loads a model for an empty prompt after the load latency, as one JSON object", async () => {
      const own = await startSimulator({ loadMs: 120 });
      try {
        const t0 = performance.now();
        const res = await post(`${own.url}/api/generate`, { model: "qwen3" });
        assert.ok(performance.now() - t0 >= 110, "waited for the load");
        assert.equal(res.headers["content-type"], "application/json; charset=utf-8");
        const body = json(res);
        assert.deepEqual(Object.keys(body), ["model", "created_at", "response", "done", "done_reason"]);
        assert.equal(body.done_reason, "load");
        assert.deepEqual(
          own.loaded().map((r) => r.name),
          ["qwen3:latest"],
        );

        const unload = json(await post(`${own.url}/api/generate`, { model: "qwen3", keep_alive: 0 }));
        assert.equal(unload.done_reason, "unload");
        assert.deepEqual(own.loaded(), []);
        assert.equal(own.stats.unloads["qwen3:latest"], 1);
      } finally {
        await own.close();
      }
    });

    it("loads and unloads through chat with empty messages", async () => {
      const load = json(await post(api("/api/chat"), { model: "llava", messages: [] }));
      assert.deepEqual(load.message, { role: "assistant", content: "" });
      assert.equal(load.done_reason, "load");
      assert.ok(sim.loaded().some((r) => r.name === "llava:latest"));
      const unload = json(await post(api("/api/chat"), { model: "llava", keep_alive: "0s" }));
      assert.equal(unload.done_reason, "unload");
      assert.equal(
        sim.loaded().some((r) => r.name === "llava:latest"),
        false,
      );
    });

    it("answers an unload for a model that is not loaded with 200, and for an unknown model with 404", async () => {
      assert.equal((await post(api("/api/generate"), { model: "nomic-embed-text", keep_alive: 0 })).status, 200);
      assert.equal((await post(api("/api/generate"), { model: "ghost", keep_alive: 0 })).status, 404);
    });

    it("loads an embedding model for empty input and returns no embeddings", async () => {
      const res = await post(api("/api/embed"), { model: "all-minilm", input: [] });
      assert.deepEqual(json(res), { model: "all-minilm", embeddings: [] });
      assert.deepEqual(json(await post(api("/api/embeddings"), { model: "all-minilm", prompt: "" })), {
        embedding: [],
      });
    });
  });

  describe("routing", () => {
    it("answers GET and HEAD / with `Ollama is running`", async () => {
      const get = await send("GET", api("/"));
      assert.equal(get.status, 200);
      assert.equal(get.text, "Ollama is running");
      assert.match(String(get.headers["content-type"]), /^text\/plain/);
      const head = await send("HEAD", api("/"));
      assert.equal(head.status, 200);
      assert.equal(head.text, "");
    });

    it("answers unknown routes with a 404 text body and wrong methods with a 405 text body", async () => {
      const missing = await send("GET", api("/api/nothing"));
      assert.equal(missing.status, 404);
      assert.equal(missing.text, "404 page not found");
      assert.match(String(missing.headers["content-type"]), /^text\/plain/);
      const wrong = await send("GET", api("/api/chat"));
      assert.equal(wrong.status, 405);
      assert.equal(wrong.text, "405 method not allowed");
      assert.equal((await send("POST", api("/api/delete"), { model: "x" })).status, 405);
    });

    it("accepts `name` as an alias of `model` and a JSON body on DELETE", async () => {
      assert.equal(Array.isArray(json(await post(api("/api/show"), { name: "qwen3" })).capabilities), true);
      assert.equal((await send("POST", api("/api/copy"), { source: "qwen3", destination: "temp-copy" })).status, 200);
      const del = await send("DELETE", api("/api/delete"), { name: "temp-copy" });
      assert.equal(del.status, 200);
      assert.equal(del.text, "");
    });

    it("matches model names case-insensitively and echoes the request string", async () => {
      const body = json(
        await post(api("/api/generate"), { model: "Qwen3:LATEST", prompt: "hi", think: false, stream: false }),
      );
      assert.equal(body.model, "Qwen3:LATEST");
      assert.equal("thinking" in body, false);
    });
  });

  describe("errors", () => {
    const cases: Array<[string, string, unknown, number, string]> = [
      ["an empty body", "/api/generate", "", 400, "missing request body"],
      [
        "malformed JSON",
        "/api/chat",
        "{not json",
        400,
        "invalid character 'n' looking for beginning of object key string",
      ],
      [
        "a wrongly typed field",
        "/api/chat",
        { model: "llama3.2", stream: "yes" },
        400,
        "json: cannot unmarshal string into Go struct field ChatRequest.stream of type bool",
      ],
      ["an empty generate model", "/api/generate", { model: "" }, 404, "model '' not found"],
      ["an invalid model name", "/api/generate", { model: "bad name!", prompt: "x" }, 400, "invalid model name"],
      [
        "an invalid think value",
        "/api/chat",
        { model: "qwen3", think: "extreme" },
        400,
        'invalid think value: "extreme" (must be "high", "medium", "low", "max", true, or false)',
      ],
      [
        "top_logprobs out of range",
        "/api/generate",
        { model: "llama3.2", top_logprobs: 21 },
        400,
        "top_logprobs must be between 0 and 20",
      ],
      [
        "a unitless keep_alive string",
        "/api/generate",
        { model: "llama3.2", keep_alive: "-1" },
        400,
        'time: missing unit in duration "-1"',
      ],
      [
        "a suffix on a model without insert",
        "/api/generate",
        { model: "llama3.2", prompt: "a", suffix: "b" },
        400,
        "registry.ollama.ai/library/llama3.2:latest does not support insert",
      ],
      [
        "an invalid format",
        "/api/generate",
        { model: "llama3.2", prompt: "a", format: "yaml" },
        500,
        'invalid format: "\\"yaml\\""; expected "json" or a valid JSON Schema object',
      ],
      [
        "a wrongly typed option",
        "/api/generate",
        { model: "llama3.2", prompt: "a", options: { top_k: "many" } },
        500,
        'option "top_k" must be of type integer',
      ],
      ["non-string embed input", "/api/embed", { model: "all-minilm", input: [1, 2] }, 400, "invalid input type"],
      [
        "an embed input longer than the context",
        "/api/embed",
        { model: "all-minilm", input: "word ".repeat(600), truncate: false },
        400,
        "the input length exceeds the context length",
      ],
      [
        "a legacy embeddings request for an unknown model",
        "/api/embeddings",
        { model: "ghost", prompt: "x" },
        404,
        'model "ghost" not found, try pulling it first',
      ],
      ["show without a model", "/api/show", {}, 400, "model is required"],
      ["show of an unknown model", "/api/show", { model: "Ghost" }, 404, "model 'Ghost:latest' not found"],
      [
        "copy to an invalid name",
        "/api/copy",
        { source: "llama3.2", destination: "no good" },
        400,
        'destination "no good" is invalid',
      ],
      ["delete of an invalid name", "/api/delete", { model: "no good" }, 400, 'name "no good" is invalid'],
    ];
    for (const [what, path, body, status, message] of cases) {
      it(`answers ${what} with ${status} and Ollama's message`, async () => {
        const method = path === "/api/delete" ? "DELETE" : "POST";
        const res = await send(method, api(path), body, { raw: typeof body === "string" });
        assert.equal(res.status, status, res.text);
        assert.equal(res.headers["content-type"], "application/json; charset=utf-8");
        assert.deepEqual(json(res), { error: message });
      });
    }

    it("rejects a prompt of num_ctx tokens or more with 400 when shift is false, and accepts it with shift on", async () => {
      const tooLong = "the prompt is longer than the context length currently available to the model; ";
      const options = { num_ctx: 16, num_predict: 2 };
      const generate = { model: "llama3.2", prompt: "word ".repeat(16), options, shift: false };
      const rejected = await post(api("/api/generate"), generate);
      assert.equal(rejected.status, 400, rejected.text);
      assert.equal(rejected.headers["content-type"], "application/json; charset=utf-8");
      assert.ok(String(json(rejected).error).startsWith(tooLong), rejected.text);
      // One message of 15 words counts 16 tokens (a word per message for its role).
      const chat = {
        model: "llama3.2",
        messages: [{ role: "user", content: "word ".repeat(15) }],
        options,
        shift: false,
      };
      const chatRejected = await post(api("/api/chat"), chat);
      assert.equal(chatRejected.status, 400, chatRejected.text);
      assert.ok(String(json(chatRejected).error).startsWith(tooLong), chatRejected.text);

      assert.equal(
        (await post(api("/api/generate"), { ...generate, prompt: "word ".repeat(15) })).status,
        200,
        "15 tokens fit in 16",
      );
      assert.equal(
        (await post(api("/api/generate"), { ...generate, shift: true })).status,
        200,
        "shift on accepts any length",
      );
      assert.equal((await post(api("/api/chat"), { ...chat, shift: undefined })).status, 200, "shift defaults to on");
      assert.equal(sim.stats.inFlight["llama3.2:latest"] ?? 0, 0);
      assert.ok(
        sim.loaded().every((r) => r.refCount === 0),
        "the rejected requests released the runner",
      );
    });

    it("truncates long embed input by default", async () => {
      const res = json(await post(api("/api/embed"), { model: "all-minilm", input: "word ".repeat(600) }));
      assert.equal(res.prompt_eval_count, 512);
    });
  });

  describe("metadata", () => {
    it("lists loaded models in ps, longest remaining keep-alive first, with Go timestamps", async () => {
      await post(api("/api/generate"), { model: "llama3.2", keep_alive: "1h" });
      await post(api("/api/generate"), { model: "qwen3", keep_alive: "10m" });
      const { models } = json<{ models: Array<Record<string, unknown>> }>(await send("GET", api("/api/ps")));
      assert.deepEqual(
        models.slice(0, 2).map((m) => m.name),
        ["llama3.2:latest", "qwen3:latest"],
      );
      const first = models[0] ?? {};
      assert.deepEqual(Object.keys(first), [
        "name",
        "model",
        "size",
        "digest",
        "details",
        "expires_at",
        "size_vram",
        "context_length",
      ]);
      assert.match(String(first.expires_at), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/);
      assert.ok(Number(first.size) > 2019393189, "loaded size includes the KV cache");
    });

    it("uses the sha256 of the name as the digest", async () => {
      const { createHash } = await import("node:crypto");
      const { models } = json<{ models: Array<{ name: string; digest: string }> }>(await send("GET", api("/api/tags")));
      const llama = models.find((m) => m.name === "llama3.2:latest");
      assert.equal(llama?.digest, createHash("sha256").update("llama3.2:latest").digest("hex"));
    });
  });
});
