import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { durationMs } from "@bufbuild/protobuf/wkt";
import { ConfigError, loadConfig } from "../src/config/load-config.js";
import type { GenerateResponse } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { ThinkMode } from "../src/gen/ollama/gateway/v1/types_pb.js";
import { SLOTS_LOWERED_MSG } from "../src/routing/scheduler.js";
import { waitedForSlot } from "../src/routing/slot-learning.js";
import { fleet, loads, run } from "./helpers/fleet.js";
import type { Fleet } from "./helpers/fleet.js";
import { startSimulator } from "../src/simulator/simulator.js";
import { startTestGateway } from "./helpers/test-gateway.js";
import { TRANSPORTS } from "./helpers/transports.js";
import { createClient } from "@connectrpc/connect";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { GatewayService } from "../src/gen/ollama/gateway/v1/gateway_pb.js";

// Capacity learned from the nodes (README, "Routing across a fleet", Capacity), end to end: real
// gateways in front of simulators whose VRAM holds fewer models than they are configured for.

// At num_ctx 4096 and one slot the simulator's llama3.2 takes 2.47 GB and qwen3 5.83 GB: a 7 GB
// node holds either, never both, whatever its count (3) says.
const VRAM = 7e9;
const LLAMA = 2_472_378_021;
const QWEN = 5_829_355_823;

/** JSON for assertion messages (GetStatus has 64-bit fields). */
const show = (x: unknown): string => JSON.stringify(x, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v));

const generate = (f: Fleet, model: string, prompt: string) =>
  run(f.client, { model, prompt, think: ThinkMode.OFF, options: { numPredict: 4 } }, { timeoutMs: 20_000 });

/** Two llama3.2 requests at once, then one qwen3: the pattern that thrashes a node told it holds 3. */
async function round(f: Fleet, i: number): Promise<void> {
  const results = await Promise.all([generate(f, "llama3.2", `a${i}`), generate(f, "llama3.2", `b${i}`)]);
  results.push(await generate(f, "qwen3", `c${i}`));
  assert.deepEqual(
    results.map((r) => r.error?.message),
    [undefined, undefined, undefined],
  );
}

/** The gateway's picture of each node (models it believes loaded) next to what /api/ps says. */
async function pictures(f: Fleet): Promise<{ believed: string[]; loaded: string[] }[]> {
  const status = await f.status.getStatus({});
  return status.nodes.map((n) => ({
    believed: n.models.map((m) => m.model).sort(),
    loaded: [...n.loadedModels].sort(),
  }));
}

describe("capacity learned from the nodes", () => {
  it("learns within a few loads that a node's VRAM holds fewer models than configured, and shows it in GetStatus", async () => {
    const f = await fleet(2, { vramBytes: VRAM, loadMs: 50, tokenMs: 2 }, {}, 1, 3);
    try {
      await round(f, 0);
      const learning = loads(f.sims);
      for (let i = 1; i < 6; i++) await round(f, i);
      assert.ok(learning <= 4, `the first round loaded ${learning} times`);
      assert.equal(loads(f.sims), learning, "no model was loaded again once the picture was learned");

      const status = await f.status.getStatus({});
      const learned = status.nodes.find((n) => n.capacity?.evidence.some((e) => e.kind === "evicted"));
      assert.ok(learned, show(status.nodes.map((n) => n.capacity?.evidence)));
      const c = learned.capacity!;
      assert.equal(c.budgetBytes, BigInt(QWEN), "the largest total seen to fit");
      assert.equal(c.overflowBytes, BigInt(LLAMA + QWEN), "llama3.2 and qwen3 did not fit together");
      assert.equal(c.maxLoadedModels, 3, "the count was not the reason");
      assert.deepEqual(c.evidence[0]?.models, ["qwen3:latest", "llama3.2:latest"]);
      const other = status.nodes.find((n) => n !== learned)!;
      assert.equal(other.capacity?.borrowedFrom, learned.name, "the other node, configured alike, borrowed the bound");
      assert.equal(other.capacity?.overflowBytes, BigInt(LLAMA + QWEN));
      assert.deepEqual(
        c.modelSizes.map((m) => [m.model, m.sizeBytes]),
        [
          ["llama3.2:latest", BigInt(LLAMA)],
          ["qwen3:latest", BigInt(QWEN)],
        ],
      );
      let last: { believed: string[]; loaded: string[] }[] = [];
      const settled = async (): Promise<boolean> => {
        last = await pictures(f);
        return last.every((p) => JSON.stringify(p.believed) === JSON.stringify(p.loaded));
      };
      let same = await settled();
      for (let i = 0; i < 40 && !same; i++) {
        await new Promise((r) => setTimeout(r, 100));
        same = await settled();
      }
      assert.ok(same, `the gateway's picture matches /api/ps: ${show(last)}`);
    } finally {
      await f.close();
    }
  });

  it("starts from the vramBytes an operator configured, and shows it", async () => {
    const sims = await Promise.all([0, 1].map(() => startSimulator({ vramBytes: VRAM, loadMs: 50, tokenMs: 2 })));
    const dir = mkdtempSync(join(tmpdir(), "ogw-capacity-"));
    const file = join(dir, "gateway.json");
    writeFileSync(
      file,
      JSON.stringify({
        nodes: sims.map((s, i) => ({ name: `n${i}`, url: s.url, maxLoadedModels: 3, vramBytes: VRAM })),
      }),
    );
    const gw = await startTestGateway({ GATEWAY_CONFIG_FILE: file, CACHE_PS_TTL_MS: "200" });
    const f: Fleet = {
      sims,
      gw,
      client: createClient(InferenceService, TRANSPORTS[0]!.make(gw.url)),
      status: createClient(GatewayService, TRANSPORTS[0]!.make(gw.url)),
      close: async () => {
        await gw.close();
        await Promise.all(sims.map((s) => s.close()));
      },
    };
    try {
      for (let i = 0; i < 4; i++) await round(f, i);
      assert.ok(loads(f.sims) <= 3, `loads: ${loads(f.sims)}`);
      const status = await f.status.getStatus({});
      for (const n of status.nodes) {
        assert.equal(n.capacity?.configuredBytes, BigInt(VRAM));
        assert.equal(n.capacity?.budgetBytes, BigInt(VRAM), "the evidence agrees with the operator");
      }
    } finally {
      await f.close();
    }
  });

  it("reads vramBytes per node from the config file, and refuses a bad one", () => {
    const dir = mkdtempSync(join(tmpdir(), "ogw-capacity-"));
    const good = join(dir, "good.json");
    writeFileSync(
      good,
      JSON.stringify({
        nodes: [
          { name: "gpu1", url: "http://10.0.0.1:11434", vramBytes: 24_000_000_000 },
          { name: "gpu2", url: "http://10.0.0.2:11434" },
        ],
      }),
    );
    const config = loadConfig({ GATEWAY_CONFIG_FILE: good });
    assert.deepEqual(
      config.nodes.map((n) => [n.name, n.vramBytes]),
      [
        ["gpu1", 24_000_000_000],
        ["gpu2", undefined],
      ],
    );
    const bad = join(dir, "bad.json");
    writeFileSync(bad, JSON.stringify({ nodes: [{ url: "http://10.0.0.1:11434", vramBytes: "24GB" }] }));
    assert.throws(
      () => loadConfig({ GATEWAY_CONFIG_FILE: bad }),
      (e: unknown) => e instanceof ConfigError && e.problems.some((p) => p.includes("nodes[0].vramBytes")),
    );
  });

  it("lowers the slots of a node that serves fewer requests at once than configured, and says so once", async () => {
    // The node runs one request at a time; the gateway is told 4.
    const f = await fleet(1, { numParallel: 1, tokenMs: 10 }, {}, 4, 1);
    try {
      const wave = (i: number, n: number) =>
        Promise.all(
          Array.from({ length: n }, (_, k) =>
            run(
              f.client,
              { model: "llama3.2", prompt: `w${i}.${k}`, options: { numPredict: 15 } },
              { timeoutMs: 20_000 },
            ),
          ),
        );
      const slotsNow = async (): Promise<number> => {
        const status = await f.status.getStatus({});
        return status.nodes[0]!.loweredSlots.find((l) => l.model === "llama3.2:latest")?.slots ?? 4;
      };
      for (let i = 0; i < 12 && (await slotsNow()) > 1; i++) {
        const rs = await wave(i, 4);
        assert.deepEqual(
          rs.map((r) => r.error?.message),
          [undefined, undefined, undefined, undefined],
        );
      }
      const status = await f.status.getStatus({});
      const lowered = status.nodes[0]!.loweredSlots;
      assert.equal(lowered.length, 1, show(lowered));
      assert.equal(lowered[0]!.model, "llama3.2:latest");
      assert.equal(lowered[0]!.configured, 4);
      assert.equal(lowered[0]!.slots, 1);
      assert.ok(lowered[0]!.waits >= 3);
      assert.ok(lowered[0]!.loweredAt !== undefined);
      assert.equal(status.nodes[0]!.models.find((m) => m.model === "llama3.2:latest")?.slots, 1);
      const lines = f.gw.logs.find(SLOTS_LOWERED_MSG);
      assert.equal(lines.length, 1, "logged once");
      assert.equal(lines[0]!["node"], "n0");
      assert.equal(lines[0]!["model"], "llama3.2:latest");

      // From now on the requests wait in the gateway's queue, not inside the node.
      const after = await wave(99, 4);
      const finals = after.map((r) => r.messages.at(-1) as GenerateResponse);
      for (const m of finals) {
        const u = m.usage!;
        const waited = waitedForSlot({
          totalMs: durationMs(u.totalDuration!),
          loadMs: u.loadDuration ? durationMs(u.loadDuration) : 0,
          promptEvalMs: u.promptEvalDuration ? durationMs(u.promptEvalDuration) : 0,
          evalMs: durationMs(u.evalDuration!),
        });
        assert.equal(waited, false, "no request waited inside the node");
      }
      const queued = finals.map((m) => (m.usage!.queueDuration ? durationMs(m.usage!.queueDuration) : 0));
      assert.ok(
        queued.filter((ms) => ms > 50).length >= 2,
        `they queued in the gateway instead: ${queued.map(Math.round).join(", ")} ms`,
      );
    } finally {
      await f.close();
    }
  });
});
