import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { promisify } from "node:util";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { hashApiKey } from "../src/auth/api-keys.js";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { startSimulator } from "../src/simulator/simulator.js";
import { drain, outcome, tempConfig } from "./helpers/auth.js";
import { REPO_ROOT } from "./helpers/python.js";
import { startTestGateway } from "./helpers/test-gateway.js";

const run = promisify(execFile);

/** Runs `npm run keys -- ...` (its script, without npm's banner); resolves with stdout, stderr and the exit code. */
async function keys(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, ["--import", "tsx", "scripts/keys.ts", ...args], {
      cwd: REPO_ROOT,
      timeout: 30_000,
    });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code?: unknown; stdout?: string; stderr?: string };
    if (typeof err.code !== "number") throw e;
    return { code: err.code, stdout: err.stdout ?? "", stderr: err.stderr ?? "" };
  }
}

/** Pipes `input` into `keys hash` and resolves with what it printed. */
function hashViaStdin(input: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", "scripts/keys.ts", "hash"], { cwd: REPO_ROOT });
    let out = "";
    child.stdout.on("data", (c: Buffer) => (out += c.toString()));
    child.once("error", reject);
    child.once("exit", (code) => (code === 0 ? resolve(out.trim()) : reject(new Error(`exit ${code}`))));
    child.stdin.end(`${input}\n`);
  });
}

describe("npm run keys", () => {
  it("creates a key, prints it once with the entry that makes it work in a gateway", async () => {
    const r = await keys("create", "billing-svc", "--models", "llama3.2,all-*", "--expires", "30d", "--json");
    assert.equal(r.code, 0, r.stderr);
    const { key, entry, apiKeys } = JSON.parse(r.stdout) as {
      key: string;
      entry: { name: string; keys: { sha256: string; expiresAt: string }[]; models: string[] };
      apiKeys: string;
    };
    assert.match(key, /^ogw_[A-Za-z0-9_-]{43}$/);
    assert.equal(entry.name, "billing-svc");
    assert.equal(entry.keys[0]!.sha256, hashApiKey(key));
    const days = (Date.parse(entry.keys[0]!.expiresAt) - Date.now()) / 86_400_000;
    assert.ok(days > 29 && days <= 30, `expires in ${days} days`);
    assert.deepEqual(entry.models, ["llama3.2", "all-*"]);
    assert.equal(apiKeys, `billing-svc:${hashApiKey(key)}`);
    assert.equal(r.stdout.split(key).length - 1, 1, "the key appears once");

    const sim = await startSimulator();
    const file = await tempConfig({ principals: [entry] });
    const gw = await startTestGateway({ OLLAMA_URL: sim.url, GATEWAY_CONFIG_FILE: file.path });
    try {
      const client = createClient(InferenceService, createGrpcTransport({ baseUrl: gw.url }));
      const headers = { authorization: `Bearer ${key}` };
      const generate = { model: "llama3.2", prompt: "hi", options: { numPredict: 1 } };
      assert.equal(await outcome(() => drain(client.generate(generate, { headers }))), "ok");
      assert.equal(await outcome(() => client.embed({ model: "all-minilm", inputs: ["x"] }, { headers })), "ok");
      assert.equal(
        await outcome(() => drain(client.generate({ ...generate, model: "qwen3" }, { headers }))),
        "PermissionDenied MODEL_NOT_ALLOWED",
      );
    } finally {
      await gw.close();
      await sim.close();
      await file.remove();
    }
  });

  it("prints, for people, the key, the file entry and the API_KEYS form", async () => {
    const r = await keys("create", "ops", "--methods", "*", "--max-priority", "50");
    assert.equal(r.code, 0, r.stderr);
    const key = /\n {2}(ogw_\S+)\n/.exec(r.stdout)?.[1];
    assert.ok(key, r.stdout);
    assert.match(r.stdout, /shown once/);
    assert.ok(r.stdout.includes(`"sha256": "${hashApiKey(key)}"`), r.stdout);
    assert.ok(r.stdout.includes(`"maxPriority": 50`), r.stdout);
    assert.ok(r.stdout.includes(`ops:${hashApiKey(key)}`), r.stdout);
  });

  it("hashes a key read from stdin", async () => {
    assert.equal(await hashViaStdin("ogw_example"), hashApiKey("ogw_example"));
  });

  it("refuses what the gateway would refuse, with exit status 2", async () => {
    for (const args of [
      ["create"],
      ["create", "a", "b"],
      ["create", "x", "--methods", "EverythingPlease"],
      ["create", "x", "--max-priority", "500"],
      ["create", "x", "--expires", "someday"],
      ["rotate"],
    ]) {
      const r = await keys(...args);
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.stdout}`);
      assert.match(r.stderr, /usage:/);
      assert.equal(r.stdout, "", "no key is printed when the command fails");
    }
  });
});
