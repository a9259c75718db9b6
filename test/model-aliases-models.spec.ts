import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createClient } from "@connectrpc/connect";
import type { Client } from "@connectrpc/connect";
import { hashApiKey, newApiKey } from "../src/auth/api-keys.js";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { ModelService } from "../src/gen/ollama/gateway/v1/model_pb.js";
import type { ModelAlias } from "../src/gen/ollama/gateway/v1/model_pb.js";
import { startSimulator } from "../src/simulator/simulator.js";
import type { Simulator } from "../src/simulator/simulator.js";
import { outcome, tempConfig } from "./helpers/auth.js";
import type { TempConfig } from "./helpers/auth.js";
import { eventually } from "./helpers/sim-http.js";
import { startTestGateway } from "./helpers/test-gateway.js";
import type { TestGateway } from "./helpers/test-gateway.js";
import { TRANSPORTS } from "./helpers/transports.js";

// ListModels and GetModel on model aliases (README, "Model aliases"), through a real gateway in
// front of two simulated nodes with different models installed, over every transport: how an
// alias is marked, which target it is described by, and who may see it.

/** An alias field as plain data: its targets as "model=weight", its fallbacks, the target described. */
function plain(alias: ModelAlias | undefined) {
  return alias === undefined
    ? undefined
    : {
        targets: alias.targets.map((t) => `${t.model}=${t.weight}`),
        fallbacks: alias.fallbacks,
        described: alias.describedModel,
      };
}

const ALIASES = {
  // Config order matters: the first installed target is the one described.
  chat: { targets: { "llama3.2": 90, qwen3: 10 }, fallbacks: ["llama3.2:1b"] },
  canary: { targets: { "nonexistent:7b": 1, qwen3: 3 } },
  ghost: { targets: { "nonexistent:1b": 1 }, fallbacks: ["qwen3"] },
  // Named like a model installed on n0: the alias takes precedence.
  "all-minilm": { targets: { qwen3: 1 } },
};

describe("ListModels and GetModel on model aliases", () => {
  let n0: Simulator;
  let n1: Simulator;
  let gw: TestGateway;
  let file: TempConfig;
  // One key per principal: everything, the alias but none of its models, the alias and only its
  // canary target, and the alias's models but not the alias.
  const keys = { all: newApiKey(), aliasOnly: newApiKey(), canaryOnly: newApiKey(), noAlias: newApiKey() };
  const principals = [
    { name: "all", models: ["*"], keys: [{ sha256: hashApiKey(keys.all) }] },
    { name: "alias-only", models: ["chat"], keys: [{ sha256: hashApiKey(keys.aliasOnly) }] },
    { name: "canary-only", models: ["chat", "qwen3"], keys: [{ sha256: hashApiKey(keys.canaryOnly) }] },
    { name: "no-alias", models: ["llama3.2", "qwen3", "llama3.2:1b"], keys: [{ sha256: hashApiKey(keys.noAlias) }] },
  ];
  const as = (key: string) => ({ headers: { authorization: `Bearer ${key}` } });
  const reloads = (): number => gw.logs.find("config file reloaded").length;

  before(async () => {
    n0 = await startSimulator({ models: [{ name: "llama3.2" }, { name: "all-minilm" }] });
    n1 = await startSimulator({ models: [{ name: "qwen3" }, { name: "llama3.2:1b" }] });
    file = await tempConfig({ aliases: ALIASES, principals });
    gw = await startTestGateway({
      OLLAMA_URLS: `n0=${n0.url},n1=${n1.url}`,
      GATEWAY_CONFIG_FILE: file.path,
      CONFIG_WATCH_INTERVAL_MS: "50",
    });
  });
  after(async () => {
    await gw.close();
    await file.remove();
    await n0.close();
    await n1.close();
  });

  for (const t of TRANSPORTS) {
    describe(`over ${t.name}`, () => {
      let models: Client<typeof ModelService>;
      before(() => {
        models = createClient(ModelService, t.make(gw.url));
      });

      it("ListModels marks an alias with its targets, weights, fallbacks and the target it describes", async () => {
        const listed = (await models.listModels({}, as(keys.all))).models;
        const chat = listed.find((m) => m.name === "chat");
        assert.ok(chat, listed.map((m) => m.name).join(", "));
        assert.deepEqual(plain(chat.alias), {
          targets: ["llama3.2=90", "qwen3=10"],
          fallbacks: ["llama3.2:1b"],
          described: "llama3.2",
        });
        assert.equal(chat.digest, "", "an alias is no single set of weights");
        const llama = listed.find((m) => m.name === "llama3.2:latest");
        assert.equal(llama?.alias, undefined, "an installed model is not marked");
        assert.deepEqual(chat.details, llama?.details, "the details are those of the target described");
        assert.deepEqual(chat.nodes, ["n0", "n1"], "every node holding one of its targets");
      });

      it("describes an alias by its first installed target in config order, not its first target", async () => {
        const listed = (await models.listModels({}, as(keys.all))).models;
        const canary = listed.find((m) => m.name === "canary");
        assert.deepEqual(plain(canary?.alias), {
          targets: ["nonexistent:7b=1", "qwen3=3"],
          fallbacks: [],
          described: "qwen3",
        });
        assert.deepEqual(canary?.nodes, ["n1"]);
        const got = await models.getModel({ model: "canary" }, as(keys.all));
        assert.equal(got.alias?.describedModel, "qwen3");
        assert.equal(got.details?.family, listed.find((m) => m.name === "qwen3:latest")?.details?.family);
      });

      it("GetModel on an alias answers under the alias's name with the alias marker and its target's description", async () => {
        const [alias, target] = await Promise.all([
          models.getModel({ model: "chat" }, as(keys.all)),
          models.getModel({ model: "llama3.2" }, as(keys.all)),
        ]);
        assert.equal(alias.name, "chat");
        assert.equal(alias.digest, "");
        assert.deepEqual(plain(alias.alias), {
          targets: ["llama3.2=90", "qwen3=10"],
          fallbacks: ["llama3.2:1b"],
          described: "llama3.2",
        });
        assert.deepEqual(alias.nodes, ["n0", "n1"]);
        assert.equal(alias.template, target.template);
        assert.equal(alias.modelfile, target.modelfile);
        assert.deepEqual(alias.details, target.details);
        assert.equal(target.alias, undefined, "an installed model is not marked");
        assert.equal(target.name, "llama3.2:latest");
      });

      it("lists an alias named like an installed model once, as the alias, since calls by that name use the alias", async () => {
        const listed = (await models.listModels({}, as(keys.all))).models;
        const named = listed.filter((m) => m.name === "all-minilm" || m.name === "all-minilm:latest");
        assert.deepEqual(
          named.map((m) => [m.name, m.alias?.describedModel]),
          [["all-minilm", "qwen3"]],
        );
        const got = await models.getModel({ model: "all-minilm" }, as(keys.all));
        assert.equal(got.alias?.describedModel, "qwen3", "GetModel describes the alias too");
      });

      it("GetModel finds an alias under any spelling of its name (chat is chat:latest)", async () => {
        const got = await models.getModel({ model: "chat:latest" }, as(keys.all));
        assert.equal(got.name, "chat");
        assert.equal(got.alias?.describedModel, "llama3.2");
      });

      it("an alias none of whose targets is installed is not listed, and GetModel on it is NOT_FOUND MODEL_NOT_FOUND", async () => {
        const names = (await models.listModels({}, as(keys.all))).models.map((m) => m.name);
        assert.ok(!names.includes("ghost"), names.join(", "));
        assert.equal(
          await outcome(() => models.getModel({ model: "ghost" }, as(keys.all))),
          "NotFound MODEL_NOT_FOUND",
        );
      });

      it("a caller not granted the alias's name neither sees it nor gets it, like any model it may not use", async () => {
        const names = (await models.listModels({}, as(keys.noAlias))).models.map((m) => m.name);
        assert.ok(!names.includes("chat") && !names.includes("canary"), names.join(", "));
        assert.ok(names.includes("qwen3:latest"), "its own models are listed");
        assert.equal(
          await outcome(() => models.getModel({ model: "chat" }, as(keys.noAlias))),
          "PermissionDenied MODEL_NOT_ALLOWED",
        );
      });

      it("a caller granted the alias but none of its models neither sees nor gets it, as a call to it is refused", async () => {
        const names = (await models.listModels({}, as(keys.aliasOnly))).models.map((m) => m.name);
        assert.deepEqual(names, []);
        assert.equal(
          await outcome(() => models.getModel({ model: "chat" }, as(keys.aliasOnly))),
          "PermissionDenied MODEL_NOT_ALLOWED",
        );
        const inference = createClient(InferenceService, t.make(gw.url));
        assert.equal(
          await outcome(async () => {
            for await (const _ of inference.generate({ model: "chat", prompt: "x" }, as(keys.aliasOnly)));
          }),
          "PermissionDenied MODEL_NOT_ALLOWED",
          "the same rule as a call",
        );
      });

      it("a caller granted only some of an alias's models is shown and described by those it may use", async () => {
        const chat = (await models.listModels({}, as(keys.canaryOnly))).models.find((m) => m.name === "chat");
        const expected = { targets: ["qwen3=10"], fallbacks: [], described: "qwen3" };
        assert.deepEqual(plain(chat?.alias), expected);
        assert.deepEqual(chat?.nodes, ["n1"]);
        const got = await models.getModel({ model: "chat" }, as(keys.canaryOnly));
        assert.deepEqual(plain(got.alias), expected);
        assert.deepEqual(got.nodes, ["n1"]);
      });
    });
  }

  it("a config reload that changes an alias shows in ListModels and GetModel at once", async () => {
    const models = createClient(ModelService, TRANSPORTS[0]!.make(gw.url));
    const before = reloads();
    await file.write({
      aliases: { ...ALIASES, chat: { targets: { qwen3: 1, "llama3.2": 1 }, fallbacks: [] }, fresh: "llama3.2:1b" },
      principals,
    });
    assert.ok(await eventually(() => reloads() > before, 10_000), "the change was applied");
    const listed = (await models.listModels({}, as(keys.all))).models;
    const expected = { targets: ["qwen3=1", "llama3.2=1"], fallbacks: [], described: "qwen3" };
    assert.deepEqual(plain(listed.find((m) => m.name === "chat")?.alias), expected);
    assert.deepEqual(plain(listed.find((m) => m.name === "fresh")?.alias), {
      targets: ["llama3.2:1b=1"],
      fallbacks: [],
      described: "llama3.2:1b",
    });
    const got = await models.getModel({ model: "chat" }, as(keys.all));
    assert.deepEqual(plain(got.alias), expected);
    const family = (name: string) => listed.find((m) => m.name === name)?.details?.family;
    assert.notEqual(family("qwen3:latest"), family("llama3.2:latest"), "the two targets can be told apart");
    assert.equal(got.details?.family, family("qwen3:latest"), "now described by its new first target");
    assert.equal((await models.getModel({ model: "fresh" }, as(keys.all))).alias?.describedModel, "llama3.2:1b");
  });
});
