import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import { WORKER_VERDICT_MSG, createIpcNodeHealth, isNodeVerdictMessage } from "../src/routing/ipc-node-health.js";
import type { NodeVerdictMessage, VerdictChannel } from "../src/routing/ipc-node-health.js";
import type { CircuitState, NodeVerdict, VerdictListener } from "../src/upstream/node-health.js";

/** A worker's circuit breakers, reduced to what sharing touches. */
function fakeHealth() {
  const states = new Map<string, CircuitState>([["a", "closed"]]);
  const listeners = new Set<VerdictListener>();
  const applied: [string, NodeVerdict][] = [];
  return {
    applied,
    /** This worker's own evidence opened or closed a circuit. */
    decide(node: string, verdict: NodeVerdict) {
      states.set(node, verdict === "down" ? "open" : "closed");
      for (const l of listeners) l(node, verdict);
    },
    health: {
      state: (node: string) => states.get(node) ?? "open",
      applyRemote(node: string, verdict: NodeVerdict) {
        applied.push([node, verdict]);
        states.set(node, verdict === "down" ? "open" : "half-open");
      },
      onLocalVerdict(l: VerdictListener) {
        listeners.add(l);
        return () => void listeners.delete(l);
      },
    },
  };
}

/**
 * Two workers wired through a primary that relays a verdict to every worker but its sender,
 * as src/cluster-primary.ts does.
 */
function twoWorkers() {
  const ends = [new EventEmitter(), new EventEmitter()];
  const channel = (i: number): VerdictChannel => ({
    connected: true,
    send(m: NodeVerdictMessage) {
      ends.forEach((other, j) => {
        if (j !== i) setImmediate(() => other.emit("message", m));
      });
    },
    on: (e, l) => ends[i]!.on(e, l),
    off: (e, l) => ends[i]!.off(e, l),
  });
  return { ends, channel };
}

const tick = () => new Promise((r) => setImmediate(r));

describe("node health shared between the workers of one gateway", () => {
  it("applies a circuit another worker opened, and says so once", async () => {
    const { channel } = twoWorkers();
    const one = fakeHealth();
    const two = fakeHealth();
    const lines: string[] = [];
    createIpcNodeHealth({ channel: channel(0), health: one.health, nodes: ["a"] });
    createIpcNodeHealth({
      channel: channel(1),
      health: two.health,
      nodes: ["a"],
      log: { info: (_o, msg) => lines.push(msg) },
    });
    one.decide("a", "down");
    await tick();
    assert.deepEqual(two.applied, [["a", "down"]]);
    assert.equal(two.health.state("a"), "open");
    assert.deepEqual(one.applied, [], "a worker does not apply its own verdict");
    assert.deepEqual(lines, [WORKER_VERDICT_MSG]);
  });

  it("ignores verdicts about unknown nodes, malformed messages, and everything once closed", async () => {
    const { ends, channel } = twoWorkers();
    const two = fakeHealth();
    const shared = createIpcNodeHealth({ channel: channel(1), health: two.health, nodes: ["a"] });
    ends[1]!.emit("message", { type: "ogw:node-verdict", node: "elsewhere", verdict: "down" });
    ends[1]!.emit("message", { type: "ogw:node-verdict", node: "a", verdict: "sideways" });
    ends[1]!.emit("message", { cmd: "NODE_CLUSTER" });
    shared.close();
    ends[1]!.emit("message", { type: "ogw:node-verdict", node: "a", verdict: "down" });
    await tick();
    assert.deepEqual(two.applied, []);
  });

  it("sends nothing once the channel to the primary is closed", () => {
    const sent: unknown[] = [];
    const one = fakeHealth();
    createIpcNodeHealth({
      channel: { connected: false, send: (m) => sent.push(m), on: () => undefined, off: () => undefined },
      health: one.health,
      nodes: ["a"],
    });
    one.decide("a", "down");
    assert.deepEqual(sent, []);
  });

  it("recognises only well-formed verdicts", () => {
    assert.equal(isNodeVerdictMessage({ type: "ogw:node-verdict", node: "a", verdict: "up" }), true);
    assert.equal(isNodeVerdictMessage({ type: "ogw:node-verdict", node: 1, verdict: "up" }), false);
    assert.equal(isNodeVerdictMessage({ type: "ogw:slot-release", lease: 1 }), false);
    assert.equal(isNodeVerdictMessage(undefined), false);
  });
});
