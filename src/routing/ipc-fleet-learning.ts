import type { FleetState } from "./fleet-state.js";
import type { NodeLearning } from "./shared-learning.js";
import { isNodeLearning, mergeCapacity, mergeSlots, nodeLearning, sameLearning } from "./shared-learning.js";

/**
 * What the workers of one gateway (WORKERS > 1) learn about the nodes, shared through the primary
 * process the way node-health verdicts are (`ipc-node-health.ts`; README, "Several replicas"):
 * whenever this worker's picture of a node changes (a /api/ps read, a confirmed load, slots
 * lowered), what it learned (`shared-learning.ts`) is sent to the primary, which passes it on to
 * the other workers; they merge it into their own picture, so one worker's eviction or slot wait
 * spares the others theirs. Best effort and idempotent: news is only sent when it differs from
 * what was last sent or applied for that node, applying it twice changes nothing, and a lost
 * message only means a worker learns it on its own.
 */
export interface IpcFleetLearning {
  /** The fleet state to give the scheduler: the same one, reporting what it learns. */
  readonly fleet: FleetState;
  /** Stops sending and applying news. */
  close(): void;
}

/** News about one node on the IPC channel (worker → primary → the other workers). */
export interface FleetLearningMessage {
  readonly type: "ogw:fleet-learning";
  readonly learning: NodeLearning;
}

/** The worker's end of the IPC channel (`process` in a cluster worker). */
export interface LearningChannel {
  /** False once the channel to the primary is closed. */
  readonly connected: boolean;
  send(message: FleetLearningMessage): unknown;
  on(event: "message", listener: (message: unknown) => void): unknown;
  off(event: "message", listener: (message: unknown) => void): unknown;
}

/** Options of the worker side. */
export interface IpcFleetLearningOptions {
  /** The channel to the primary; `process` in a worker. */
  channel: LearningChannel;
  /** This worker's fleet state. */
  fleet: FleetState;
  /** Where applied news is reported (info). @default silent */
  log?: { info(obj: object, msg: string): void };
}

/** Logged (info) when another worker's news changed this worker's picture of a node. */
export const WORKER_LEARNING_MSG = "node capacity or slots learned by another worker applied";

/** True for well-formed news (the channel also carries node:cluster's own messages, and is untrusted in shape). */
export function isFleetLearningMessage(m: unknown): m is FleetLearningMessage {
  return (
    typeof m === "object" &&
    m !== null &&
    (m as { type?: unknown }).type === "ogw:fleet-learning" &&
    isNodeLearning((m as { learning?: unknown }).learning)
  );
}

/** Starts sharing what `fleet` learns with the other workers through the primary. */
export function createIpcFleetLearning(options: IpcFleetLearningOptions): IpcFleetLearning {
  const { channel, fleet, log } = options;
  /** Per node: what was last sent or applied. */
  const last = new Map<string, NodeLearning>();
  let closed = false;

  const publish = (): void => {
    if (closed || !channel.connected) return;
    for (const s of fleet.nodes) {
      const news = nodeLearning(s.node.name, s.capacity, s.slotLearning);
      if (sameLearning(last.get(s.node.name), news)) continue;
      last.set(s.node.name, news);
      try {
        channel.send({ type: "ogw:fleet-learning", learning: news });
      } catch {
        // The primary is gone: this worker learns alone, as without sharing.
        return;
      }
    }
  };

  const onMessage = (m: unknown): void => {
    if (closed || !isFleetLearningMessage(m)) return;
    const news = m.learning;
    const state = fleet.get(news.node);
    if (state === undefined) return;
    const capacity = mergeCapacity(state.capacity, news);
    const slots = mergeSlots(state.slotLearning, news);
    const changed = capacity !== state.capacity || slots !== undefined;
    state.capacity = capacity;
    if (slots !== undefined) {
      state.slotLearning = slots;
      for (const [model, l] of slots) if (l.slots < l.configured) state.slotLimits.set(model, l.slots);
    }
    last.set(news.node, nodeLearning(news.node, state.capacity, state.slotLearning));
    if (changed) {
      log?.info(
        {
          node: news.node,
          overflowBytes: news.overflowBytes,
          learnedMaxLoaded: news.learnedMaxLoaded,
          slots: news.slots.map((l) => ({ model: l.model, slots: l.slots })),
        },
        WORKER_LEARNING_MSG,
      );
    }
  };
  channel.on("message", onMessage);

  const reporting: FleetState = {
    ...fleet,
    nodes: fleet.nodes,
    sync(node, loaded) {
      fleet.sync(node, loaded);
      publish();
    },
    loadObserved(state, model, after) {
      const change = fleet.loadObserved(state, model, after);
      publish();
      return change;
    },
    observeSlots(state, model, sample) {
      const lowered = fleet.observeSlots(state, model, sample);
      if (lowered !== undefined) publish();
      return lowered;
    },
  };

  return {
    fleet: reporting,
    close() {
      closed = true;
      channel.off("message", onMessage);
    },
  };
}
