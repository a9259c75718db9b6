import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { SignJWT } from "jose";
import { hashApiKey, newApiKey } from "../src/auth/api-keys.js";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { startSimulator } from "../src/simulator/simulator.js";
import type { Simulator } from "../src/simulator/simulator.js";
import { drain, outcome, tempConfig } from "./helpers/auth.js";
import type { TempConfig } from "./helpers/auth.js";
import { spawnGateway } from "./helpers/gateway-process.js";
import { eventually } from "./helpers/sim-http.js";
import { startTestGateway } from "./helpers/test-gateway.js";
import type { TestGateway } from "./helpers/test-gateway.js";

const GENERATE = { model: "llama3.2", prompt: "Tell me about llamas", options: { numPredict: 2 } };
const bearer = (key: string) => ({ headers: { authorization: `Bearer ${key}` } });

/** Principals with one key each. */
function principals(keys: Record<string, string>, disabled: string[] = []): unknown {
  return {
    principals: Object.entries(keys).map(([name, key]) => ({
      name,
      keys: [{ sha256: hashApiKey(key), disabled: disabled.includes(name) }],
    })),
  };
}

describe("reloading principals when the config file changes", () => {
  let sim: Simulator;
  let gw: TestGateway;
  let file: TempConfig;
  const a = newApiKey();
  const b = newApiKey();

  before(async () => {
    // Slow tokens, so a stream is still running while its key is revoked; slots for both long
    // streams and the calls made meanwhile.
    sim = await startSimulator({ tokenMs: 20, numParallel: 4 });
    file = await tempConfig(principals({ "team-a": a, "team-b": b }));
    gw = await startTestGateway({
      OLLAMA_URL: sim.url,
      OLLAMA_NUM_PARALLEL: "4",
      GATEWAY_CONFIG_FILE: file.path,
      CONFIG_WATCH_INTERVAL_MS: "50",
    });
  });
  after(async () => {
    await gw.close();
    await sim.close();
    await file.remove();
  });

  const reloads = (msg: string): number => gw.logs.find(msg).length;

  it("fails a revoked key's next call while its running streams go on, on both gRPC paths and Connect", async () => {
    const long = { ...GENERATE, options: { numPredict: 5000 } };
    const cancel = new AbortController();
    const streams = [
      createClient(InferenceService, createGrpcTransport({ baseUrl: gw.url })),
      createClient(InferenceService, createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1" })),
    ].map((client) => client.generate(long, { ...bearer(a), signal: cancel.signal })[Symbol.asyncIterator]());
    for (const s of streams) assert.equal((await s.next()).done, false, "the stream started");

    const reloaded = reloads("config file reloaded");
    await file.write(principals({ "team-a": a, "team-b": b }, ["team-a"]));
    assert.ok(await eventually(() => reloads("config file reloaded") > reloaded, 10_000), "the change was applied");

    const client = createClient(InferenceService, createGrpcTransport({ baseUrl: gw.url }));
    assert.equal(
      await outcome(() => drain(client.generate(GENERATE, bearer(a)))),
      "Unauthenticated INVALID_CREDENTIALS",
    );
    assert.equal(await outcome(() => drain(client.generate(GENERATE, bearer(b)))), "ok", "the other key is untouched");
    for (const s of streams) {
      for (let i = 0; i < 5; i++) {
        const m = await s.next();
        assert.equal(m.done, false, "the running stream was not cut");
        assert.equal(m.value?.done, false);
      }
    }
    cancel.abort();
  });

  it("refuses an invalid new file with a clear log and keeps the principals it had", async () => {
    const client = createClient(InferenceService, createGrpcTransport({ baseUrl: gw.url }));
    await file.write(principals({ "team-b": b }));
    const refused = reloads("config file refused: keeping the configuration in force");
    await file.write("{ not json");
    assert.ok(
      await eventually(() => reloads("config file refused: keeping the configuration in force") > refused, 10_000),
    );
    await file.write({ principals: [{ name: "team-b", keys: [{ sha256: hashApiKey(b) }], methods: ["Everything"] }] });
    assert.ok(
      await eventually(() => reloads("config file refused: keeping the configuration in force") > refused + 1, 10_000),
    );
    const last = gw.logs.find("config file refused: keeping the configuration in force").at(-1)!;
    assert.match(JSON.stringify(last["problems"]), /methods entry \\"Everything\\" is not a method/);
    assert.equal(await outcome(() => drain(client.generate(GENERATE, bearer(b)))), "ok", "the old principals serve");
  });
});

describe("reloading on request (SIGHUP)", () => {
  it("applies a changed file when asked, and only then, with file watching off", async () => {
    const sim = await startSimulator();
    const a = newApiKey();
    const c = newApiKey();
    const file = await tempConfig(principals({ a }));
    const gw = await startTestGateway({
      OLLAMA_URL: sim.url,
      GATEWAY_CONFIG_FILE: file.path,
      CONFIG_WATCH_INTERVAL_MS: "0",
    });
    try {
      const client = createClient(InferenceService, createGrpcTransport({ baseUrl: gw.url }));
      await file.write(principals({ c }));
      assert.equal(await outcome(() => drain(client.generate(GENERATE, bearer(a)))), "ok", "not applied by itself");
      assert.equal(await gw.reload(), true);
      assert.equal(
        await outcome(() => drain(client.generate(GENERATE, bearer(a)))),
        "Unauthenticated INVALID_CREDENTIALS",
      );
      assert.equal(await outcome(() => drain(client.generate(GENERATE, bearer(c)))), "ok");
      await file.write("[]");
      assert.equal(await gw.reload(), false, "an invalid file is refused");
      assert.equal(await outcome(() => drain(client.generate(GENERATE, bearer(c)))), "ok");
    } finally {
      await gw.close();
      await sim.close();
      await file.remove();
    }
  });

  it("reloads a gateway process on SIGHUP", async () => {
    const sim = await startSimulator();
    const a = newApiKey();
    const file = await tempConfig(principals({}));
    const gw = await spawnGateway({
      OLLAMA_URL: sim.url,
      AUTH_MODE: "api-key",
      GATEWAY_CONFIG_FILE: file.path,
      CONFIG_WATCH_INTERVAL_MS: "0",
    });
    try {
      const client = createClient(InferenceService, createGrpcTransport({ baseUrl: gw.url }));
      assert.equal(
        await outcome(() => drain(client.generate(GENERATE, bearer(a)))),
        "Unauthenticated INVALID_CREDENTIALS",
      );
      await file.write(principals({ a }));
      process.kill(gw.pid, "SIGHUP");
      assert.ok(
        await eventually(() => gw.lines().some((l) => l["msg"] === "config file reloaded"), 10_000),
        gw.stderr(),
      );
      assert.equal(await outcome(() => drain(client.generate(GENERATE, bearer(a)))), "ok");
    } finally {
      await gw.stop();
      await sim.close();
      await file.remove();
    }
  });
});

describe("reloading the JWT key file", () => {
  it("verifies tokens of the new key once the file changes, and no longer those of the old one", async () => {
    const sim = await startSimulator();
    const first = generateKeyPairSync("ed25519");
    const second = generateKeyPairSync("ed25519");
    const dir = await tempConfig({});
    const keyFile = join(dir.dir, "issuer.pem");
    await writeFile(keyFile, first.publicKey.export({ type: "spki", format: "pem" }));
    const gw = await startTestGateway({
      OLLAMA_URL: sim.url,
      AUTH_MODE: "jwt",
      JWT_KEY_FILE: keyFile,
      JWT_ISSUER: "issuer",
      JWT_AUDIENCE: "gateway",
      CONFIG_WATCH_INTERVAL_MS: "50",
    });
    const sign = (key: typeof first.privateKey) =>
      new SignJWT({ sub: "svc" })
        .setProtectedHeader({ alg: "EdDSA" })
        .setIssuer("issuer")
        .setAudience("gateway")
        .setExpirationTime("5m")
        .sign(key);
    try {
      const client = createClient(InferenceService, createGrpcTransport({ baseUrl: gw.url }));
      const oldToken = await sign(first.privateKey);
      assert.equal(await outcome(() => drain(client.generate(GENERATE, bearer(oldToken)))), "ok");
      await writeFile(`${keyFile}.new`, second.publicKey.export({ type: "spki", format: "pem" }));
      await rename(`${keyFile}.new`, keyFile);
      assert.ok(await eventually(() => gw.logs.find("JWT keys reloaded").length > 0, 10_000));
      const newToken = await sign(second.privateKey);
      assert.equal(await outcome(() => drain(client.generate(GENERATE, bearer(newToken)))), "ok");
      assert.equal(
        await outcome(() => drain(client.generate(GENERATE, bearer(oldToken)))),
        "Unauthenticated INVALID_CREDENTIALS",
        "a cached verification of the old key is dropped with the reload",
      );
    } finally {
      await gw.close();
      await sim.close();
      await dir.remove();
    }
  });
});
