import type { NodeHealth, NodeVerdict } from "../upstream/node-health.js";

/**
 * Node health shared by the workers of one gateway (WORKERS > 1) without Redis: a circuit one
 * worker opens (or closes after a real success) is sent to the primary process over the cluster
 * IPC channel, which passes it on to the other workers, and they apply it with `applyRemote` —
 * as replicas do through Redis (`shared-node-health.ts`; README, "Several replicas"). Remote
 * verdicts never produce a verdict themselves, so nothing echoes. Best effort: a lost message only
 * means a worker judges alone until its own probe or traffic tells it.
 */
export interface IpcNodeHealth {
  /** Stops sending and applying verdicts. */
  close(): void;
}

/** A verdict on the IPC channel (worker → primary → the other workers). */
export interface NodeVerdictMessage {
  readonly type: "ogw:node-verdict";
  readonly node: string;
  readonly verdict: NodeVerdict;
}

/** The worker's end of the IPC channel (`process` in a cluster worker). */
export interface VerdictChannel {
  /** False once the channel to the primary is closed. */
  readonly connected: boolean;
  send(message: NodeVerdictMessage): unknown;
  on(event: "message", listener: (message: unknown) => void): unknown;
  off(event: "message", listener: (message: unknown) => void): unknown;
}

/** Options of the worker side. */
export interface IpcNodeHealthOptions {
  /** The channel to the primary; `process` in a worker. */
  channel: VerdictChannel;
  /** This worker's circuit breakers: its verdicts are sent, the others' applied to it. */
  health: Pick<NodeHealth, "onLocalVerdict" | "applyRemote" | "state">;
  /** Names of the configured nodes; verdicts about any other node are ignored. */
  nodes: readonly string[];
  /** Where applied verdicts are reported (info). @default silent */
  log?: { info(obj: object, msg: string): void };
}

/** Logged (info) when another worker's verdict changed a circuit here. */
export const WORKER_VERDICT_MSG = "node health verdict from another worker applied";

/** True for a verdict message (the channel also carries node:cluster's own and slot messages). */
export function isNodeVerdictMessage(m: unknown): m is NodeVerdictMessage {
  if (typeof m !== "object" || m === null) return false;
  const { type, node, verdict } = m as { type?: unknown; node?: unknown; verdict?: unknown };
  return type === "ogw:node-verdict" && typeof node === "string" && (verdict === "down" || verdict === "up");
}

/** Starts sharing `health` with the other workers through the primary. */
export function createIpcNodeHealth(options: IpcNodeHealthOptions): IpcNodeHealth {
  const { channel, health, log } = options;
  const known = new Set(options.nodes);
  let closed = false;

  const onMessage = (m: unknown): void => {
    if (closed || !isNodeVerdictMessage(m) || !known.has(m.node)) return;
    const before = health.state(m.node);
    health.applyRemote(m.node, m.verdict);
    const after = health.state(m.node);
    if (after !== before) log?.info({ node: m.node, verdict: m.verdict, circuit: after }, WORKER_VERDICT_MSG);
  };
  channel.on("message", onMessage);

  const stopListening = health.onLocalVerdict((node, verdict) => {
    if (closed || !channel.connected) return;
    try {
      channel.send({ type: "ogw:node-verdict", node, verdict });
    } catch {
      // The primary is gone: this worker judges alone, as without sharing.
    }
  });

  return {
    close() {
      closed = true;
      stopListening();
      channel.off("message", onMessage);
    },
  };
}
