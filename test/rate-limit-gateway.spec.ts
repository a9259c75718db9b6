import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import type { ClientSessionOptions } from "node:http2";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import type { Client, Transport } from "@connectrpc/connect";
import {
  compressionGzip,
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import { ErrorInfoSchema, RetryInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { Health } from "../src/gen/grpc/health/v1/health_pb.js";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import type { GenerateResponse } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { ModelService } from "../src/gen/ollama/gateway/v1/model_pb.js";
import { REMAINING_REQUESTS_HEADER, REMAINING_TOKENS_HEADER } from "../src/pipeline/rate-limit-hook.js";
import { startSimulator } from "../src/simulator/simulator.js";
import type { Simulator } from "../src/simulator/simulator.js";
import { startTestGateway } from "./helpers/test-gateway.js";
import type { TestGateway } from "./helpers/test-gateway.js";

/**
 * Every protocol and both gRPC servers, from a chosen client address: the gateway keys limits by
 * the client address while authentication is off, and the whole of 127.0.0.0/8 is loopback, so
 * each test (and each protocol) is its own principal.
 */
const PROTOCOLS: { name: string; make(baseUrl: string, localAddress: string): Transport }[] = [
  {
    name: "gRPC (fast path)",
    make: (baseUrl, localAddress) => createGrpcTransport({ baseUrl, nodeOptions: from(localAddress) }),
  },
  {
    name: "gRPC, gzip requests (connect-node)",
    make: (baseUrl, localAddress) =>
      createGrpcTransport({
        baseUrl,
        nodeOptions: from(localAddress),
        sendCompression: compressionGzip,
        compressMinBytes: 0,
      }),
  },
  {
    name: "gRPC-Web over HTTP/1.1",
    make: (baseUrl, localAddress) =>
      createGrpcWebTransport({ baseUrl, httpVersion: "1.1", nodeOptions: { localAddress } }),
  },
  {
    name: "Connect over HTTP/1.1",
    make: (baseUrl, localAddress) =>
      createConnectTransport({ baseUrl, httpVersion: "1.1", nodeOptions: { localAddress } }),
  },
  {
    name: "Connect over HTTP/2",
    make: (baseUrl, localAddress) =>
      createConnectTransport({ baseUrl, httpVersion: "2", nodeOptions: from(localAddress) }),
  },
];

/** HTTP/2 session options that connect from `localAddress`. */
function from(localAddress: string): ClientSessionOptions {
  return {
    createConnection: (authority: URL) =>
      connect({ host: authority.hostname, port: Number(authority.port), localAddress }),
  };
}

interface Seen {
  header?: Headers;
  trailer?: Headers;
}

/** Runs a Generate to its end, with the response headers; returns its messages. */
async function generate(
  client: Client<typeof InferenceService>,
  numPredict: number,
  seen: Seen = {},
): Promise<GenerateResponse[]> {
  const out: GenerateResponse[] = [];
  for await (const m of client.generate(
    { model: "llama3.2", prompt: "Tell me about llamas", options: { numPredict } },
    { timeoutMs: 20_000, onHeader: (h) => (seen.header = h), onTrailer: (t) => (seen.trailer = t) },
  ))
    out.push(m);
  return out;
}

/** The error a call failed with (the test fails when it did not). */
async function refusal(call: () => Promise<unknown>): Promise<ConnectError> {
  try {
    await call();
  } catch (e) {
    return ConnectError.from(e);
  }
  assert.fail("the call was admitted");
}

const reasonOf = (e: ConnectError): string | undefined => e.findDetails(ErrorInfoSchema)[0]?.reason;
const retryMsOf = (e: ConnectError): number => {
  const d = e.findDetails(RetryInfoSchema)[0]?.retryDelay;
  return d === undefined ? Number.NaN : Number(d.seconds) * 1000 + d.nanos / 1e6;
};
const usageOf = (messages: GenerateResponse[]): number => {
  const u = messages.at(-1)?.usage;
  return (u?.promptTokens ?? 0) + (u?.completionTokens ?? 0);
};

describe("rate limits and quotas through the gateway", { timeout: 90_000 }, () => {
  let sim: Simulator;
  let slow: Simulator;
  let dir: string;
  const gateways: TestGateway[] = [];

  const start = async (limits: unknown, ollama: Simulator = sim): Promise<TestGateway> => {
    const file = join(dir, `limits-${gateways.length}.json`);
    writeFileSync(file, JSON.stringify({ limits }));
    const gw = await startTestGateway({ OLLAMA_URL: ollama.url, OLLAMA_NUM_PARALLEL: "4", GATEWAY_CONFIG_FILE: file });
    gateways.push(gw);
    return gw;
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "ogw-limits-"));
    sim = await startSimulator({ numParallel: 4 });
    // Streams that last long enough to be held open: 20 ms per token.
    slow = await startSimulator({ numParallel: 4, tokenMs: 20 });
  });

  after(async () => {
    await Promise.all(gateways.map((g) => g.close()));
    await Promise.all([sim.close(), slow.close()]);
    rmSync(dir, { recursive: true, force: true });
  });

  it("tells the remaining requests and tokens in the headers on every protocol, and charges each stream's usage", async () => {
    const gw = await start({ default: { requestsPerSecond: 1000, burst: 1000, tokensPerDay: 1_000_000 } });
    for (const [i, p] of PROTOCOLS.entries()) {
      const address = `127.0.1.${i + 1}`;
      const inference = createClient(InferenceService, p.make(gw.url, address));
      const models = createClient(ModelService, p.make(gw.url, address));

      const first: Seen = {};
      const used = usageOf(await generate(inference, 5, first));
      assert.ok(used > 5, `${p.name}: the stream reported its usage (${used})`);
      const requests = Number(first.header?.get(REMAINING_REQUESTS_HEADER));
      assert.ok(requests >= 990 && requests < 1000, `${p.name}: remaining requests ${requests}`);
      assert.equal(first.header?.get(REMAINING_TOKENS_HEADER), "1000000", `${p.name}: nothing charged yet`);

      const second: Seen = {};
      await generate(inference, 5, second);
      assert.equal(
        second.header?.get(REMAINING_TOKENS_HEADER),
        String(1_000_000 - used),
        `${p.name}: the first stream's prompt and completion tokens were charged`,
      );

      let embedHeader: Headers | undefined;
      await inference.embed(
        { model: "all-minilm", inputs: [`rate limits ${i}`] },
        { onHeader: (h) => (embedHeader = h) },
      );
      assert.ok(Number(embedHeader?.get(REMAINING_REQUESTS_HEADER)) <= 1000, `${p.name}: a unary call is limited too`);
      assert.ok(embedHeader?.has(REMAINING_TOKENS_HEADER), `${p.name}: Embed is an inference call`);

      let listHeader: Headers | undefined;
      await models.listModels({}, { onHeader: (h) => (listHeader = h) });
      assert.ok(listHeader?.has(REMAINING_REQUESTS_HEADER), `${p.name}: ListModels is rate limited`);
      assert.ok(!listHeader?.has(REMAINING_TOKENS_HEADER), `${p.name}: but spends no tokens`);
    }
  });

  it("refuses past the burst with RATE_LIMITED and a RetryInfo on every protocol, per client address", async () => {
    const gw = await start({
      default: { requestsPerSecond: 0.1, burst: 2 },
      principals: { "127.0.2.99": { requestsPerSecond: null } },
    });
    for (const [i, p] of PROTOCOLS.entries()) {
      const address = `127.0.2.${i + 1}`;
      const models = createClient(ModelService, p.make(gw.url, address));
      await models.listModels({});
      await models.listModels({});
      const e = await refusal(() => models.listModels({}));
      assert.equal(e.code, Code.ResourceExhausted, p.name);
      assert.equal(reasonOf(e), "RATE_LIMITED", p.name);
      assert.equal(e.findDetails(ErrorInfoSchema)[0]?.metadata["principal"], address, `${p.name}: keyed by address`);
      const ms = retryMsOf(e);
      assert.ok(ms > 5_000 && ms <= 10_000, `${p.name}: retry when a token comes (one per 10 s): ${ms} ms`);
      assert.equal(e.metadata.get(REMAINING_REQUESTS_HEADER), "0", `${p.name}: remaining with the refusal`);
    }
    // Another address has its own bucket; an override by address lifts the limit.
    const other = createClient(ModelService, PROTOCOLS[0]!.make(gw.url, "127.0.2.98"));
    await other.listModels({});
    const free = createClient(ModelService, PROTOCOLS[0]!.make(gw.url, "127.0.2.99"));
    for (let i = 0; i < 5; i++) {
      let header: Headers | undefined;
      await free.listModels({}, { onHeader: (h) => (header = h) });
      assert.ok(!header?.has(REMAINING_REQUESTS_HEADER), "no request limit, no header");
    }
    // Health stays open for a client over its limit.
    const health = createClient(Health, PROTOCOLS[0]!.make(gw.url, "127.0.2.1"));
    for (let i = 0; i < 3; i++) await health.check({});
  });

  it("refuses a stream past the principal's concurrent streams with TOO_MANY_STREAMS, not its unary calls, and admits again when one ends", async () => {
    const gw = await start({ default: { concurrentStreams: 2 } }, slow);
    const address = "127.0.3.1";
    const fast = createClient(InferenceService, PROTOCOLS[0]!.make(gw.url, address));
    const viaConnect = createClient(InferenceService, PROTOCOLS[3]!.make(gw.url, address));
    const held: { abort: AbortController; first: Promise<unknown>; done: Promise<unknown> }[] = [];
    for (let k = 0; k < 2; k++) {
      const abort = new AbortController();
      const it = fast
        .generate({ model: "llama3.2", prompt: `hold ${k}`, options: { numPredict: 500 } }, { signal: abort.signal })
        [Symbol.asyncIterator]();
      const first = it.next();
      const done = first.then(async () => {
        for (;;) if ((await it.next()).done) return;
      });
      done.catch(() => undefined); // cancelled below
      held.push({ abort, first, done });
    }
    await Promise.all(held.map((h) => h.first));

    for (const client of [viaConnect, fast]) {
      const e = await refusal(() => generate(client, 3));
      assert.equal(reasonOf(e), "TOO_MANY_STREAMS");
      assert.ok(retryMsOf(e) > 0, "with a RetryInfo");
    }
    await viaConnect.embed({ model: "all-minilm", inputs: ["not a stream"] });

    held[0]!.abort.abort();
    // The slot comes back when the gateway has seen the cancel (refusals cost nothing meanwhile).
    let messages: GenerateResponse[] = [];
    const until = Date.now() + 5000;
    for (;;) {
      try {
        messages = await generate(viaConnect, 3);
        break;
      } catch (e) {
        if (reasonOf(ConnectError.from(e)) !== "TOO_MANY_STREAMS" || Date.now() > until) throw e;
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    assert.equal(messages.at(-1)?.done, true, "a slot was free again");
    held[1]!.abort.abort();
  });

  it("admits while tokens are left, lets a stream run past the quota to its end, then refuses until the day ends", async () => {
    const gw = await start({ default: { tokensPerDay: 60 } });
    const address = "127.0.4.1";
    const fast = createClient(InferenceService, PROTOCOLS[0]!.make(gw.url, address));
    const viaConnect = createClient(InferenceService, PROTOCOLS[3]!.make(gw.url, address));
    const models = createClient(ModelService, PROTOCOLS[0]!.make(gw.url, address));

    const small = usageOf(await generate(fast, 10));
    const seen: Seen = {};
    const long = await generate(viaConnect, 100, seen);
    assert.equal(seen.header?.get(REMAINING_TOKENS_HEADER), String(60 - small), "the first call was charged");
    assert.equal(long.at(-1)?.done, true, "the stream that overran the quota ran to its end");
    assert.equal(long.at(-1)?.usage?.completionTokens, 100);

    for (const client of [fast, viaConnect]) {
      const e = await refusal(() => generate(client, 3));
      assert.equal(reasonOf(e), "TOKEN_QUOTA_EXCEEDED");
      const ms = retryMsOf(e);
      assert.ok(ms > 0 && ms <= 86_400_000, `retry when the UTC day ends: ${ms} ms`);
      assert.equal(e.metadata.get(REMAINING_TOKENS_HEADER), "0");
    }
    const e = await refusal(() => fast.embed({ model: "all-minilm", inputs: ["quota"] }));
    assert.equal(reasonOf(e), "TOKEN_QUOTA_EXCEEDED", "Embed spends tokens too");
    await models.listModels({}); // not an inference call: not judged by the token quota
  });
});
