import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import {
  EmbedRequestSchema,
  EmbedResponseSchema,
  GenerateRequestSchema,
  GenerateResponseSchema,
  InferenceService,
} from "../src/gen/ollama/gateway/v1/inference_pb.js";
import type { GenerateResponse } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { DoneReason } from "../src/gen/ollama/gateway/v1/types_pb.js";
import type { DisconnectEvent } from "../src/simulator/events.js";
import { startSimulator } from "../src/simulator/simulator.js";
import type { Simulator } from "../src/simulator/simulator.js";
import { grpcJsClient, grpcJsServerStream, grpcJsUnary, readAll, statusDetails } from "./helpers/grpc-js-client.js";
import { startTestGateway } from "./helpers/test-gateway.js";
import type { TestGateway } from "./helpers/test-gateway.js";

const GENERATE = `/${InferenceService.typeName}/Generate`;
const EMBED = `/${InferenceService.typeName}/Embed`;

/** Simulated time per token: a 200-token answer takes 10 s, so deadlines and cancels cut it mid-stream. */
const TOKEN_MS = 50;

/** How soon after the client gives up the simulated Ollama must see its request closed. */
const DISCONNECT_WITHIN_MS = 100;

/** A grpc-js status error, with the messages that arrived before it (see readAll). */
type StreamError = grpc.ServiceError & { received: GenerateResponse[] };

/** Reads a stream that must fail; resolves with the error and the time the client saw it. */
async function failure(stream: grpc.ClientReadableStream<GenerateResponse>): Promise<{ err: StreamError; at: number }> {
  try {
    const got = await readAll(stream);
    assert.fail(`the stream ended OK after ${got.length} messages`);
  } catch (e) {
    const at = performance.now();
    if (e instanceof assert.AssertionError) throw e;
    return { err: e as StreamError, at };
  }
}

/** Asserts that grpc-js shows a status message as the gateway wrote it, without %XX escapes. */
function assertReadableMessage(err: grpc.ServiceError): void {
  assert.doesNotMatch(err.details, /%[0-9A-Fa-f]{2}/, `grpc-js shows an escaped status message: ${err.details}`);
}

describe("a @grpc/grpc-js client", () => {
  let sim: Simulator;
  let gw: TestGateway;
  let client: grpc.Client;
  const disconnects: DisconnectEvent[] = [];
  let stopWatching: () => void = () => {};

  before(async () => {
    sim = await startSimulator({ tokenMs: TOKEN_MS });
    stopWatching = sim.events.on("disconnect", (e) => disconnects.push(e));
    gw = await startTestGateway({ OLLAMA_URL: sim.url });
    client = grpcJsClient(`127.0.0.1:${gw.port}`);
  });
  after(async () => {
    client.close();
    stopWatching();
    await gw.close();
    await sim.close();
  });

  /** Waits (up to 2 s) for the simulator to report a cut /api/generate request. */
  async function generateDisconnect(): Promise<DisconnectEvent> {
    for (const deadline = performance.now() + 2_000; performance.now() < deadline; await sleep(5)) {
      const cut = disconnects.find((d) => d.path === "/api/generate");
      if (cut) return cut;
    }
    assert.fail("the simulator never saw the /api/generate request disconnect");
  }

  it("streams Generate to the done message, whose usage names the serving node", async () => {
    const got = await readAll(
      grpcJsServerStream(client, GENERATE, GenerateRequestSchema, GenerateResponseSchema, {
        model: "llama3.2",
        prompt: "Tell me about llamas",
        options: { numPredict: 4 },
      }),
    );
    assert.equal(got.length, 5, "4 tokens and one final message");
    assert.ok(got.slice(0, -1).every((m) => !m.done && m.text !== ""));
    const last = got.at(-1)!;
    assert.equal(last.done, true);
    assert.equal(last.doneReason, DoneReason.LENGTH);
    assert.equal(last.usage?.completionTokens, 4);
    assert.equal(last.usage?.node, `127.0.0.1:${sim.port}`);
  });

  it("ends with DEADLINE_EXCEEDED when the deadline passes mid-stream, and Ollama's request is closed at once", async () => {
    disconnects.length = 0;
    const { err, at } = await failure(
      grpcJsServerStream(
        client,
        GENERATE,
        GenerateRequestSchema,
        GenerateResponseSchema,
        { model: "llama3.2", prompt: "Tell me a very long story", options: { numPredict: 200 } },
        { deadline: Date.now() + 400 },
      ),
    );
    assert.equal(err.code, grpc.status.DEADLINE_EXCEEDED, `${grpc.status[err.code]}: ${err.details}`);
    assert.ok(
      err.received.length > 0 && err.received.length < 200,
      `${err.received.length} messages before the deadline`,
    );
    assertReadableMessage(err);
    const cut = await generateDisconnect();
    const gap = cut.at - at;
    assert.ok(
      Math.abs(gap) <= DISCONNECT_WITHIN_MS,
      `the simulator saw the disconnect ${gap.toFixed(1)} ms after the client's error`,
    );
  });

  it("closes Ollama's request at once when the client cancels after three messages", async () => {
    disconnects.length = 0;
    const call = grpcJsServerStream(client, GENERATE, GenerateRequestSchema, GenerateResponseSchema, {
      model: "llama3.2",
      prompt: "Tell me a very long story",
      options: { numPredict: 200 },
    });
    let cancelledAt = 0;
    let count = 0;
    call.on("data", () => {
      if (++count === 3) {
        cancelledAt = performance.now();
        call.cancel();
      }
    });
    const { err } = await failure(call);
    assert.equal(err.code, grpc.status.CANCELLED, `${grpc.status[err.code]}: ${err.details}`);
    assert.equal(count, 3, "no message after the cancel");
    const cut = await generateDisconnect();
    const gap = cut.at - cancelledAt;
    assert.ok(
      gap >= 0 && gap <= DISCONNECT_WITHIN_MS,
      `the simulator saw the disconnect ${gap.toFixed(1)} ms after the cancel`,
    );
  });

  it("gets NOT_FOUND for an unknown model, with ErrorInfo MODEL_NOT_FOUND in grpc-status-details-bin", async () => {
    const { err } = await failure(
      grpcJsServerStream(client, GENERATE, GenerateRequestSchema, GenerateResponseSchema, {
        model: "no-such-model",
        prompt: "hi",
      }),
    );
    assert.equal(err.code, grpc.status.NOT_FOUND, `${grpc.status[err.code]}: ${err.details}`);
    assert.equal(err.received.length, 0);
    const { errorInfo } = statusDetails(err);
    assert.equal(errorInfo?.reason, "MODEL_NOT_FOUND");
    assert.equal(errorInfo?.domain, "ollama.gateway.v1");
    assert.equal(errorInfo?.metadata["model"], "no-such-model");
    assert.match(err.details, /no-such-model/);
    assertReadableMessage(err);
  });

  it("shows status messages unescaped even when Ollama's error text has reserved characters", async () => {
    const upstreamMessage = "runner failed: see /var/log/ollama?level=error&id=1, then retry; cost $0 + @admin #42";
    sim.faults.add({
      kind: "error-before-stream",
      status: 500,
      message: upstreamMessage,
      path: "/api/generate",
      model: "llama3.2",
    });
    const { err } = await failure(
      grpcJsServerStream(client, GENERATE, GenerateRequestSchema, GenerateResponseSchema, {
        model: "llama3.2",
        prompt: "hi",
      }),
    );
    assert.equal(err.code, grpc.status.INTERNAL, `${grpc.status[err.code]}: ${err.details}`);
    assert.match(err.details, /runner failed/);
    assertReadableMessage(err);
    const { errorInfo } = statusDetails(err);
    assert.equal(errorInfo?.reason, "UPSTREAM_ERROR");
    assert.equal(errorInfo?.metadata["upstream_message"], upstreamMessage, "the verbatim text travels in the details");
  });

  it("embeds a batch with a unary call", async () => {
    const res = await grpcJsUnary(client, EMBED, EmbedRequestSchema, EmbedResponseSchema, {
      model: "all-minilm",
      inputs: ["alpha", "beta", "alpha"],
    });
    assert.equal(res.embeddings.length, 3);
    assert.ok(res.embeddings.every((e) => e.values.length === 384));
    assert.deepEqual(res.embeddings[0]!.values, res.embeddings[2]!.values);
    assert.notDeepEqual(res.embeddings[0]!.values, res.embeddings[1]!.values);
    assert.equal(res.usage?.node, `127.0.0.1:${sim.port}`);
  });
});
