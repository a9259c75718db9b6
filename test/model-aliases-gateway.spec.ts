import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createClient } from "@connectrpc/connect";
import { hashApiKey, newApiKey } from "../src/auth/api-keys.js";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { ModelService } from "../src/gen/ollama/gateway/v1/model_pb.js";
import { Role } from "../src/gen/ollama/gateway/v1/types_pb.js";
import { outcome, tempConfig } from "./helpers/auth.js";
import type { TempConfig } from "./helpers/auth.js";
import { fleet, run } from "./helpers/fleet.js";
import type { Fleet, GenerateInit } from "./helpers/fleet.js";
import { holdSlot } from "./helpers/held-request.js";
import { eventually } from "./helpers/sim-http.js";
import { TRANSPORTS } from "./helpers/transports.js";

// Model aliases through a real gateway in front of the simulator (README, "Model aliases"): which
// model serves, what the client and the log are told, and when a fallback is (not) used.

/** What one Generate through an alias returned: its messages, error, and the response headers. */
async function call(
  f: Fleet,
  init: GenerateInit,
  options: { timeoutMs?: number; headers?: Record<string, string> } = {},
) {
  let headers = new Headers();
  const result = await run(f.client, init, { ...options, onHeader: (h) => void (headers = h) });
  return {
    ...result,
    served: headers.get("x-served-model"),
    fallback: headers.get("x-fallback-reason"),
    usageModel: result.messages.at(-1)?.usage?.model,
  };
}

const ALIASES = {
  aliases: {
    chat: { targets: { "llama3.2": 90, qwen3: 10 } },
    steady: { targets: { "llama3.2": 1 }, fallbacks: ["qwen3"] },
    hurry: { targets: { llava: 1 }, fallbacks: ["qwen3"] },
    vectors: { targets: { "all-minilm": 1 } },
    ghost: { targets: { "nonexistent:1b": 1 }, fallbacks: ["qwen3"] },
  },
};

describe("model aliases through the gateway", () => {
  let f: Fleet;
  let file: TempConfig;
  const queued = (): number => f.gw.scheduler.queues().find((q) => q.model === "llama3.2:latest")?.depth ?? 0;

  before(async () => {
    file = await tempConfig(ALIASES);
    f = await fleet(
      1,
      { tokenMs: 5 },
      { GATEWAY_CONFIG_FILE: file.path, CONFIG_WATCH_INTERVAL_MS: "50", QUEUE_MAX_PER_MODEL: "1" },
      1,
      3,
    );
  });
  after(async () => {
    await f.close();
    await file.remove();
  });

  it("lists the aliases in ListModels beside the installed models", async () => {
    const models = createClient(ModelService, TRANSPORTS[0]!.make(f.gw.url));
    const names = (await models.listModels({})).models.map((m) => m.name);
    assert.ok(names.includes("chat") && names.includes("steady"), names.join(", "));
    assert.ok(names.includes("llama3.2:latest"), "the installed models are still listed");
    assert.ok(!names.includes("ghost"), "an alias none of whose targets is installed is not");
  });

  it("keeps one session on one model, and names it in x-served-model and usage.model", async () => {
    for (let session = 0; session < 8; session++) {
      const seen = new Set<string>();
      for (let i = 0; i < 3; i++) {
        const r = await call(f, { model: "chat", prompt: `s${session}-${i}`, sessionKey: `conv-${session}` });
        assert.equal(r.error, undefined);
        assert.ok(r.served === "llama3.2" || r.served === "qwen3", `served by ${r.served}`);
        assert.equal(r.usageModel, r.served, "usage.model names the model that served");
        assert.equal(r.fallback, null, "no fallback was needed");
        seen.add(r.served!);
      }
      assert.equal(seen.size, 1, `session ${session} stayed on one model`);
    }
  });

  it("splits calls without a session key by the alias's weights (90/10 within a wide binomial bound)", async () => {
    const served: Record<string, number> = {};
    // One at a time: this gateway's queues hold one request per model.
    for (let n = 0; n < 300; n++) {
      const r = await call(f, { model: "chat", prompt: `w${n}`, options: { numPredict: 1 } });
      assert.equal(r.error, undefined, r.error?.message);
      served[r.served!] = (served[r.served!] ?? 0) + 1;
    }
    // 30 expected on the canary, standard deviation about 5.2: 4 deviations either side.
    const canary = served["qwen3"] ?? 0;
    assert.equal(canary + (served["llama3.2"] ?? 0), 300, JSON.stringify(served));
    assert.ok(canary >= 9 && canary <= 51, JSON.stringify(served));
  });

  it("falls back when the target is installed nowhere (model-not-found), and says so in the headers and the log", async () => {
    const r = await call(f, { model: "ghost", prompt: "ghost" }, { headers: { "x-request-id": "ghost-call" } });
    assert.equal(r.error, undefined);
    assert.equal(r.served, "qwen3");
    assert.equal(r.fallback, "model-not-found");
    assert.equal(r.usageModel, "qwen3");
    const [line] = f.gw.logs.find("rpc").filter((l) => l["requestId"] === "ghost-call");
    assert.equal(line?.["model"], "ghost");
    assert.equal(line?.["servedModel"], "qwen3");
    assert.equal(line?.["fallbackReason"], "model-not-found");
  });

  it("falls back when the target's queue is full (queue-full)", async () => {
    const holder = await holdSlot(f, { model: "llama3.2", prompt: "holder-full" });
    const waiting = run(f.client, { model: "llama3.2", prompt: "queued-full" });
    try {
      assert.ok(await eventually(() => queued() === 1, 10_000), "the queue of one is full");
      const r = await call(f, { model: "steady", prompt: "over-full" });
      assert.equal(r.error, undefined);
      assert.equal(r.served, "qwen3");
      assert.equal(r.fallback, "queue-full");
    } finally {
      await holder.release();
      await waiting;
    }
  });

  it("falls back when the target's expected wait is longer than the deadline (deadline-too-short)", async () => {
    // Teach the gateway how long a llava request takes (at least 150 tokens of 5 ms: above the deadline).
    await run(f.client, { model: "llava", prompt: "measure", options: { numPredict: 150 } });
    const holder = await holdSlot(f, { model: "llava", prompt: "holder-deadline" });
    try {
      const r = await call(f, { model: "hurry", prompt: "hurried", options: { numPredict: 2 } }, { timeoutMs: 500 });
      assert.equal(r.error, undefined, r.error?.message);
      assert.equal(r.served, "qwen3");
      assert.equal(r.fallback, "deadline-too-short");
    } finally {
      await holder.release();
    }
  });

  it("falls back when every node with the target fails it before answering (no-healthy-node)", async () => {
    const id = f.sims[0]!.faults.add({ kind: "busy", model: "llama3.2", times: -1 });
    try {
      const r = await call(f, { model: "steady", prompt: "busy" });
      assert.equal(r.error, undefined, r.error?.message);
      assert.equal(r.served, "qwen3");
      assert.equal(r.fallback, "no-healthy-node");
    } finally {
      f.sims[0]!.faults.remove(id);
    }
  });

  it("never falls back once a message was sent: the stream fails and the fallback is never asked", async () => {
    const before = f.sims[0]!.stats.requests["/api/generate"] ?? 0;
    const id = f.sims[0]!.faults.add({
      kind: "error-mid-stream",
      afterTokens: 2,
      message: "boom",
      model: "llama3.2",
      times: 1,
    });
    try {
      const r = await call(f, { model: "steady", prompt: "cut", options: { numPredict: 20 } });
      assert.ok(r.messages.length > 0, "messages were sent");
      assert.notEqual(r.error, undefined, "the failure reached the client");
      assert.equal(r.served, "llama3.2");
      assert.equal(f.sims[0]!.stats.requests["/api/generate"], before + 1, "no second request (no fallback)");
    } finally {
      f.sims[0]!.faults.remove(id);
    }
  });

  it("changes an alias on reload without cutting a running stream", async () => {
    const reloads = (): number => f.gw.logs.find("config file reloaded").length;
    const stream = f.client
      .generate({ model: "steady", prompt: "long", options: { numPredict: 400 } }, { onHeader: () => undefined })
      [Symbol.asyncIterator]();
    assert.equal((await stream.next()).done, false, "the stream started");
    const before = reloads();
    await file.write({ aliases: { ...ALIASES.aliases, steady: { targets: { qwen3: 1 } } } });
    assert.ok(await eventually(() => reloads() > before, 10_000), "the change was applied");
    const next = await call(f, { model: "steady", prompt: "after reload" });
    assert.equal(next.served, "qwen3", "new calls use the new alias");
    let last;
    for (let m = await stream.next(); !m.done; m = await stream.next()) last = m.value;
    assert.equal(last?.done, true, "the running stream finished");
    assert.equal(last?.usage?.model, "llama3.2", "on the model it started with");
  });

  for (const t of TRANSPORTS) {
    it(`says which model served Generate, Chat and Embed over ${t.name}`, async () => {
      const client = createClient(InferenceService, t.make(f.gw.url));
      const seen: Record<string, [string | null, string | null]> = {};
      const on = (name: string) => ({
        onHeader: (h: Headers) => void (seen[name] = [h.get("x-served-model"), h.get("x-fallback-reason")]),
      });
      for await (const _ of client.generate({ model: "ghost", prompt: `g ${t.name}` }, on("generate")));
      for await (const _ of client.chat(
        { model: "ghost", messages: [{ role: Role.USER, content: `c ${t.name}` }] },
        on("chat"),
      ));
      await client.embed({ model: "vectors", inputs: [`e ${t.name}`] }, on("embed"));
      assert.deepEqual(seen, {
        generate: ["qwen3", "model-not-found"],
        chat: ["qwen3", "model-not-found"],
        embed: ["all-minilm", null],
      });
    });
  }
});

describe("model aliases with a queue latency budget", () => {
  it("falls back when the target waited the whole budget in the queue (queue-wait-too-long)", async () => {
    const file = await tempConfig({ aliases: { steady: { targets: { "llama3.2": 1 }, fallbacks: ["qwen3"] } } });
    const f = await fleet(1, {}, { GATEWAY_CONFIG_FILE: file.path, QUEUE_MAX_WAIT_MS: "200" }, 1, 3);
    try {
      // Both models loaded side by side first, so the fallback has a free slot at once.
      await run(f.client, { model: "qwen3", prompt: "warm" });
      await run(f.client, { model: "llama3.2", prompt: "warm" });
      const holder = await holdSlot(f, { model: "llama3.2", prompt: "holder" });
      try {
        const r = await call(f, { model: "steady", prompt: "patient" });
        assert.equal(r.error, undefined, r.error?.message);
        assert.equal(r.served, "qwen3");
        assert.equal(r.fallback, "queue-wait-too-long");
      } finally {
        await holder.release();
      }
    } finally {
      await f.close();
      await file.remove();
    }
  });
});

describe("model aliases and permissions", () => {
  it("serves an alias only with models the caller may use, and refuses one whose models it may not", async () => {
    const key = newApiKey();
    const file = await tempConfig({
      aliases: {
        chat: { targets: { "llama3.2": 50, qwen3: 50 } },
        private: { targets: { llava: 1 } },
      },
      principals: [{ name: "app", models: ["chat", "private", "qwen3"], keys: [{ sha256: hashApiKey(key) }] }],
    });
    const f = await fleet(1, {}, { GATEWAY_CONFIG_FILE: file.path }, 1, 3);
    const auth = { headers: { authorization: `Bearer ${key}` } };
    try {
      for (let i = 0; i < 10; i++) {
        const r = await call(f, { model: "chat", prompt: `p${i}`, sessionKey: `s${i}` }, auth);
        assert.equal(r.error, undefined, r.error?.message);
        assert.equal(r.served, "qwen3", "never the target it may not use");
      }
      assert.equal(
        await outcome(async () => {
          for await (const _ of f.client.generate({ model: "private", prompt: "x" }, auth));
        }),
        "PermissionDenied MODEL_NOT_ALLOWED",
      );
      assert.equal(
        await outcome(async () => {
          for await (const _ of f.client.generate({ model: "llama3.2", prompt: "x" }, auth));
        }),
        "PermissionDenied MODEL_NOT_ALLOWED",
        "the alias grants nothing beyond itself",
      );
    } finally {
      await f.close();
      await file.remove();
    }
  });
});
