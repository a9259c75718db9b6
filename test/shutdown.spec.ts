import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../src/gen/grpc/health/v1/health_pb.js";
import { startSimulator } from "../src/simulator/simulator.js";
import { startTestGateway } from "./helpers/test-gateway.js";
import { TRANSPORTS } from "./helpers/transports.js";

describe("graceful shutdown", () => {
  it("lets a running stream finish within the grace period and refuses new calls", async () => {
    const sim = await startSimulator({ tokenMs: 20 });
    const gw = await startTestGateway({ OLLAMA_URL: sim.url, SHUTDOWN_GRACE_MS: "3000" });
    try {
      const client = createClient(InferenceService, TRANSPORTS[0]!.make(gw.url));
      const watcher = createClient(Health, TRANSPORTS[0]!.make(gw.url));
      const statuses: ServingStatus[] = [];
      let watchStarted: () => void = () => undefined;
      const started = new Promise<void>((r) => (watchStarted = r));
      const watching = (async () => {
        try {
          for await (const s of watcher.watch({ service: "" })) {
            statuses.push(s.status);
            watchStarted();
          }
        } catch {
          // the watch ends when the server shuts down
        }
      })();

      await started;
      let count = 0;
      let done = false;
      let tokens = 0;
      let closed: Promise<void> | undefined;
      const closing = (): Promise<void> => (closed ??= gw.close());
      const stream = (async () => {
        for await (const m of client.generate({ model: "llama3.2", prompt: "long", options: { numPredict: 40 } })) {
          count++;
          if (m.done) {
            done = true;
            tokens = m.usage?.completionTokens ?? 0;
          }
          if (count === 2) void closing();
        }
      })();
      await stream;
      assert.equal(done, true, "the running stream got its final message");
      // Every token arrived (a busy client may get some of them coalesced into one message).
      assert.equal(tokens, 40);
      assert.ok(count > 20, `${count} messages`);
      await closed;
      await watching;
      assert.deepEqual(statuses, [ServingStatus.SERVING, ServingStatus.NOT_SERVING]);

      const fresh = createClient(InferenceService, TRANSPORTS[2]!.make(gw.url));
      await assert.rejects(fresh.embed({ model: "all-minilm", inputs: ["x"] }), (e: unknown) => {
        assert.equal(ConnectError.from(e).code, Code.Unavailable);
        return true;
      });
    } finally {
      await gw.close();
      await sim.close();
    }
  });

  it("cancels streams still running when the grace period ends, with UNAVAILABLE, and aborts their upstream", async () => {
    const sim = await startSimulator({ tokenMs: 50 });
    const gw = await startTestGateway({ OLLAMA_URL: sim.url, SHUTDOWN_GRACE_MS: "300" });
    try {
      const client = createClient(InferenceService, TRANSPORTS[0]!.make(gw.url));
      const disconnected = new Promise<number>((resolve) =>
        sim.events.once("disconnect", (e: { at: number }) => resolve(e.at)),
      );
      let closeStarted = 0;
      let closed: Promise<void> | undefined;
      let count = 0;
      await assert.rejects(
        async () => {
          for await (const _ of client.generate({ model: "llama3.2", prompt: "long", options: { numPredict: 500 } })) {
            if (++count === 2) {
              closeStarted = performance.now();
              closed = gw.close();
            }
          }
        },
        (e: unknown) => {
          const ce = ConnectError.from(e);
          assert.equal(ce.code, Code.Unavailable);
          assert.match(ce.rawMessage, /shutting down/);
          return true;
        },
      );
      const at = await disconnected;
      assert.ok(
        at - closeStarted >= 250 && at - closeStarted < 1500,
        `upstream aborted ${Math.round(at - closeStarted)} ms after close`,
      );
      await closed;
      assert.equal(gw.health.get(""), ServingStatus.NOT_SERVING);
    } finally {
      await gw.close();
      await sim.close();
    }
  });
});
