import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { copyFile, readFile, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import * as tls from "node:tls";
import { promisify } from "node:util";
import * as grpc from "@grpc/grpc-js";
import { createClient } from "@connectrpc/connect";
import type { Transport } from "@connectrpc/connect";
import {
  compressionGzip,
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../src/gen/grpc/health/v1/health_pb.js";
import {
  GenerateRequestSchema,
  GenerateResponseSchema,
  InferenceService,
} from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { startSimulator } from "../src/simulator/simulator.js";
import type { Simulator } from "../src/simulator/simulator.js";
import { drain, outcome, tempConfig } from "./helpers/auth.js";
import type { TempConfig } from "./helpers/auth.js";
import { grpcJsServerStream, readAll, statusDetails } from "./helpers/grpc-js-client.js";
import { REPO_ROOT } from "./helpers/python.js";
import { eventually } from "./helpers/sim-http.js";
import { startTestGateway } from "./helpers/test-gateway.js";
import type { TestGateway } from "./helpers/test-gateway.js";

const FIXTURES = join(REPO_ROOT, "test", "fixtures", "tls");
const fixture = (name: string): string => join(FIXTURES, name);
const run = promisify(execFile);
const BUF = join(REPO_ROOT, "node_modules", ".bin", "buf");
const GENERATE = { model: "llama3.2", prompt: "Tell me about llamas", options: { numPredict: 2 } };

/** What a client presents and trusts. */
interface ClientTls {
  ca: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

/** Every protocol, over TLS: gRPC on the fast path and through connect-node (gzip), gRPC-Web and Connect. */
function tlsTransports(baseUrl: string, t: ClientTls): { name: string; transport: Transport }[] {
  const nodeOptions = { ca: t.ca, cert: t.cert, key: t.key };
  return [
    { name: "gRPC (fast path)", transport: createGrpcTransport({ baseUrl, nodeOptions }) },
    {
      name: "gRPC with gzip (connect-node)",
      transport: createGrpcTransport({ baseUrl, nodeOptions, sendCompression: compressionGzip, compressMinBytes: 0 }),
    },
    { name: "gRPC-Web over HTTP/1.1", transport: createGrpcWebTransport({ baseUrl, httpVersion: "1.1", nodeOptions }) },
    { name: "Connect over HTTP/1.1", transport: createConnectTransport({ baseUrl, httpVersion: "1.1", nodeOptions }) },
    { name: "Connect over HTTP/2", transport: createConnectTransport({ baseUrl, httpVersion: "2", nodeOptions }) },
  ];
}

/** The subject CN of the certificate a new TLS connection to `port` is served (no ALPN: the sniffed path). */
function servedCertificate(port: number, ca: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: "127.0.0.1", port, ca, servername: "localhost" }, () => {
      const cn = socket.getPeerCertificate().subject?.CN;
      socket.end();
      resolve(String(cn));
    });
    socket.once("error", reject);
  });
}

describe("TLS on the gateway's port", () => {
  let sim: Simulator;
  let gw: TestGateway;
  let ca: Buffer;
  let dir: TempConfig;

  before(async () => {
    sim = await startSimulator({ tokenMs: 20, numParallel: 4 });
    ca = await readFile(fixture("ca.pem"));
    // The certificate in a directory of its own, so the test can replace it.
    dir = await tempConfig({});
    await copyFile(fixture("server.pem"), join(dir.dir, "cert.pem"));
    await copyFile(fixture("server.key"), join(dir.dir, "key.pem"));
    gw = await startTestGateway({
      OLLAMA_URL: sim.url,
      OLLAMA_NUM_PARALLEL: "4",
      TLS_CERT_FILE: join(dir.dir, "cert.pem"),
      TLS_KEY_FILE: join(dir.dir, "key.pem"),
      CONFIG_WATCH_INTERVAL_MS: "50",
    });
  });
  after(async () => {
    await gw.close();
    await sim.close();
    await dir.remove();
  });

  it("listens on https", () => {
    assert.match(gw.url, /^https:\/\/127\.0\.0\.1:\d+$/);
  });

  it("serves Generate, Embed and health over every protocol (ALPN h2 and http/1.1)", async () => {
    for (const { name, transport } of tlsTransports(gw.url, { ca })) {
      const client = createClient(InferenceService, transport);
      const messages = await drain(client.generate(GENERATE));
      assert.equal(messages.at(-1)?.done, true, name);
      const embed = await client.embed({ model: "all-minilm", inputs: ["a", "b"] });
      assert.equal(embed.embeddings.length, 2, name);
      const health = createClient(Health, transport);
      assert.equal((await health.check({})).status, ServingStatus.SERVING, name);
    }
  });

  it("serves a grpc-js client with TLS credentials", async () => {
    const client = new grpc.Client(`127.0.0.1:${gw.port}`, grpc.credentials.createSsl(ca));
    try {
      const messages = await readAll(
        grpcJsServerStream(
          client,
          "/ollama.gateway.v1.InferenceService/Generate",
          GenerateRequestSchema,
          GenerateResponseSchema,
          GENERATE,
        ),
      );
      assert.equal(messages.at(-1)?.done, true);
    } finally {
      client.close();
    }
  });

  it("serves buf curl with --cacert, through reflection", async () => {
    const { stdout } = await run(
      BUF,
      [
        "curl",
        "--cacert",
        fixture("ca.pem"),
        "--protocol",
        "grpc",
        "-d",
        JSON.stringify(GENERATE),
        `${gw.url}/ollama.gateway.v1.InferenceService/Generate`,
      ],
      { timeout: 20_000 },
    );
    assert.match(stdout, /"done": true/);
  });

  it("answers a TLS client that offers no ALPN as in plaintext (HTTP/1.1 told by its first bytes)", async () => {
    const body = await new Promise<string>((resolve, reject) => {
      const socket = tls.connect({ host: "127.0.0.1", port: gw.port, ca, servername: "localhost" }, () => {
        socket.write(
          "POST /grpc.health.v1.Health/Check HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n" +
            "content-length: 2\r\nconnection: close\r\n\r\n{}",
        );
      });
      let text = "";
      socket.on("data", (c: Buffer) => (text += c.toString()));
      socket.once("end", () => resolve(text));
      socket.once("error", reject);
    });
    assert.match(body, /^HTTP\/1\.1 200/);
    assert.match(body, /"status":"SERVING"/);
  });

  it("refuses plaintext clients on a TLS port", async () => {
    const plain = createClient(Health, createGrpcTransport({ baseUrl: gw.url.replace("https", "http") }));
    assert.notEqual(await outcome(() => plain.check({}, { timeoutMs: 5000 })), "ok");
  });

  it("serves a replaced certificate to new connections without dropping open ones, and keeps it when the new files are bad", async () => {
    assert.equal(await servedCertificate(gw.port, ca), "localhost");
    const client = createClient(InferenceService, createGrpcTransport({ baseUrl: gw.url, nodeOptions: { ca } }));
    const cancel = new AbortController();
    const stream = client
      .generate({ ...GENERATE, options: { numPredict: 5000 } }, { signal: cancel.signal })
      [Symbol.asyncIterator]();
    assert.equal((await stream.next()).done, false);

    const reloaded = () => gw.logs.find("TLS certificate reloaded").length;
    const before = reloaded();
    await writeFile(join(dir.dir, "key.pem.new"), await readFile(fixture("server-2.key")));
    await writeFile(join(dir.dir, "cert.pem.new"), await readFile(fixture("server-2.pem")));
    await rename(join(dir.dir, "key.pem.new"), join(dir.dir, "key.pem"));
    await rename(join(dir.dir, "cert.pem.new"), join(dir.dir, "cert.pem"));
    assert.ok(await eventually(() => reloaded() > before, 10_000), "the new certificate was loaded");
    let served = "";
    assert.ok(
      await eventually(() => {
        void servedCertificate(gw.port, ca).then((cn) => (served = cn));
        return served === "localhost (second)";
      }, 10_000),
      `new connections get ${served}`,
    );
    for (let i = 0; i < 5; i++) {
      const m = await stream.next();
      assert.equal(m.done, false, "the open connection's stream goes on");
    }

    const refused = () => gw.logs.find("TLS files refused: keeping the certificate in use").length;
    await writeFile(join(dir.dir, "cert.pem.new"), "not a certificate");
    await rename(join(dir.dir, "cert.pem.new"), join(dir.dir, "cert.pem"));
    assert.ok(await eventually(() => refused() > 0, 10_000));
    assert.equal(await servedCertificate(gw.port, ca), "localhost (second)");
    assert.equal((await stream.next()).done, false);
    cancel.abort();
  });
});

describe("mTLS: the client certificate names the principal", () => {
  let sim: Simulator;
  let gw: TestGateway;
  let file: TempConfig;
  let ca: Buffer;
  const SPIFFE = "spiffe://cluster.local/ns/billing/sa/worker";
  const client = async (name: string): Promise<ClientTls> => ({
    ca,
    cert: await readFile(fixture(`${name}.pem`)),
    key: await readFile(fixture(`${name}.key`)),
  });

  before(async () => {
    sim = await startSimulator();
    ca = await readFile(fixture("ca.pem"));
    file = await tempConfig({ principals: [{ name: SPIFFE, models: ["llama3.2"] }] });
    gw = await startTestGateway({
      OLLAMA_URL: sim.url,
      GATEWAY_CONFIG_FILE: file.path,
      AUTH_MODE: "mtls",
      TLS_CERT_FILE: fixture("server.pem"),
      TLS_KEY_FILE: fixture("server.key"),
      TLS_CLIENT_CA_FILE: fixture("ca.pem"),
    });
  });
  after(async () => {
    await gw.close();
    await sim.close();
    await file.remove();
  });

  it("takes the SPIFFE ID of a trusted certificate, with its principal's permissions, over every protocol", async () => {
    for (const { name, transport } of tlsTransports(gw.url, await client("client-spiffe"))) {
      const inference = createClient(InferenceService, transport);
      const id = `mtls-${name.replace(/[^A-Za-z0-9]+/g, "-")}`;
      assert.equal(
        await outcome(() => drain(inference.generate(GENERATE, { headers: { "x-request-id": id } }))),
        "ok",
        name,
      );
      const line = () => gw.logs.find("rpc").find((l) => l["requestId"] === id);
      assert.ok(await eventually(() => line() !== undefined), `${name}: no rpc line`);
      assert.equal(line()?.["principal"], SPIFFE, name);
      assert.equal(
        await outcome(() => drain(inference.generate({ ...GENERATE, model: "qwen3" }))),
        "PermissionDenied MODEL_NOT_ALLOWED",
        name,
      );
    }
  });

  it("takes the CN of a certificate without a SPIFFE ID", async () => {
    const [{ transport }] = tlsTransports(gw.url, await client("client-cn"));
    const inference = createClient(InferenceService, transport!);
    await drain(inference.generate({ ...GENERATE, model: "qwen3" }, { headers: { "x-request-id": "cn-1" } }));
    const line = () => gw.logs.find("rpc").find((l) => l["requestId"] === "cn-1");
    assert.ok(await eventually(() => line() !== undefined), "no rpc line");
    assert.equal(line()?.["principal"], "reports-job");
  });

  it("refuses calls without a certificate (health still answers) and with an untrusted one", async () => {
    for (const { name, transport } of tlsTransports(gw.url, { ca })) {
      const inference = createClient(InferenceService, transport);
      assert.equal(
        await outcome(() => drain(inference.generate(GENERATE))),
        "Unauthenticated MISSING_CREDENTIALS",
        name,
      );
      assert.equal((await createClient(Health, transport).check({})).status, ServingStatus.SERVING, name);
    }
    for (const { name, transport } of tlsTransports(gw.url, await client("client-untrusted"))) {
      const inference = createClient(InferenceService, transport);
      assert.equal(
        await outcome(() => drain(inference.generate(GENERATE))),
        "Unauthenticated INVALID_CREDENTIALS",
        name,
      );
    }
  });

  it("serves a grpc-js client presenting its certificate", async () => {
    const c = await client("client-spiffe");
    const grpcClient = new grpc.Client(`127.0.0.1:${gw.port}`, grpc.credentials.createSsl(c.ca, c.key!, c.cert!));
    const bare = new grpc.Client(`127.0.0.1:${gw.port}`, grpc.credentials.createSsl(c.ca));
    try {
      const path = "/ollama.gateway.v1.InferenceService/Generate";
      const messages = await readAll(
        grpcJsServerStream(grpcClient, path, GenerateRequestSchema, GenerateResponseSchema, GENERATE),
      );
      assert.equal(messages.at(-1)?.done, true);
      const refused = await readAll(
        grpcJsServerStream(bare, path, GenerateRequestSchema, GenerateResponseSchema, GENERATE),
      ).then(
        () => undefined,
        (e: grpc.ServiceError) => e,
      );
      assert.equal(refused?.code, grpc.status.UNAUTHENTICATED);
      assert.equal(statusDetails(refused!).errorInfo?.reason, "MISSING_CREDENTIALS");
    } finally {
      grpcClient.close();
      bare.close();
    }
  });
});
