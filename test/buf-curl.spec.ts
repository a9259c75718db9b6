import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { fromBinary } from "@bufbuild/protobuf";
import { hashApiKey, newApiKey } from "../src/auth/api-keys.js";
import { ErrorInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { startSimulator } from "../src/simulator/simulator.js";
import type { Simulator } from "../src/simulator/simulator.js";
import { startTestGateway } from "./helpers/test-gateway.js";
import type { TestGateway } from "./helpers/test-gateway.js";

const run = promisify(execFile);
const BUF = join(fileURLToPath(new URL("..", import.meta.url)), "node_modules", ".bin", "buf");

/** A JSON object as buf curl prints it (protojson: camelCase names, enums by name). */
type Json = Record<string, unknown>;

/** What one buf curl run printed and how it ended. */
interface CurlResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Runs `buf curl` (reflection only, never --schema) and returns its output, also when it fails. */
async function bufCurl(...args: string[]): Promise<CurlResult> {
  try {
    const { stdout, stderr } = await run(BUF, ["curl", ...args], { timeout: 20_000 });
    return { exitCode: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code?: unknown; stdout?: unknown; stderr?: unknown; killed?: boolean };
    if (typeof err.code !== "number") throw e; // not started, or killed by the timeout
    return { exitCode: err.code, stdout: String(err.stdout ?? ""), stderr: String(err.stderr ?? "") };
  }
}

/** Runs `buf curl` and fails the test with its stderr unless it exits 0. */
async function bufCurlOk(...args: string[]): Promise<string> {
  const r = await bufCurl(...args);
  assert.equal(r.exitCode, 0, `buf curl ${args.join(" ")} failed:\n${r.stderr}`);
  return r.stdout;
}

/** Splits buf curl's output (pretty-printed JSON objects one after another) into the objects. */
function jsonObjects(text: string): Json[] {
  const out: Json[] = [];
  let depth = 0;
  let start = -1;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === "\\") i++;
      else if (c === '"') inString = false;
    } else if (c === '"') {
      inString = true;
    } else if (c === "{") {
      if (depth++ === 0) start = i;
    } else if (c === "}") {
      if (--depth === 0) out.push(JSON.parse(text.slice(start, i + 1)) as Json);
    }
  }
  assert.equal(depth, 0, `unbalanced JSON in buf curl output:\n${text}`);
  return out;
}

/** Lines of a --list-* answer. */
function lines(text: string): string[] {
  return text
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "");
}

const GENERATE = "ollama.gateway.v1.InferenceService/Generate";
const PROTOCOLS: { name: string; flags: string[] }[] = [
  { name: "gRPC (h2c prior knowledge)", flags: ["--protocol", "grpc", "--http2-prior-knowledge"] },
  { name: "Connect", flags: ["--protocol", "connect"] },
  { name: "gRPC-Web", flags: ["--protocol", "grpcweb"] },
];

describe("buf curl against the gateway, through server reflection", () => {
  let sim: Simulator;
  let gw: TestGateway;

  before(async () => {
    sim = await startSimulator();
    gw = await startTestGateway({ OLLAMA_URL: sim.url });
  });
  after(async () => {
    await gw.close();
    await sim.close();
  });

  it("lists the inference, health and reflection services", async () => {
    const services = lines(await bufCurlOk("--list-services", gw.url));
    for (const s of [
      "ollama.gateway.v1.InferenceService",
      "grpc.health.v1.Health",
      "grpc.reflection.v1.ServerReflection",
    ]) {
      assert.ok(services.includes(s), `${s} missing from ${JSON.stringify(services)}`);
    }
  });

  it("lists Generate, Chat and Embed among the methods", async () => {
    const methods = lines(await bufCurlOk("--list-methods", gw.url));
    for (const m of ["Generate", "Chat", "Embed"]) {
      const full = `ollama.gateway.v1.InferenceService/${m}`;
      assert.ok(methods.includes(full), `${full} missing from ${JSON.stringify(methods)}`);
    }
  });

  for (const p of PROTOCOLS) {
    it(`streams Generate over ${p.name} to a last message that is done`, async () => {
      const out = await bufCurlOk(
        ...p.flags,
        "-d",
        JSON.stringify({ model: "llama3.2", prompt: "Tell me about llamas", options: { numPredict: 5 } }),
        `${gw.url}/${GENERATE}`,
      );
      const messages = jsonObjects(out);
      assert.equal(messages.length, 6, `5 tokens and one final message, got:\n${out}`);
      assert.ok(
        messages.slice(0, -1).every((m) => typeof m["text"] === "string" && m["done"] === undefined),
        out,
      );
      const last = messages.at(-1)!;
      assert.equal(last["done"], true);
      assert.equal(last["doneReason"], "DONE_REASON_LENGTH");
      const usage = last["usage"] as Json;
      assert.equal(usage["completionTokens"], 5);
      assert.equal(usage["node"], `127.0.0.1:${sim.port}`);
    });
  }

  it("streams a Chat reply from the assistant", async () => {
    const out = await bufCurlOk(
      "--protocol",
      "grpc",
      "--http2-prior-knowledge",
      "-d",
      JSON.stringify({
        model: "llama3.2",
        messages: [{ role: "ROLE_USER", content: "Hello there" }],
        options: { numPredict: 4 },
      }),
      `${gw.url}/ollama.gateway.v1.InferenceService/Chat`,
    );
    const messages = jsonObjects(out);
    assert.ok(messages.length >= 2, out);
    const content = messages.map((m) => String((m["message"] as Json | undefined)?.["content"] ?? "")).join("");
    assert.ok(content.length > 0, out);
    assert.ok(
      messages.every((m) => (m["message"] as Json | undefined)?.["role"] === "ROLE_ASSISTANT"),
      out,
    );
    assert.equal(messages.at(-1)!["done"], true);
  });

  it("embeds texts with a unary call", async () => {
    const out = await bufCurlOk(
      "--protocol",
      "grpc",
      "--http2-prior-knowledge",
      "-d",
      JSON.stringify({ model: "all-minilm", inputs: ["alpha", "beta"] }),
      `${gw.url}/ollama.gateway.v1.InferenceService/Embed`,
    );
    const [res, ...rest] = jsonObjects(out);
    assert.equal(rest.length, 0);
    const embeddings = res!["embeddings"] as Json[];
    assert.equal(embeddings.length, 2);
    for (const e of embeddings) assert.equal((e["values"] as number[]).length, 384);
  });

  it("reports the server as SERVING on grpc.health.v1.Health/Check", async () => {
    const out = await bufCurlOk(
      "--protocol",
      "grpc",
      "--http2-prior-knowledge",
      "-d",
      "{}",
      `${gw.url}/grpc.health.v1.Health/Check`,
    );
    assert.deepEqual(jsonObjects(out), [{ status: "SERVING" }]);
  });

  it("exits non-zero and prints not_found with MODEL_NOT_FOUND for an unknown model", async () => {
    const r = await bufCurl(
      "--protocol",
      "grpc",
      "--http2-prior-knowledge",
      "-d",
      JSON.stringify({ model: "no-such-model", prompt: "hi" }),
      `${gw.url}/${GENERATE}`,
    );
    assert.notEqual(r.exitCode, 0, `buf curl succeeded:\n${r.stdout}`);
    assert.equal(r.stdout.trim(), "", "no message before the error");
    const [error] = jsonObjects(r.stderr);
    assert.equal(error?.["code"], "not_found", r.stderr);
    assert.match(String(error?.["message"]), /no-such-model/);
    const details = error?.["details"] as Json[] | undefined;
    assert.equal(details?.[0]?.["type"], "google.rpc.ErrorInfo", r.stderr);
  });
});

describe("buf curl against a gateway that asks for API keys", () => {
  let sim: Simulator;
  let gw: TestGateway;
  const key = newApiKey();

  before(async () => {
    sim = await startSimulator();
    gw = await startTestGateway({ OLLAMA_URL: sim.url, API_KEYS: `cli-user:${hashApiKey(key)}` });
  });
  after(async () => {
    await gw.close();
    await sim.close();
  });

  it("still lists the services through reflection without a key", async () => {
    const services = lines(await bufCurlOk("--list-services", gw.url));
    assert.ok(services.includes("ollama.gateway.v1.InferenceService"), JSON.stringify(services));
  });

  it("asks for a key for reflection too when AUTH_REFLECTION=authenticated", async () => {
    const closed = await startTestGateway({
      OLLAMA_URL: sim.url,
      API_KEYS: `cli-user:${hashApiKey(key)}`,
      AUTH_REFLECTION: "authenticated",
    });
    try {
      const refused = await bufCurl("--list-services", closed.url);
      assert.notEqual(refused.exitCode, 0, refused.stdout);
      // buf words an UNAUTHENTICATED reflection answer as a registry login hint.
      assert.match(refused.stderr, /not authenticated|unauthenticated/i);
      // buf curl sends -H with the call only; reflection requests carry --reflect-header.
      const services = lines(
        await bufCurlOk("--reflect-header", `authorization: Bearer ${key}`, "--list-services", closed.url),
      );
      assert.ok(services.includes("ollama.gateway.v1.InferenceService"), JSON.stringify(services));
    } finally {
      await closed.close();
    }
  });

  for (const p of PROTOCOLS) {
    it(`streams Generate over ${p.name} with the key in -H authorization`, async () => {
      const out = await bufCurlOk(
        ...p.flags,
        "-H",
        `authorization: Bearer ${key}`,
        "-d",
        JSON.stringify({ model: "llama3.2", prompt: "hi", options: { numPredict: 2 } }),
        `${gw.url}/${GENERATE}`,
      );
      assert.equal(jsonObjects(out).at(-1)?.["done"], true, out);
    });

    it(`prints unauthenticated with MISSING_CREDENTIALS over ${p.name} without a key`, async () => {
      const r = await bufCurl(
        ...p.flags,
        "-d",
        JSON.stringify({ model: "llama3.2", prompt: "hi" }),
        `${gw.url}/${GENERATE}`,
      );
      assert.notEqual(r.exitCode, 0, r.stdout);
      const [error] = jsonObjects(r.stderr);
      assert.equal(error?.["code"], "unauthenticated", r.stderr);
      const detail = (error?.["details"] as Json[] | undefined)?.[0];
      assert.equal(detail?.["type"], "google.rpc.ErrorInfo", r.stderr);
      const info = fromBinary(ErrorInfoSchema, Buffer.from(String(detail?.["value"]), "base64url"));
      assert.equal(info.reason, "MISSING_CREDENTIALS", r.stderr);
    });
  }
});
