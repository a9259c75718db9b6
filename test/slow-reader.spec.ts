import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import * as http2 from "node:http2";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import {
  GenerateRequestSchema,
  GenerateResponseSchema,
  InferenceService,
} from "../src/gen/ollama/gateway/v1/inference_pb.js";
import type { GenerateResponse } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { startSimulator } from "../src/simulator/simulator.js";
import type { Simulator } from "../src/simulator/simulator.js";
import { startTestGateway } from "./helpers/test-gateway.js";
import type { TestGateway } from "./helpers/test-gateway.js";
import { TRANSPORTS } from "./helpers/transports.js";

const TOKENS = 20_000;

/**
 * A gRPC call over a bare HTTP/2 stream that stops reading for `pauseMs`
 * after the first bytes: HTTP/2 flow control then pushes back on the
 * gateway, as with a real slow consumer. (grpc-js keeps reading into its own
 * buffer when paused, so it cannot play this part.)
 */
async function slowGenerate(
  url: string,
  request: Parameters<typeof create<typeof GenerateRequestSchema>>[1],
  pauseMs: number,
): Promise<GenerateResponse[]> {
  const session = http2.connect(url);
  try {
    const msg = toBinary(GenerateRequestSchema, create(GenerateRequestSchema, request));
    const frame = Buffer.alloc(5 + msg.length);
    frame.writeUInt32BE(msg.length, 1);
    Buffer.from(msg).copy(frame, 5);
    const req = session.request({
      ":method": "POST",
      ":path": "/ollama.gateway.v1.InferenceService/Generate",
      "content-type": "application/grpc",
      te: "trailers",
    });
    req.end(frame);
    const parts: Buffer[] = [];
    let paused = false;
    const status = await new Promise<string | undefined>((resolve, reject) => {
      req.on("data", (d: Buffer) => {
        parts.push(d);
        if (!paused) {
          paused = true;
          req.pause();
          setTimeout(() => req.resume(), pauseMs);
        }
      });
      req.on("trailers", (t) => resolve(t["grpc-status"] as string | undefined));
      req.on("error", reject);
    });
    assert.equal(status, "0");
    const body = Buffer.concat(parts);
    const out: GenerateResponse[] = [];
    for (let at = 0; at < body.length; ) {
      const len = body.readUInt32BE(at + 1);
      out.push(fromBinary(GenerateResponseSchema, body.subarray(at + 5, at + 5 + len)));
      at += 5 + len;
    }
    return out;
  } finally {
    session.close();
  }
}

describe("a client that reads slower than tokens arrive", () => {
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

  // Whether a given run coalesces depends on how much the upstream managed to
  // buffer during the pause (coalesceChunks and the batching parser have
  // their own unit tests); what must always hold is that a slow reader gets
  // every token exactly once, in order, and a proper end.
  it("gets every token exactly once and in order, and the final message, despite the backpressure", async () => {
    const request = { model: "llama3.2", prompt: "a long story", options: { numPredict: TOKENS } };
    let fastText = "";
    for await (const m of createClient(InferenceService, TRANSPORTS[0]!.make(gw.url)).generate(request))
      fastText += m.text;

    const got = await slowGenerate(gw.url, request, 1500);
    const text = got.map((m) => m.text).join("");
    assert.equal(text.length, fastText.length);
    assert.equal(text, fastText, "no token lost, duplicated or reordered");
    assert.ok(got.length <= TOKENS + 1, `${got.length} messages for ${TOKENS} tokens`);
    assert.equal(got.at(-1)?.done, true);
    assert.equal(got.at(-1)?.usage?.completionTokens, TOKENS);
  });
});
