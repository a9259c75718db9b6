import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { hashApiKey, newApiKey } from "../src/auth/api-keys.js";
import { startSimulator } from "../src/simulator/simulator.js";
import type { Simulator } from "../src/simulator/simulator.js";
import { NO_PYTHON_MESSAGE, REPO_ROOT, findGrpcPython, generatePythonStubs } from "./helpers/python.js";
import { startTestGateway } from "./helpers/test-gateway.js";
import type { TestGateway } from "./helpers/test-gateway.js";

const run = promisify(execFile);
const CLIENT = join(REPO_ROOT, "test", "python", "client.py");

/** One JSON line printed by test/python/client.py. */
type Line = Record<string, unknown>;

describe("a Python grpcio client built from our proto", () => {
  let sim: Simulator;
  let gw: TestGateway;
  let stubs: string;
  let python: string | undefined;
  let stubsReady: Promise<void> | undefined;
  let output: Promise<Line[]> | undefined;

  before(async () => {
    sim = await startSimulator();
    gw = await startTestGateway({ OLLAMA_URL: sim.url });
    stubs = await mkdtemp(join(tmpdir(), "gateway-python-"));
    python = await findGrpcPython();
  });
  after(async () => {
    await gw.close();
    await sim.close();
    await rm(stubs, { recursive: true, force: true });
  });

  /** The Python interpreter, or a failure that says how to install one. */
  function requirePython(): string {
    assert.ok(python !== undefined, NO_PYTHON_MESSAGE);
    return python;
  }

  /** Generates the stubs once for all tests. */
  function generated(): Promise<void> {
    const py = requirePython();
    stubsReady ??= generatePythonStubs(py, stubs);
    return stubsReady;
  }

  /** Runs the Python client once against the gateway and parses its JSON lines. */
  function clientOutput(): Promise<Line[]> {
    output ??= (async () => {
      await generated();
      const { stdout } = await run(requirePython(), [CLIENT, `127.0.0.1:${gw.port}`, stubs], { timeout: 30_000 });
      return stdout
        .split("\n")
        .filter((l) => l.trim() !== "")
        .map((l) => JSON.parse(l) as Line);
    })();
    return output;
  }

  /** The line the client printed for one call. */
  async function lineFor(call: string): Promise<Line> {
    const lines = await clientOutput();
    const line = lines.find((l) => l["call"] === call);
    assert.ok(line, `the client printed no "${call}" line; it printed ${JSON.stringify(lines)}`);
    return line;
  }

  it("finds a Python that has grpcio and grpc_tools", () => {
    requirePython();
  });

  it("generates message and service stubs from proto/", async () => {
    await generated();
    for (const file of [
      "ollama/gateway/v1/inference_pb2.py",
      "ollama/gateway/v1/inference_pb2_grpc.py",
      "ollama/gateway/v1/types_pb2.py",
      "google/rpc/error_details_pb2.py",
      "google/rpc/status_pb2.py",
    ]) {
      assert.ok(existsSync(join(stubs, file)), `${file} was not generated`);
    }
  });

  it("streams Generate to one done message with reason, usage and the serving node", async () => {
    const line = await lineFor("generate");
    assert.deepEqual(line, {
      call: "generate",
      texts: 8,
      done: true,
      done_reason: "DONE_REASON_LENGTH",
      completion_tokens: 8,
      node: `127.0.0.1:${sim.port}`,
    });
  });

  it("embeds two texts as two 384-dimension vectors", async () => {
    const line = await lineFor("embed");
    assert.deepEqual(line["dims"], [384, 384]);
    assert.equal(line["count"], 2);
    assert.ok(typeof line["prompt_tokens"] === "number" && line["prompt_tokens"] > 0, JSON.stringify(line));
  });

  it("gets NOT_FOUND for an unknown model and unpacks ErrorInfo MODEL_NOT_FOUND from the trailers", async () => {
    const line = await lineFor("error");
    assert.equal(line["code"], "NOT_FOUND");
    assert.equal(line["status_code"], 5, "google.rpc.Status.code in grpc-status-details-bin");
    assert.equal(line["error_infos"], 1);
    assert.equal(line["reason"], "MODEL_NOT_FOUND");
    assert.equal(line["domain"], "ollama.gateway.v1");
    const metadata = line["metadata"] as Record<string, unknown>;
    assert.equal(metadata["model"], "no-such-model");
    assert.match(String(line["message"]), /no-such-model/);
    assert.doesNotMatch(String(line["message"]), /%[0-9A-F]{2}/i);
  });
});

describe("a Python grpcio client with an API key", () => {
  it("passes its key as metadata and reads MISSING_CREDENTIALS from the trailers without it", async () => {
    const python = await findGrpcPython();
    assert.ok(python !== undefined, NO_PYTHON_MESSAGE);
    const key = newApiKey();
    const sim = await startSimulator();
    const gw = await startTestGateway({ OLLAMA_URL: sim.url, API_KEYS: `python-svc:${hashApiKey(key)}` });
    const stubs = await mkdtemp(join(tmpdir(), "gateway-python-"));
    try {
      await generatePythonStubs(python, stubs);
      const { stdout } = await run(python, [CLIENT, `127.0.0.1:${gw.port}`, stubs, key], { timeout: 30_000 });
      const lines = stdout
        .split("\n")
        .filter((l) => l.trim() !== "")
        .map((l) => JSON.parse(l) as Line);
      const line = (call: string): Line | undefined => lines.find((l) => l["call"] === call);
      assert.equal(line("generate")?.["done"], true, stdout);
      assert.deepEqual(line("embed")?.["dims"], [384, 384]);
      assert.equal(line("error")?.["reason"], "MODEL_NOT_FOUND", "authenticated, then refused for the model");
      const refused = line("unauthenticated");
      assert.equal(refused?.["code"], "UNAUTHENTICATED", stdout);
      assert.equal(refused?.["reason"], "MISSING_CREDENTIALS");
      assert.equal(
        gw.logs.find("rpc").find((l) => l["method"] === "ollama.gateway.v1.InferenceService/Embed")?.["principal"],
        "python-svc",
      );
    } finally {
      await gw.close();
      await sim.close();
      await rm(stubs, { recursive: true, force: true });
    }
  });
});
