import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { createServer } from "node:net";
import type { AddressInfo } from "node:net";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { startSimulator } from "../src/simulator/simulator.js";
import { spawnGateway, withGatewayLog, workerPids } from "./helpers/gateway-process.js";
import { eventually } from "./helpers/hostile-clients.js";

const MODEL = "llama3.2:latest";

/** A port free right now (the restarted workers must listen where the first ones did; PORT=0 would pick another). */
function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const port = (s.address() as AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** A client on its own HTTP/2 connection, so that node:cluster hands calls to both workers. */
function client(url: string) {
  return createClient(InferenceService, createGrpcTransport({ baseUrl: url }));
}

// The simulator accepts up to 8 at once, so its peak of concurrent generations shows how many the
// gateway sent; the gateway is told the node has 1 slot (as a node with OLLAMA_NUM_PARALLEL=1 has).
describe("the workers of one gateway (WORKERS=2, no Redis)", { timeout: 90_000 }, () => {
  it("together never send a one-slot node a second request while its slot is busy, and serve all 12 streams", async () => {
    const sim = await startSimulator({ tokenMs: 5, numParallel: 8 });
    const g = await spawnGateway({ OLLAMA_URL: sim.url, OLLAMA_NUM_PARALLEL: "1", WORKERS: "2" });
    try {
      await eventually(() => workerPids(g).length === 2, "both workers");
      let failures = 0;
      await Promise.all(
        Array.from({ length: 12 }, async (_, i) => {
          try {
            for await (const _m of client(g.url).generate(
              { model: "llama3.2", prompt: `r${i}`, options: { numPredict: 10 } },
              { timeoutMs: 60_000 },
            ))
              void _m;
          } catch {
            failures++;
          }
        }),
      );
      assert.equal(failures, 0, "every stream succeeds");
      assert.equal(sim.stats.completed, 12);
      assert.equal(sim.stats.maxInFlight[MODEL], 1, "the node never had two requests at once");
    } catch (e) {
      throw withGatewayLog(e, g);
    } finally {
      await g.stop();
      await sim.close();
    }
  });

  it("frees the slot of a worker killed mid-call, so the restarted workers can use the node", async () => {
    const sim = await startSimulator({ tokenMs: 50, numParallel: 8 });
    const port = String(await freePort());
    const g = await spawnGateway({ OLLAMA_URL: sim.url, OLLAMA_NUM_PARALLEL: "1", WORKERS: "2", PORT: port });
    try {
      await eventually(() => workerPids(g).length === 2, "both workers");
      const first = workerPids(g);
      const held = (async () => {
        for await (const _m of client(g.url).generate({
          model: "llama3.2",
          prompt: "long",
          options: { numPredict: 2000 },
        }))
          void _m;
      })();
      const heldOutcome = held.then(
        () => "finished",
        () => "failed",
      );
      await eventually(() => (sim.stats.inFlight[MODEL] ?? 0) === 1, "the long call to hold the slot");
      // Whichever worker serves it dies with it (both are killed: node:cluster picked one of them).
      for (const pid of first) process.kill(pid, "SIGKILL");
      assert.equal(await heldOutcome, "failed", "the held call died with its worker");
      await eventually(() => workerPids(g).length === 4, "the primary to restart both workers and them to listen");
      // With the dead worker's slot still counted, this call would wait in the queue until its deadline.
      let done = 0;
      for await (const m of client(g.url).generate(
        { model: "llama3.2", prompt: "after", options: { numPredict: 3 } },
        { timeoutMs: 20_000 },
      ))
        if (m.done) done++;
      assert.equal(done, 1, "the call after the crash is served to the end");
      // The primary's log lines are written in batches (up to 200 ms late): wait for the line.
      await eventually(
        () => g.lines().some((l) => l["msg"] === "freed the slots of a worker that exited"),
        "the primary to log that it freed the dead worker's slots",
      );
    } catch (e) {
      throw withGatewayLog(e, g);
    } finally {
      await g.stop();
      await sim.close();
    }
  });

  it("tells the other worker at once when one finds the node failing, without waiting for its own evidence", async () => {
    const sim = await startSimulator({ numParallel: 8 });
    // Probes every 10 minutes (and they would pass): only traffic, or another worker, can open a circuit.
    const g = await spawnGateway({
      OLLAMA_URL: sim.url,
      OLLAMA_NUM_PARALLEL: "1",
      WORKERS: "2",
      HEALTH_PROBE_INTERVAL_MS: "600000",
      CIRCUIT_FAILURE_THRESHOLD: "1",
    });
    try {
      await eventually(() => workerPids(g).length === 2, "both workers");
      // The node answers every Generate with a 500 from now on (its probes would still succeed).
      sim.faults.add({ kind: "error-before-stream", status: 500, message: "boom", path: "/api/generate", times: -1 });
      // Calls one at a time until a worker's circuit opens on its own failed traffic (threshold 1);
      // then no more calls, so the other worker can learn it only from that worker.
      const opened = () => g.lines().some((l) => l["msg"] === "ollama node is unreachable");
      for (let i = 0; i < 20 && !opened(); i++) {
        await assert.rejects(async () => {
          for await (const _m of client(g.url).generate({ model: "llama3.2", prompt: "x" }, { timeoutMs: 20_000 }))
            void _m;
        });
      }
      await eventually(opened, "a worker to open its circuit");
      await eventually(
        () => g.lines().some((l) => l["msg"] === "node health verdict from another worker applied"),
        "the other worker to apply the verdict",
      );
      const applied = g.lines().find((l) => l["msg"] === "node health verdict from another worker applied");
      assert.equal(applied?.["verdict"], "down");
      assert.equal(applied?.["circuit"], "open");
    } catch (e) {
      throw withGatewayLog(e, g);
    } finally {
      await g.stop();
      await sim.close();
    }
  });
});
