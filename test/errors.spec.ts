import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import type { Client } from "@connectrpc/connect";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { ModelService } from "../src/gen/ollama/gateway/v1/model_pb.js";
import type { GenerateResponse } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../src/gen/grpc/health/v1/health_pb.js";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { startSimulator } from "../src/simulator/simulator.js";
import type { Simulator } from "../src/simulator/simulator.js";
import { startTestGateway } from "./helpers/test-gateway.js";
import type { TestGateway } from "./helpers/test-gateway.js";
import { TRANSPORTS } from "./helpers/transports.js";

/** Runs a Generate stream to its end; returns what arrived and the error it ended with. */
async function generate(
  client: Client<typeof InferenceService>,
  req: Parameters<Client<typeof InferenceService>["generate"]>[0],
  options: Parameters<Client<typeof InferenceService>["generate"]>[1] = {},
): Promise<{ messages: GenerateResponse[]; error?: ConnectError }> {
  const messages: GenerateResponse[] = [];
  try {
    for await (const m of client.generate(req, options)) messages.push(m);
    return { messages };
  } catch (e) {
    return { messages, error: ConnectError.from(e) };
  }
}

function reason(e: ConnectError | undefined): string | undefined {
  return e?.findDetails(ErrorInfoSchema)[0]?.reason;
}

/** Resolves with the time of the simulator's next "disconnect" event. */
function nextDisconnect(sim: Simulator): Promise<number> {
  return new Promise((resolve) => sim.events.once("disconnect", (e: { at: number }) => resolve(e.at)));
}

/** The gateway's overall and InferenceService health, as Health/Check reports them. */
async function healthOf(baseUrl: string): Promise<[ServingStatus, ServingStatus]> {
  const health = createClient(Health, TRANSPORTS[0]!.make(baseUrl));
  const overall = await health.check({ service: "" });
  const inference = await health.check({ service: InferenceService.typeName });
  return [overall.status, inference.status];
}

async function waitFor(check: () => Promise<boolean>, ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (await check()) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return false;
}

describe("errors reach clients with the right code and details", () => {
  let sim: Simulator;
  let gw: TestGateway;
  let client: Client<typeof InferenceService>;

  before(async () => {
    sim = await startSimulator({ tokenMs: 5 });
    gw = await startTestGateway({ OLLAMA_URL: sim.url, UPSTREAM_MAX_LINE_BYTES: String(1024 * 1024) });
    client = createClient(InferenceService, TRANSPORTS[0]!.make(gw.url));
  });
  after(async () => {
    await gw.close();
    await sim.close();
  });

  it("answers NOT_FOUND with reason MODEL_NOT_FOUND for an unknown model", async () => {
    const { error } = await generate(client, { model: "no-such-model", prompt: "hi" });
    assert.equal(error?.code, Code.NotFound);
    const info = error?.findDetails(ErrorInfoSchema)[0];
    assert.equal(info?.reason, "MODEL_NOT_FOUND");
    assert.equal(info?.domain, "ollama.gateway.v1");
    assert.equal(info?.metadata["model"], "no-such-model");
  });

  it("answers INVALID_ARGUMENT with a field violation for an empty model", async () => {
    const sentBefore = sim.stats.requests["/api/generate"] ?? 0;
    const { error } = await generate(client, { model: "", prompt: "hi" });
    assert.equal(error?.code, Code.InvalidArgument);
    const bad = error?.findDetails(BadRequestSchema)[0];
    assert.deepEqual(
      bad?.fieldViolations.map((v) => v.field),
      ["model"],
    );
    assert.equal(sim.stats.requests["/api/generate"] ?? 0, sentBefore, "nothing reached Ollama");
  });

  it("answers RESOURCE_EXHAUSTED for a prompt larger than the 4 MiB message limit", async () => {
    const { error } = await generate(client, { model: "llama3.2", prompt: "x".repeat(5 * 1024 * 1024) });
    assert.equal(error?.code, Code.ResourceExhausted);
  });

  it("answers INVALID_ARGUMENT when Ollama rejects the request (400)", async () => {
    const { error } = await generate(client, { model: "all-minilm", prompt: "embedding models cannot generate" });
    assert.equal(error?.code, Code.InvalidArgument);
    assert.equal(reason(error), "UPSTREAM_REJECTED");
  });

  it("answers UNAVAILABLE with RetryInfo when Ollama is busy (503)", async () => {
    sim.faults.add({ kind: "busy", path: "/api/generate" });
    const { error } = await generate(client, { model: "llama3.2", prompt: "hi" });
    assert.equal(error?.code, Code.Unavailable);
    assert.equal(reason(error), "UPSTREAM_BUSY");
    assert.ok(error?.findDetails(RetryInfoSchema)[0]?.retryDelay !== undefined);
  });

  it("answers an Embed UNAVAILABLE with RetryInfo when Ollama is busy (503), as it does a Generate, and serves the next", async () => {
    sim.faults.add({ kind: "busy", path: "/api/embed" });
    const error = await client.embed({ model: "all-minilm", inputs: ["busy node"] }).then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );
    assert.equal(error?.code, Code.Unavailable);
    assert.equal(reason(error), "UPSTREAM_BUSY");
    assert.ok(error?.findDetails(RetryInfoSchema)[0]?.retryDelay !== undefined);
    // A node that was busy once serves the next call (and its circuit counts a success again).
    assert.equal((await client.embed({ model: "all-minilm", inputs: ["not busy now"] })).embeddings.length, 1);
  });

  it("sends the partial answer and then INTERNAL when Ollama fails mid-stream", async () => {
    sim.faults.add({
      kind: "error-mid-stream",
      path: "/api/generate",
      afterTokens: 3,
      message: "an error was encountered while running the model",
    });
    const { messages, error } = await generate(client, {
      model: "llama3.2",
      prompt: "hi",
      options: { numPredict: 20 },
    });
    // Three tokens before the error: one message each, or fewer when tokens that arrived in one
    // read were coalesced (a busy machine); never the final message.
    assert.ok(messages.length >= 1 && messages.length <= 3, `${messages.length} messages`);
    assert.ok(messages.map((m) => m.text).join("").length > 0, "the partial answer was sent");
    assert.ok(messages.every((m) => !m.done));
    assert.equal(error?.code, Code.Internal);
    assert.equal(reason(error), "UPSTREAM_ERROR");
    assert.equal(
      error?.findDetails(ErrorInfoSchema)[0]?.metadata["upstream_message"],
      "an error was encountered while running the model",
    );
  });

  it("ends with UNAVAILABLE when the node drops the connection mid-stream", async () => {
    sim.faults.add({ kind: "drop-connection", path: "/api/generate", afterTokens: 2 });
    const { messages, error } = await generate(client, {
      model: "llama3.2",
      prompt: "hi",
      options: { numPredict: 20 },
    });
    // Two tokens before the drop (fewer messages if they were coalesced on a busy machine).
    assert.ok(messages.length >= 1 && messages.length <= 2, `${messages.length} messages`);
    assert.equal(error?.code, Code.Unavailable);
  });

  it("answers INTERNAL when Ollama sends a line that is not JSON, and keeps serving", async () => {
    sim.faults.add({ kind: "malformed-line", path: "/api/generate", afterTokens: 1 });
    const { error } = await generate(client, { model: "llama3.2", prompt: "hi" });
    assert.equal(error?.code, Code.Internal);
    assert.equal(reason(error), "UPSTREAM_PROTOCOL_ERROR");
    const ok = await generate(client, { model: "llama3.2", prompt: "hi" });
    assert.equal(ok.error, undefined);
    assert.deepEqual(
      await healthOf(gw.url),
      [ServingStatus.SERVING, ServingStatus.SERVING],
      "a bad line does not make the node unhealthy",
    );
  });

  it("answers INTERNAL for an endless line without buffering it, and keeps serving", async () => {
    sim.faults.add({ kind: "endless-line", path: "/api/generate" });
    const before = process.memoryUsage().rss;
    const disconnected = nextDisconnect(sim);
    const { error } = await generate(client, { model: "llama3.2", prompt: "hi" });
    assert.equal(error?.code, Code.Internal);
    assert.equal(reason(error), "UPSTREAM_PROTOCOL_ERROR");
    await disconnected; // the gateway hung up instead of reading forever
    const grown = process.memoryUsage().rss - before;
    assert.ok(grown < 64 * 1024 * 1024, `RSS grew by ${grown} bytes`);
    const ok = await generate(client, { model: "llama3.2", prompt: "hi" });
    assert.equal(ok.error, undefined);
    assert.deepEqual(
      await healthOf(gw.url),
      [ServingStatus.SERVING, ServingStatus.SERVING],
      "an endless line does not make the node unhealthy",
    );
  });

  it("ends a pull of a model that does not exist with NOT_FOUND, Ollama's message in the status, reserved characters removed", async () => {
    const models = createClient(ModelService, TRANSPORTS[0]!.make(gw.url));
    let error: ConnectError | undefined;
    try {
      for await (const _ of models.pullModel({ model: "no-such-model-anywhere" })) {
        // progress, if any, is not what this test is about
      }
    } catch (e) {
      error = ConnectError.from(e);
    }
    assert.equal(error?.code, Code.NotFound);
    assert.equal(reason(error), "MODEL_NOT_FOUND");
    const upstream = error?.findDetails(ErrorInfoSchema)[0]?.metadata["upstream_message"];
    assert.equal(upstream, "pull model manifest: file does not exist", "the verbatim text stays in ErrorInfo");
    assert.equal(
      error?.rawMessage,
      "model no-such-model-anywhere not found in its registry - pull model manifest file does not exist",
    );
    assert.doesNotMatch(error?.rawMessage ?? "", /[:/?#&=+,;@$]/);
  });

  it("answers DEADLINE_EXCEEDED and aborts the upstream request when the deadline passes", async () => {
    const slowSim = await startSimulator({ tokenMs: 50 });
    const slow = await startTestGateway({ OLLAMA_URL: slowSim.url });
    try {
      const c = createClient(InferenceService, TRANSPORTS[0]!.make(slow.url));
      const disconnected = nextDisconnect(slowSim);
      const { messages, error } = await generate(
        c,
        { model: "llama3.2", prompt: "hi", options: { numPredict: 200 } },
        { timeoutMs: 400 },
      );
      const failedAt = performance.now();
      assert.equal(error?.code, Code.DeadlineExceeded);
      assert.ok(messages.length > 0 && messages.length < 20, `${messages.length} messages`);
      const at = await disconnected;
      // Generous for a loaded 2-core machine, and still far below the stream's natural end.
      assert.ok(
        Math.abs(at - failedAt) < 1_500,
        `upstream saw the disconnect ${Math.round(at - failedAt)} ms after the deadline`,
      );
      assert.equal(slowSim.stats.inFlight["llama3.2"] ?? 0, 0);
    } finally {
      await slow.close();
      await slowSim.close();
    }
  });

  it("aborts the upstream request at once when the client cancels, long before the stream would end", async () => {
    const slowSim = await startSimulator({ tokenMs: 50 });
    const slow = await startTestGateway({ OLLAMA_URL: slowSim.url });
    try {
      for (const t of TRANSPORTS) {
        const c = createClient(InferenceService, t.make(slow.url));
        const controller = new AbortController();
        const disconnected = nextDisconnect(slowSim);
        let cancelledAt = 0;
        let count = 0;
        await assert.rejects(async () => {
          for await (const _ of c.generate(
            { model: "llama3.2", prompt: "hi", options: { numPredict: 200 } },
            { signal: controller.signal },
          )) {
            if (++count === 3) {
              cancelledAt = performance.now();
              controller.abort();
            }
          }
        });
        const at = await disconnected;
        // The stream would run 10 s (200 tokens, 50 ms each); a generous bound for a loaded
        // 2-core machine still proves the cancel travelled upstream, not the stream's end.
        assert.ok(
          at - cancelledAt < 1_500,
          `${t.name}: upstream saw the cancel after ${Math.round(at - cancelledAt)} ms`,
        );
      }
    } finally {
      await slow.close();
      await slowSim.close();
    }
  });

  it("reports UNAVAILABLE within a second and NOT_SERVING while Ollama is down, then SERVING again", async () => {
    const ownSim = await startSimulator();
    const port = ownSim.port;
    const own = await startTestGateway({ OLLAMA_URL: ownSim.url });
    try {
      const c = createClient(InferenceService, TRANSPORTS[0]!.make(own.url));
      const health = createClient(Health, TRANSPORTS[0]!.make(own.url));
      assert.equal((await health.check({ service: "" })).status, ServingStatus.SERVING);
      await ownSim.close();

      const t0 = performance.now();
      const { error } = await generate(c, { model: "llama3.2", prompt: "hi" });
      assert.equal(error?.code, Code.Unavailable);
      assert.equal(reason(error), "UPSTREAM_UNAVAILABLE");
      assert.ok(performance.now() - t0 < 1000, `took ${Math.round(performance.now() - t0)} ms`);
      assert.ok(error?.findDetails(RetryInfoSchema).length === 1);

      const notServing = await waitFor(
        async () => (await health.check({ service: "" })).status === ServingStatus.NOT_SERVING,
        2000,
      );
      assert.ok(notServing, "health did not turn NOT_SERVING");
      assert.equal(
        (await health.check({ service: "ollama.gateway.v1.InferenceService" })).status,
        ServingStatus.NOT_SERVING,
      );

      const back = await startSimulator({ port });
      try {
        const serving = await waitFor(
          async () => (await health.check({ service: "" })).status === ServingStatus.SERVING,
          2000,
        );
        assert.ok(serving, "health did not return to SERVING");
        const ok = await generate(c, { model: "llama3.2", prompt: "hi" });
        assert.equal(ok.error, undefined);
      } finally {
        await back.close();
      }
    } finally {
      await own.close();
      await ownSim.close().catch(() => undefined);
    }
  });

  it("streams NOT_SERVING on Health/Watch when the only Ollama node goes down, and SERVING when it returns", async () => {
    const ownSim = await startSimulator();
    const port = ownSim.port;
    const own = await startTestGateway({ OLLAMA_URL: ownSim.url });
    const watching = new AbortController();
    const giveUp = setTimeout(() => watching.abort(new Error("no health change within 10 s")), 10_000);
    let back: Simulator | undefined;
    try {
      const health = createClient(Health, TRANSPORTS[0]!.make(own.url));
      const updates = health.watch({ service: "" }, { signal: watching.signal })[Symbol.asyncIterator]();
      const next = async (): Promise<ServingStatus> => {
        const r = await updates.next();
        assert.ok(r.done !== true, "the watch stream ended");
        return r.value.status;
      };
      assert.equal(await next(), ServingStatus.SERVING, "the first message is the current status");
      await ownSim.close();
      assert.equal(await next(), ServingStatus.NOT_SERVING);
      back = await startSimulator({ port });
      assert.equal(await next(), ServingStatus.SERVING);
    } finally {
      clearTimeout(giveUp);
      watching.abort();
      await own.close();
      await back?.close();
      await ownSim.close().catch(() => undefined);
    }
  });

  it("ends with a non-OK status when the upstream stream stops before its final message", async () => {
    // A stream that just ends is what Ollama's repeat detector produces.
    const cut = http.createServer((req, res) => {
      if (req.url === "/api/version") return void res.end(JSON.stringify({ version: "0.12.6" }));
      if (req.url === "/api/tags")
        return void res.end(JSON.stringify({ models: [{ name: "m:latest", digest: "ab".repeat(32) }] }));
      if (req.url === "/api/ps") return void res.end(JSON.stringify({ models: [] }));
      res.writeHead(200, { "content-type": "application/x-ndjson" });
      res.write(
        `${JSON.stringify({ model: "m", created_at: new Date().toISOString(), response: "a", done: false })}\n`,
      );
      res.end();
    });
    await new Promise<void>((r) => cut.listen(0, "127.0.0.1", r));
    const own = await startTestGateway({ OLLAMA_URL: `http://127.0.0.1:${(cut.address() as AddressInfo).port}` });
    try {
      const c = createClient(InferenceService, TRANSPORTS[0]!.make(own.url));
      const { messages, error } = await generate(c, { model: "m", prompt: "hi" });
      assert.equal(messages.length, 1);
      assert.equal(error?.code, Code.Internal);
      assert.equal(reason(error), "UPSTREAM_PROTOCOL_ERROR");
    } finally {
      await own.close();
      await new Promise((r) => cut.close(r));
    }
  });
});
