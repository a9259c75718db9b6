import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import * as http2 from "node:http2";
import { fromBinary } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { ErrorInfoSchema, RetryInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../src/gen/google/rpc/status_pb.js";
import { GatewayService } from "../src/gen/ollama/gateway/v1/gateway_pb.js";
import {
  EmbedRequestSchema,
  EmbedResponseSchema,
  GenerateRequestSchema,
  GenerateResponseSchema,
} from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { startSimulator } from "../src/simulator/simulator.js";
import type { Simulator } from "../src/simulator/simulator.js";
import { encode, frame, rawGrpc } from "./helpers/raw-grpc.js";
import type { RawGrpcCall, RawGrpcReply } from "./helpers/raw-grpc.js";
import { eventually } from "./helpers/sim-http.js";
import { startTestGateway } from "./helpers/test-gateway.js";
import type { TestGateway } from "./helpers/test-gateway.js";

const GENERATE = "/ollama.gateway.v1.InferenceService/Generate";
const EMBED = "/ollama.gateway.v1.InferenceService/Embed";
const MAX_MESSAGE_BYTES = 64 * 1024;

const generateFrame = (prompt: string, numPredict = 3): Buffer =>
  frame(encode(GenerateRequestSchema, { model: "llama3.2", prompt, options: { numPredict } }));

/** The ErrorInfo reason and RetryInfo delay of a reply (trailers, or headers when trailers-only). */
function statusDetails(r: RawGrpcReply): { reason?: string; retryMs?: number } {
  const bin = (r.trailers["grpc-status-details-bin"] ?? r.headers["grpc-status-details-bin"]) as string | undefined;
  const status = fromBinary(StatusSchema, Buffer.from(bin ?? "", "base64"));
  const out: { reason?: string; retryMs?: number } = {};
  for (const any of status.details) {
    out.reason ??= anyUnpack(any, ErrorInfoSchema)?.reason;
    const delay = anyUnpack(any, RetryInfoSchema)?.retryDelay;
    if (delay) out.retryMs = Number(delay.seconds) * 1000 + delay.nanos / 1e6;
  }
  return out;
}

/** The rpc log lines of one request id. */
function rpcLines(gw: TestGateway, requestId: string): Record<string, unknown>[] {
  return gw.logs.find("rpc").filter((l) => l["requestId"] === requestId);
}

describe("the gRPC fast path (Generate, Chat and Embed on raw HTTP/2 streams)", () => {
  let sim: Simulator;
  let fast: TestGateway;
  let connect: TestGateway;

  before(async () => {
    sim = await startSimulator();
    const env = { OLLAMA_URL: sim.url, MAX_MESSAGE_BYTES: String(MAX_MESSAGE_BYTES) };
    fast = await startTestGateway(env);
    connect = await startTestGateway({ ...env, GRPC_FAST_PATH: "off" });
  });
  after(async () => {
    await fast.close();
    await connect.close();
    await sim.close();
  });

  it("streams the same messages as connect-node's gRPC handler, with the request id echoed", async () => {
    const call: RawGrpcCall = { body: [generateFrame("same prompt", 5)], headers: { "x-request-id": "fast-1" } };
    const a = await rawGrpc(fast.url, GENERATE, call);
    const b = await rawGrpc(connect.url, GENERATE, { ...call, headers: { "x-request-id": "connect-1" } });
    for (const r of [a, b]) {
      assert.equal(r.status, 0);
      assert.equal(r.headers["content-type"], "application/grpc+proto");
      assert.equal(r.messages.length, 6, "5 tokens and the final message");
    }
    assert.equal(a.headers["x-request-id"], "fast-1");
    assert.equal(a.trailers["x-request-id"], "fast-1", "and in the trailers, as connect-node does");
    assert.equal(b.headers["x-request-id"], "connect-1");
    assert.equal(b.trailers["x-request-id"], "connect-1");
    const text = (r: RawGrpcReply): string =>
      r.messages.map((m) => fromBinary(GenerateResponseSchema, m).text).join("");
    assert.equal(text(a), text(b));
    const last = fromBinary(GenerateResponseSchema, a.messages.at(-1)!);
    assert.equal(last.done, true);
    assert.equal(last.usage?.completionTokens, 5);
  });

  it("logs exactly one line for the call, with its model, node and message count", async () => {
    await rawGrpc(fast.url, GENERATE, { body: [generateFrame("log me", 4)], headers: { "x-request-id": "fast-log" } });
    assert.ok(await eventually(() => rpcLines(fast, "fast-log").length > 0));
    const lines = rpcLines(fast, "fast-log");
    assert.equal(lines.length, 1);
    assert.equal(lines[0]!["code"], "ok");
    assert.equal(lines[0]!["method"], "ollama.gateway.v1.InferenceService/Generate");
    assert.equal(lines[0]!["model"], "llama3.2");
    assert.equal(lines[0]!["messages"], 5);
    assert.ok(typeof lines[0]!["node"] === "string" && lines[0]!["node"] !== "");
  });

  it("answers Embed with the same vectors as connect-node", async () => {
    const body = [frame(encode(EmbedRequestSchema, { model: "all-minilm", inputs: ["alpha", "beta"] }))];
    const [a, b] = await Promise.all([rawGrpc(fast.url, EMBED, { body }), rawGrpc(connect.url, EMBED, { body })]);
    assert.equal(a.status, 0);
    assert.equal(a.messages.length, 1);
    const va = fromBinary(EmbedResponseSchema, a.messages[0]!).embeddings.map((e) => e.values);
    const vb = fromBinary(EmbedResponseSchema, b.messages[0]!).embeddings.map((e) => e.values);
    assert.equal(va.length, 2);
    assert.deepEqual(va, vb);
  });

  it("answers an error before any message trailers-only, with the same status, details and request id", async () => {
    const body = [frame(encode(GenerateRequestSchema, { model: "", prompt: "x" }))];
    const a = await rawGrpc(fast.url, GENERATE, { body, headers: { "x-request-id": "bad-1" } });
    const b = await rawGrpc(connect.url, GENERATE, { body, headers: { "x-request-id": "bad-1" } });
    assert.equal(a.status, 3);
    assert.equal(a.headers["grpc-status"], "3", "status in the one HEADERS frame");
    assert.deepEqual(a.trailers, {});
    assert.equal(b.status, 3);
    assert.equal(a.message, b.message);
    assert.equal(a.headers["grpc-status-details-bin"], b.trailers["grpc-status-details-bin"]);
    assert.equal(a.headers["x-request-id"], "bad-1");
    assert.equal(b.trailers["x-request-id"], "bad-1", "connect-node sends the id in the error's trailers");
    assert.equal(rpcLines(fast, "bad-1")[0]?.["code"], "InvalidArgument");
  });

  describe("answers broken requests like connect-node, and never leaves the stream open", () => {
    const cases: { name: string; call: RawGrpcCall; code: number; message: RegExp }[] = [
      { name: "no message at all", call: { body: [] }, code: 12, message: /missing input message/ },
      {
        name: "a truncated frame header",
        call: { body: [Buffer.from([0, 0, 0])] },
        code: 3,
        message: /incomplete envelope/,
      },
      {
        name: "a frame shorter than it says",
        call: { body: [generateFrame("x").subarray(0, 12)] },
        code: 3,
        message: /incomplete envelope/,
      },
      {
        name: "two messages",
        call: { body: [generateFrame("a"), generateFrame("b")] },
        code: 12,
        message: /extra input message/,
      },
      {
        name: "a compressed frame without grpc-encoding",
        call: { body: [frame(Buffer.from("xyz"), 1)] },
        code: 13,
        message: /compressed envelope/,
      },
      {
        name: "bytes that are not a GenerateRequest",
        call: { body: [frame(Buffer.from([0xff, 0xff, 0xff]))] },
        code: 13,
        message: /parse binary/,
      },
      {
        name: "an unparseable grpc-timeout",
        call: { body: [generateFrame("x")], headers: { "grpc-timeout": "soon" } },
        code: 3,
        message: /timeout/,
      },
      {
        name: "a frame that announces more than MAX_MESSAGE_BYTES",
        call: { body: [Buffer.from([0, 0x7f, 0xff, 0xff, 0xff])] },
        code: 8,
        message: /larger than configured readMaxBytes/,
      },
      {
        name: "a body larger than MAX_MESSAGE_BYTES that never ends",
        call: { body: [Buffer.alloc(MAX_MESSAGE_BYTES * 2)], keepOpen: true },
        code: 8,
        message: /larger than configured readMaxBytes/,
      },
    ];
    for (const [i, c] of cases.entries()) {
      it(c.name, async () => {
        const id = `broken-${i}`;
        const a = await rawGrpc(fast.url, GENERATE, {
          ...c.call,
          headers: { ...c.call.headers, "x-request-id": id },
          timeoutMs: 5000,
        });
        assert.equal(a.status, c.code, `fast path: ${a.message}`);
        assert.match(a.message, c.message);
        assert.ok(await eventually(() => rpcLines(fast, id).length > 0), "the refused call is logged");
        assert.equal(rpcLines(fast, id).length, 1);
        if (c.call.keepOpen) {
          // connect-node waits for the body it will never read: only the fast path is asked to close.
          return;
        }
        const b = await rawGrpc(connect.url, GENERATE, { ...c.call, timeoutMs: 5000 });
        assert.equal(b.status, c.code, `connect-node: ${b.message}`);
      });
    }
  });

  it("leaves gzip-compressed requests to connect-node, which decompresses them", async () => {
    const { gzipSync } = await import("node:zlib");
    const payload = gzipSync(
      encode(GenerateRequestSchema, { model: "llama3.2", prompt: "zipped", options: { numPredict: 2 } }),
    );
    const r = await rawGrpc(fast.url, GENERATE, { body: [frame(payload, 1)], headers: { "grpc-encoding": "gzip" } });
    assert.equal(r.status, 0, r.message);
    assert.equal(r.messages.length, 3);
  });

  it("stops the upstream generation and logs CANCELLED when the client resets the stream", async () => {
    const slow = await startSimulator({ tokenMs: 50 });
    const gw = await startTestGateway({ OLLAMA_URL: slow.url });
    try {
      const disconnected = new Promise<number>((resolve) =>
        slow.events.once("disconnect", (e: { tokens: number }) => resolve(e.tokens)),
      );
      const r = await rawGrpc(gw.url, GENERATE, {
        body: [generateFrame("cancel me", 1000)],
        headers: { "x-request-id": "cancel-1" },
        onStream: (stream) => {
          let seen = 0;
          stream.on("data", () => {
            if (++seen === 3) stream.close(http2.constants.NGHTTP2_CANCEL);
          });
        },
      });
      assert.equal(r.rstCode, http2.constants.NGHTTP2_CANCEL);
      const tokens = await disconnected;
      assert.ok(tokens < 100, `the simulator stopped after ${tokens} tokens`);
      assert.ok(await eventually(() => rpcLines(gw, "cancel-1").length > 0));
      assert.equal(rpcLines(gw, "cancel-1")[0]!["code"], "Canceled");
      const status = createClient(GatewayService, createGrpcTransport({ baseUrl: gw.url }));
      assert.equal(
        (await status.getStatus({})).activeCalls,
        0,
        "the call no longer counts against MAX_CONCURRENT_RPCS",
      );
    } finally {
      await gw.close();
      await slow.close();
    }
  });

  it("ends a call at its grpc-timeout with DEADLINE_EXCEEDED and stops the upstream", async () => {
    const slow = await startSimulator({ tokenMs: 50 });
    const gw = await startTestGateway({ OLLAMA_URL: slow.url });
    try {
      const disconnected = new Promise<void>((resolve) => slow.events.once("disconnect", () => resolve()));
      const started = performance.now();
      const r = await rawGrpc(gw.url, GENERATE, {
        body: [generateFrame("too slow", 1000)],
        headers: { "grpc-timeout": "300m" },
      });
      assert.equal(r.status, 4, r.message);
      assert.ok(r.messages.length > 0, "tokens arrived before the deadline");
      assert.ok(performance.now() - started < 3000);
      await disconnected;
    } finally {
      await gw.close();
      await slow.close();
    }
  });

  it("counts its calls against MAX_CONCURRENT_RPCS and releases them when they end", async () => {
    const slow = await startSimulator({ tokenMs: 20 });
    const gw = await startTestGateway({ OLLAMA_URL: slow.url, MAX_CONCURRENT_RPCS: "1" });
    try {
      const first = rawGrpc(gw.url, GENERATE, { body: [generateFrame("first", 20)] });
      assert.ok(await eventually(() => (slow.stats.requests["/api/generate"] ?? 0) > 0));
      const refused = await rawGrpc(gw.url, GENERATE, { body: [generateFrame("second")] });
      assert.equal(refused.status, 8, refused.message);
      assert.match(refused.message, /maximum of 1 calls/);
      assert.deepEqual(statusDetails(refused), { reason: "GATEWAY_OVERLOADED", retryMs: 250 });
      // The same request gzip-compressed goes to connect-node, which the same cap refuses the same way.
      const { gzipSync } = await import("node:zlib");
      const bytes = encode(GenerateRequestSchema, { model: "llama3.2", prompt: "second", options: { numPredict: 3 } });
      const refusedToo = await rawGrpc(gw.url, GENERATE, {
        body: [frame(gzipSync(bytes), 1)],
        headers: { "grpc-encoding": "gzip" },
      });
      assert.equal(refusedToo.status, 8, refusedToo.message);
      assert.equal(refusedToo.message, refused.message);
      assert.deepEqual(statusDetails(refusedToo), statusDetails(refused));
      assert.equal((await first).status, 0);
      const again = await rawGrpc(gw.url, GENERATE, { body: [generateFrame("third")] });
      assert.equal(again.status, 0, again.message);
    } finally {
      await gw.close();
      await slow.close();
    }
  });
});
