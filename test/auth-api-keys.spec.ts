import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { hashApiKey, newApiKey } from "../src/auth/api-keys.js";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../src/gen/grpc/health/v1/health_pb.js";
import { GatewayService } from "../src/gen/ollama/gateway/v1/gateway_pb.js";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { ModelService } from "../src/gen/ollama/gateway/v1/model_pb.js";
import { startSimulator } from "../src/simulator/simulator.js";
import type { Simulator } from "../src/simulator/simulator.js";
import { drain, outcome, tempConfig } from "./helpers/auth.js";
import type { TempConfig } from "./helpers/auth.js";
import { delay } from "./helpers/sim-http.js";
import { startTestGateway } from "./helpers/test-gateway.js";
import type { TestGateway } from "./helpers/test-gateway.js";
import { TRANSPORTS } from "./helpers/transports.js";

const KEYS = {
  full: newApiKey(),
  llama: newApiKey(),
  disabled: newApiKey(),
  expired: newApiKey(),
  env: newApiKey(),
  admin: newApiKey(),
};

const CONFIG = {
  principals: [
    { name: "operator", keys: [{ sha256: hashApiKey(KEYS.full) }], models: ["*"], methods: ["*"], maxPriority: 100 },
    { name: "llama-team", keys: [{ sha256: hashApiKey(KEYS.llama) }], models: ["llama3.2"] },
    { name: "switched-off", keys: [{ sha256: hashApiKey(KEYS.disabled), disabled: true }] },
    { name: "lapsed", keys: [{ sha256: hashApiKey(KEYS.expired), expiresAt: "2020-01-01T00:00:00Z" }] },
    { name: "llama-admin", keys: [{ sha256: hashApiKey(KEYS.admin) }], models: ["llama3.2*"], roles: ["admins"] },
  ],
  roles: { admins: { methods: ["models:admin"] } },
};

const GENERATE = { model: "llama3.2", prompt: "Tell me about llamas", options: { numPredict: 3 } };

describe("API keys over every protocol and both gRPC paths", () => {
  let sim: Simulator;
  let gw: TestGateway;
  let file: TempConfig;

  before(async () => {
    sim = await startSimulator();
    file = await tempConfig(CONFIG);
    gw = await startTestGateway({
      OLLAMA_URL: sim.url,
      GATEWAY_CONFIG_FILE: file.path,
      API_KEYS: `env-service:${hashApiKey(KEYS.env)}`,
    });
  });
  after(async () => {
    await gw.close();
    await sim.close();
    await file.remove();
  });

  const cases: [string, Record<string, string>, string][] = [
    ["no credentials", {}, "Unauthenticated MISSING_CREDENTIALS"],
    ["a wrong key", { authorization: `Bearer ${newApiKey()}` }, "Unauthenticated INVALID_CREDENTIALS"],
    ["a disabled key", { authorization: `Bearer ${KEYS.disabled}` }, "Unauthenticated INVALID_CREDENTIALS"],
    ["an expired key", { authorization: `Bearer ${KEYS.expired}` }, "Unauthenticated EXPIRED_CREDENTIALS"],
    [
      "another scheme",
      { authorization: `Basic ${Buffer.from("a:b").toString("base64")}` },
      "Unauthenticated INVALID_CREDENTIALS",
    ],
    ["a valid key as Bearer", { authorization: `Bearer ${KEYS.full}` }, "ok"],
    ["a valid key as x-api-key", { "x-api-key": KEYS.llama }, "ok"],
    ["an API_KEYS key", { authorization: `Bearer ${KEYS.env}` }, "ok"],
  ];
  for (const t of TRANSPORTS) {
    for (const [what, headers, want] of cases) {
      it(`${t.name}: Generate and Embed with ${what} end ${want}`, async () => {
        const client = createClient(InferenceService, t.make(gw.url));
        const generate = await outcome(async () => {
          const messages = await drain(client.generate(GENERATE, { headers }));
          assert.equal(messages.at(-1)?.done, true);
        });
        assert.equal(generate, want, "Generate");
        const embed = await outcome(() => client.embed({ model: "all-minilm", inputs: ["a"] }, { headers }));
        // llama-team may only use llama3.2.
        assert.equal(embed, headers["x-api-key"] === KEYS.llama ? "PermissionDenied MODEL_NOT_ALLOWED" : want, "Embed");
      });
    }
  }

  it("logs the principal's name on the rpc line and no credential anywhere", async () => {
    const client = createClient(InferenceService, createGrpcTransport({ baseUrl: gw.url }));
    await drain(
      client.generate(GENERATE, { headers: { authorization: `Bearer ${KEYS.llama}`, "x-request-id": "log-1" } }),
    );
    await outcome(() =>
      drain(client.generate(GENERATE, { headers: { "x-api-key": KEYS.disabled, "x-request-id": "log-2" } })),
    );
    const ok = gw.logs.find("rpc").find((l) => l["requestId"] === "log-1");
    assert.equal(ok?.["principal"], "llama-team");
    const refused = gw.logs.find("rpc").find((l) => l["requestId"] === "log-2");
    assert.equal(refused?.["reason"], "INVALID_CREDENTIALS");
    assert.equal(refused?.["principal"], undefined, "a refused call has no principal");
    const everything = JSON.stringify(gw.logs.lines);
    for (const [name, key] of Object.entries(KEYS)) {
      assert.ok(!everything.includes(key), `the ${name} key was logged`);
      assert.ok(!everything.includes(key.slice(4, 16)), `part of the ${name} key was logged`);
      assert.ok(!everything.includes(hashApiKey(key)), `the ${name} key's hash was logged`);
    }
    const start = gw.logs.find("authentication on")[0];
    assert.deepEqual(start?.["modes"], ["api-key"]);
    assert.equal(start?.["keys"], 6);
  });

  describe("permissions", () => {
    const grpc = (): ReturnType<typeof createGrpcTransport> => createGrpcTransport({ baseUrl: gw.url });
    const as = (key: string, extra: Record<string, string> = {}) => ({
      headers: { authorization: `Bearer ${key}`, ...extra },
    });

    it("refuse a model outside the principal's list, in every spelling, on both paths and every RPC that names one", async () => {
      for (const t of TRANSPORTS) {
        const inference = createClient(InferenceService, t.make(gw.url));
        for (const model of ["qwen3", "QWEN3:latest", "library/qwen3"]) {
          const got = await outcome(() => drain(inference.generate({ ...GENERATE, model }, as(KEYS.llama))));
          assert.equal(got, "PermissionDenied MODEL_NOT_ALLOWED", `${t.name} ${model}`);
        }
        const chat = await outcome(() =>
          drain(inference.chat({ model: "qwen3", messages: [{ role: 2, content: "hi" }] }, as(KEYS.llama))),
        );
        assert.equal(chat, "PermissionDenied MODEL_NOT_ALLOWED", `${t.name} Chat`);
        for (const model of ["llama3.2", "LLAMA3.2:latest", "registry.ollama.ai/library/llama3.2"]) {
          assert.equal(
            await outcome(() => drain(inference.generate({ ...GENERATE, model }, as(KEYS.llama)))),
            "ok",
            model,
          );
        }
      }
      const models = createClient(ModelService, grpc());
      assert.equal(
        await outcome(() => models.getModel({ model: "qwen3" }, as(KEYS.llama))),
        "PermissionDenied MODEL_NOT_ALLOWED",
      );
      assert.equal(await outcome(() => models.getModel({ model: "llama3.2" }, as(KEYS.llama))), "ok");
    });

    it("refuse each model-admin RPC without an explicit grant, before touching any node", async () => {
      const models = createClient(ModelService, grpc());
      const calls: [string, (key: string) => Promise<unknown>][] = [
        ["PullModel", (k) => drain(models.pullModel({ model: "tinyllama" }, as(k)))],
        ["DeleteModel", (k) => models.deleteModel({ model: "llama3.2" }, as(k))],
        ["CopyModel", (k) => models.copyModel({ source: "llama3.2", destination: "llama3.2-copy" }, as(k))],
        ["LoadModel", (k) => models.loadModel({ model: "llama3.2" }, as(k))],
        ["UnloadModel", (k) => models.unloadModel({ model: "llama3.2" }, as(k))],
      ];
      for (const [method, call] of calls) {
        for (const key of [KEYS.llama, KEYS.env]) {
          assert.equal(await outcome(() => call(key)), "PermissionDenied METHOD_NOT_ALLOWED", method);
        }
      }
      const installed = (await models.listModels({}, as(KEYS.full))).models.map((m) => m.name);
      assert.ok(installed.includes("llama3.2:latest") && !installed.includes("tinyllama:latest"), "nothing was pulled");
      const status = createClient(GatewayService, grpc());
      assert.equal(await outcome(() => status.getStatus({}, as(KEYS.llama))), "PermissionDenied METHOD_NOT_ALLOWED");
      assert.equal(await outcome(() => status.getStatus({}, as(KEYS.full))), "ok");
    });

    it("check both models of a CopyModel and the model of other admin RPCs a role grants", async () => {
      const models = createClient(ModelService, grpc());
      assert.equal(
        await outcome(() => models.copyModel({ source: "llama3.2", destination: "qwen3-evil" }, as(KEYS.admin))),
        "PermissionDenied MODEL_NOT_ALLOWED",
      );
      assert.equal(
        await outcome(() => models.loadModel({ model: "qwen3" }, as(KEYS.admin))),
        "PermissionDenied MODEL_NOT_ALLOWED",
      );
      assert.equal(await outcome(() => models.loadModel({ model: "llama3.2" }, as(KEYS.admin))), "ok");
    });

    it("refuse an x-priority above the principal's maximum", async () => {
      const client = createClient(InferenceService, grpc());
      assert.equal(
        await outcome(() => drain(client.generate(GENERATE, as(KEYS.llama, { "x-priority": "5" })))),
        "PermissionDenied PRIORITY_NOT_ALLOWED",
      );
      assert.equal(await outcome(() => drain(client.generate(GENERATE, as(KEYS.llama, { "x-priority": "0" })))), "ok");
      assert.equal(await outcome(() => drain(client.generate(GENERATE, as(KEYS.full, { "x-priority": "50" })))), "ok");
    });

    it("show in ListModels and ListRunningModels only the models the caller may use", async () => {
      for (const t of TRANSPORTS) {
        const models = createClient(ModelService, t.make(gw.url));
        const mine = (await models.listModels({}, as(KEYS.llama))).models.map((m) => m.name);
        assert.deepEqual(mine, ["llama3.2:latest"], t.name);
        const all = (await models.listModels({}, as(KEYS.full))).models.map((m) => m.name);
        assert.ok(all.length >= 4 && all.includes("qwen3:latest"), JSON.stringify(all));
      }
      const inference = createClient(InferenceService, grpc());
      await drain(inference.generate({ ...GENERATE, model: "qwen3" }, as(KEYS.full)));
      await drain(inference.generate(GENERATE, as(KEYS.full)));
      const models = createClient(ModelService, grpc());
      // The loaded models come through the ps cache (CACHE_PS_TTL_MS): wait until it shows qwen3.
      let runningAll: string[] = [];
      const until = Date.now() + 15_000;
      while (!runningAll.includes("qwen3:latest") && Date.now() < until) {
        runningAll = (await models.listRunningModels({}, as(KEYS.full))).models.map((m) => m.name);
        if (!runningAll.includes("qwen3:latest")) await delay(100);
      }
      assert.ok(
        runningAll.includes("qwen3:latest") && runningAll.includes("llama3.2:latest"),
        JSON.stringify(runningAll),
      );
      const running = (await models.listRunningModels({}, as(KEYS.llama))).models.map((m) => m.name);
      assert.deepEqual(running, ["llama3.2:latest"]);
    });

    it("leave health open to callers without credentials", async () => {
      for (const t of TRANSPORTS) {
        const health = createClient(Health, t.make(gw.url));
        assert.equal((await health.check({})).status, ServingStatus.SERVING, t.name);
      }
    });
  });
});

describe("a gateway without authentication", () => {
  it("says once at start that anyone may call it when it listens beyond loopback", async () => {
    const sim = await startSimulator();
    const open = await startTestGateway({ OLLAMA_URL: sim.url, HOST: "0.0.0.0" });
    const local = await startTestGateway({ OLLAMA_URL: sim.url });
    try {
      const warnings = (gw: TestGateway) =>
        gw.logs.lines.filter((l) => String(l["msg"]).startsWith("authentication is off"));
      assert.equal(warnings(open).length, 1);
      assert.equal(warnings(local).length, 0);
      const client = createClient(InferenceService, createGrpcTransport({ baseUrl: local.url }));
      assert.equal(await outcome(() => drain(client.generate(GENERATE))), "ok", "no credentials needed");
      const line = local.logs.find("rpc").at(-1);
      assert.equal(line?.["principal"], undefined);
    } finally {
      await open.close();
      await local.close();
      await sim.close();
    }
  });
});

describe("authentication before the rate limits", () => {
  it("limits each principal by its name, and unauthenticated calls spend nobody's allowance", async () => {
    const a = newApiKey();
    const b = newApiKey();
    const sim = await startSimulator();
    const gw = await startTestGateway({
      OLLAMA_URL: sim.url,
      API_KEYS: `svc-a:${hashApiKey(a)},svc-b:${hashApiKey(b)}`,
      // One request per 100 s, no burst: the second call of a principal within the test is refused.
      RATE_LIMIT_RPS: "0.01",
      RATE_LIMIT_BURST: "1",
    });
    try {
      const client = createClient(InferenceService, createGrpcTransport({ baseUrl: gw.url }));
      const call = (headers: Record<string, string>) => outcome(() => drain(client.generate(GENERATE, { headers })));
      for (let i = 0; i < 5; i++) assert.equal(await call({}), "Unauthenticated MISSING_CREDENTIALS");
      assert.equal(await call({ "x-api-key": newApiKey() }), "Unauthenticated INVALID_CREDENTIALS");
      assert.equal(await call({ "x-api-key": a }), "ok", "svc-a's allowance was not spent by the others");
      assert.equal(await call({ "x-api-key": a }), "ResourceExhausted RATE_LIMITED");
      assert.equal(await call({ "x-api-key": b }), "ok", "svc-b has its own allowance");
    } finally {
      await gw.close();
      await sim.close();
    }
  });
});
