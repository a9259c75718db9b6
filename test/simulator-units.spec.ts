// The simulator's building blocks on their own (durations, names, the text model, embeddings,
// CLI parsing) and the standalone CLI process end to end.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  cosine,
  defaultCatalog,
  inferCapabilities,
  parseBytes,
  parseCliArgs,
  parseFault,
  resolveModelSpec,
} from "../src/simulator/index.js";
import { applyDimensions, embed } from "../src/simulator/embedding.js";
import { parseGoDuration, parseKeepAlive } from "../src/simulator/go-duration.js";
import { displayName, fullName, parseModelName } from "../src/simulator/model-name.js";
import { createSemaphore } from "../src/simulator/semaphore.js";
import { planCompletion, type CompletionInput } from "../src/simulator/text-model.js";
import { formatUtc } from "../src/simulator/timestamps.js";
import { send } from "./helpers/sim-http.js";
import { startSimulatorProcess } from "./helpers/sim-process.js";

describe("Go durations and keep_alive", () => {
  it("parses Go duration strings", () => {
    assert.equal(parseGoDuration("5m"), 300_000);
    assert.equal(parseGoDuration("1h30m"), 5_400_000);
    assert.equal(parseGoDuration("300ms"), 300);
    assert.equal(parseGoDuration("1.5s"), 1500);
    assert.equal(parseGoDuration("0"), 0);
    assert.equal(parseGoDuration("-1m"), -60_000);
    assert.equal(parseGoDuration("2us"), 0.002);
  });

  it("fails with Go's error texts", () => {
    assert.throws(() => parseGoDuration("-1"), { message: 'time: missing unit in duration "-1"' });
    assert.throws(() => parseGoDuration("5x"), { message: 'time: unknown unit "x" in duration "5x"' });
    assert.throws(() => parseGoDuration(""), { message: 'time: invalid duration ""' });
    assert.throws(() => parseGoDuration("abc"), { message: 'time: invalid duration "abc"' });
  });

  it("reads keep_alive numbers as seconds, negatives as forever, null as unset", () => {
    assert.equal(parseKeepAlive(10), 10_000);
    assert.equal(parseKeepAlive(-1), Number.POSITIVE_INFINITY);
    assert.equal(parseKeepAlive("-1m"), Number.POSITIVE_INFINITY);
    assert.equal(parseKeepAlive(null), undefined);
    assert.throws(() => parseKeepAlive(true), { message: "Unsupported type: 'bool'" });
  });
});

describe("model names", () => {
  it("applies Ollama's defaults and display rules", () => {
    const name = parseModelName("llama3.2");
    assert.ok(name);
    assert.equal(fullName(name), "registry.ollama.ai/library/llama3.2:latest");
    assert.equal(displayName(name), "llama3.2:latest");
    const namespaced = parseModelName("me/mine:v1");
    assert.ok(namespaced);
    assert.equal(displayName(namespaced), "me/mine:v1");
    const hosted = parseModelName("example.com:5000/team/model:tag");
    assert.equal(hosted?.host, "example.com:5000");
  });

  it("rejects invalid names", () => {
    for (const bad of ["", "has space", "bad!", ":tag", "a/b/c/d/e", "-leading"]) {
      assert.equal(parseModelName(bad), undefined, bad);
    }
  });

  it("infers capabilities from well-known names", () => {
    assert.deepEqual(inferCapabilities("qwen3"), ["completion", "tools", "thinking"]);
    assert.deepEqual(inferCapabilities("mxbai-embed-large"), ["embedding"]);
    assert.deepEqual(inferCapabilities("llava"), ["completion", "vision"]);
    assert.deepEqual(inferCapabilities("qwen2.5-coder"), ["completion", "tools", "insert"]);
    assert.deepEqual(inferCapabilities("mystery"), ["completion"]);
  });

  it("derives digests from the name and fills plausible defaults", () => {
    const spec = resolveModelSpec({ name: "Custom:7B" });
    assert.equal(spec.name, "Custom:7B");
    assert.match(spec.digest, /^[0-9a-f]{64}$/);
    assert.ok(spec.size > 0 && spec.contextLength > 0);
    assert.equal(defaultCatalog().length, 5);
  });
});

describe("the text model", () => {
  const base: CompletionInput = {
    model: "m",
    prompt: "hello",
    lastMessage: "hello",
    lastRole: "user",
    tools: [],
    think: false,
    numPredict: undefined,
    stop: [],
    seed: undefined,
    format: undefined,
  };

  it("is deterministic and depends on the prompt and seed", () => {
    assert.deepEqual(planCompletion(base), planCompletion({ ...base }));
    assert.notDeepEqual(planCompletion(base).content, planCompletion({ ...base, prompt: "other" }).content);
    assert.notDeepEqual(planCompletion(base).content, planCompletion({ ...base, seed: 42 }).content);
  });

  it("produces 8-40 tokens that end a sentence, or exactly num_predict tokens", () => {
    for (let i = 0; i < 30; i++) {
      const plan = planCompletion({ ...base, prompt: `p${i}` });
      assert.ok(plan.content.length >= 8 && plan.content.length <= 40);
      assert.match(plan.content.join(""), /\.$/);
      assert.equal(plan.doneReason, "stop");
    }
    const cut = planCompletion({ ...base, numPredict: 300 });
    assert.equal(cut.content.length, 300);
    assert.equal(cut.doneReason, "length");
  });

  it("counts thinking tokens against num_predict", () => {
    const plan = planCompletion({ ...base, think: true, numPredict: 3 });
    assert.equal(plan.thinking.length, 3);
    assert.equal(plan.content.length, 0);
    assert.equal(plan.doneReason, "length");
  });

  it("calls a tool named in the last user message with schema-shaped arguments", () => {
    const plan = planCompletion({
      ...base,
      lastMessage: "Please look up Berlin with lookup_city",
      tools: [
        {
          name: "lookup_city",
          parameters: {
            type: "object",
            properties: {
              city: { type: "string" },
              days: { type: "integer" },
              metric: { type: "boolean" },
              tags: { type: "array" },
            },
          },
        },
      ],
    });
    assert.deepEqual(plan.toolCalls[0]?.function.arguments, { city: "Berlin", days: 1, metric: true, tags: [] });
    assert.equal(
      planCompletion({ ...base, lastRole: "tool", tools: [{ name: "hello", parameters: {} }] }).toolCalls.length,
      0,
    );
  });
});

describe("embeddings", () => {
  it("are normalised, deterministic and similar for texts that share words", () => {
    const a = embed("m", "the cat sat on the mat", 128);
    const b = embed("m", "the cat sat on a mat", 128);
    const c = embed("m", "quantum chromodynamics lecture notes", 128);
    assert.deepEqual(a, embed("m", "the cat sat on the mat", 128));
    assert.ok(Math.abs(Math.hypot(...a) - 1) < 1e-6);
    assert.ok(cosine(a, b) > cosine(a, c) + 0.3, `${cosine(a, b)} vs ${cosine(a, c)}`);
    const cut = applyDimensions(a, 16);
    assert.equal(cut.length, 16);
    assert.ok(Math.abs(Math.hypot(...cut) - 1) < 1e-6);
  });
});

describe("small utilities", () => {
  it("formats created_at like Go's RFC3339Nano in UTC", () => {
    assert.equal(formatUtc(1_700_000_000_123_450_000n), "2023-11-14T22:13:20.12345Z");
    assert.equal(formatUtc(1_700_000_000_000_000_000n), "2023-11-14T22:13:20Z");
  });

  it("serves semaphore waiters first-in first-out and lets them abort", async () => {
    const sem = createSemaphore(1);
    const order: number[] = [];
    const first = await sem.acquire();
    const controller = new AbortController();
    const waiters = [1, 2, 3].map((i) =>
      sem.acquire(i === 2 ? controller.signal : undefined).then(
        (release) => {
          order.push(i);
          release();
        },
        () => order.push(-i),
      ),
    );
    controller.abort();
    first();
    await Promise.all(waiters);
    assert.deepEqual(order, [-2, 1, 3]);
    assert.equal(sem.held, 0);
  });

  it("validates faults coming from JSON", () => {
    assert.equal(parseFault({ kind: "busy", times: "Infinity" }).times, Number.POSITIVE_INFINITY);
    assert.throws(() => parseFault({ kind: "malformed-line", then: "later" }), /then must be/);
  });
});

describe("the CLI", () => {
  it("reads flags over environment over defaults", () => {
    const { options } = parseCliArgs(
      ["--port", "9999", "--token-ms=5", "--models", "llama3.2,mine:1b=completion+tools"],
      {
        OLLAMA_NUM_PARALLEL: "4",
        SIM_PORT: "1234",
        OLLAMA_KEEP_ALIVE: "-1",
        OLLAMA_MAX_QUEUE: "7",
      },
    );
    assert.equal(options.port, 9999);
    assert.equal(options.tokenMs, 5);
    assert.equal(options.loadMs, 500);
    assert.equal(options.numParallel, 4);
    assert.equal(options.maxQueue, 7);
    assert.equal(options.keepAliveMs, Number.POSITIVE_INFINITY);
    assert.deepEqual(
      options.models?.map((m) => [m.name, m.capabilities]),
      [
        ["llama3.2:latest", ["completion", "tools"]],
        ["mine:1b", ["completion", "tools"]],
      ],
    );
    assert.equal(parseCliArgs([], { OLLAMA_HOST: "0.0.0.0:11500" }).options.port, 11500);
  });

  it("takes a VRAM budget as bytes or with a unit, from the flag or SIM_VRAM_BYTES", () => {
    assert.equal(parseCliArgs(["--vram-bytes", "7GB"], {}).options.vramBytes, 7e9);
    assert.equal(parseCliArgs([], { SIM_VRAM_BYTES: "6.5GiB" }).options.vramBytes, 6.5 * 2 ** 30);
    assert.equal(parseCliArgs(["--vram-bytes=800 MB"], { SIM_VRAM_BYTES: "1" }).options.vramBytes, 8e8);
    assert.equal(parseBytes("7000000000"), 7e9);
    assert.equal(parseBytes("7e9"), 7e9);
    assert.equal(parseBytes("seven"), undefined);
    assert.equal(parseBytes("7 parsecs"), undefined);
    assert.throws(() => parseCliArgs(["--vram-bytes", "lots"], {}), /--vram-bytes: vram-bytes must be a byte count/);
  });

  it("fails clearly on bad input", () => {
    assert.throws(() => parseCliArgs(["--bogus"], {}), /unknown flag "--bogus"/);
    assert.throws(() => parseCliArgs(["--port", "x"], {}), /--port: port must be a number/);
    assert.throws(() => parseCliArgs(["--models", "a=wings"], {}), /unknown capability "wings"/);
    assert.throws(() => parseCliArgs([], { OLLAMA_NUM_PARALLEL: "0" }), /numParallel must be an integer >= 1/);
  });

  it("runs as a process, prints its URL, serves, and exits cleanly on SIGTERM", async () => {
    const sim = await startSimulatorProcess(["--port", "0", "--load-ms", "0"]);
    try {
      const url = sim.url;
      const output = sim.output();
      assert.ok(url, `printed a URL: ${output}`);
      assert.equal((await send("GET", url)).text, "Ollama is running");
      assert.equal(await sim.stop(), 0);
    } finally {
      sim.kill();
    }
  });
});
