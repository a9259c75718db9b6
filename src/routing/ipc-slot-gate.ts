import type { SlotGate } from "./scheduler.js";
import type { SlotTable } from "./slot-table.js";
import { slotKey } from "./slot-table.js";

/**
 * Slot accounting shared by the workers of one gateway (WORKERS > 1) without Redis: each worker's
 * scheduler asks the primary process over the cluster IPC channel, and the primary's `SlotTable`
 * grants or refuses atomically — the way replicas share slots through Redis leases (README,
 * "Several replicas"). A worker's scheduler still counts its own requests; this gate is the
 * gateway-wide check on top.
 *
 * Never stalls a caller: if the primary does not answer within `timeoutMs` (or the channel is
 * gone), the slot is granted on this worker's own counting — as slot leases fall back to local
 * counting when Redis is unreachable — and one warning is logged per streak; a grant that arrives
 * after its timeout is given back at once so the primary's count stays true.
 */
export interface IpcSlotGate extends SlotGate {
  /** Stops listening to the channel; later calls grant on local counting. */
  close(): void;
}

/** A worker asks for a slot. */
export interface SlotAcquireMessage {
  readonly type: "ogw:slot-acquire";
  /** The worker's id for this request (unique within the worker; the primary keys by worker too). */
  readonly lease: number;
  /** Node name. */
  readonly node: string;
  /** Canonical model name. */
  readonly model: string;
  /** The node's slots for the model, as this worker's scheduler knows them. */
  readonly limit: number;
}

/** A worker gives a slot back. */
export interface SlotReleaseMessage {
  readonly type: "ogw:slot-release";
  /** The lease of the granted acquire. */
  readonly lease: number;
}

/** The primary's answer to an acquire. */
export interface SlotAnswerMessage {
  readonly type: "ogw:slot-answer";
  /** The lease of the acquire answered. */
  readonly lease: number;
  /** True = the slot is held for the worker until it releases it (or exits). */
  readonly granted: boolean;
}

/** What a worker sends the primary about slots. */
export type SlotRequestMessage = SlotAcquireMessage | SlotReleaseMessage;

/** The worker's end of the IPC channel (`process` in a cluster worker). */
export interface IpcChannel {
  /** False once the channel to the primary is closed. */
  readonly connected: boolean;
  send(message: SlotRequestMessage): unknown;
  on(event: "message", listener: (message: unknown) => void): unknown;
  off(event: "message", listener: (message: unknown) => void): unknown;
}

/** Where the gate reports falling back to local counting and recovering. */
export interface IpcSlotGateLog {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

/** Options of the worker side. */
export interface IpcSlotGateOptions {
  /** The channel to the primary; `process` in a worker. */
  channel: IpcChannel;
  /** Longest wait for the primary's answer before granting on local counting, ms. @default 1000 */
  timeoutMs?: number;
  /** Where the fallback is reported (warn once per streak, info when answers come back). @default silent */
  log?: IpcSlotGateLog;
}

/** Logged (warn) once per streak of unanswered requests: workers may then together exceed a node's slots. */
export const IPC_SLOTS_LOCAL_MSG = "primary process did not answer a slot request, counting slots in this worker only";
/** Logged (info) when the primary answers again after a fallback. */
export const IPC_SLOTS_SHARED_AGAIN_MSG = "slot accounting shared through the primary process again";

/** True for a message this protocol understands (the channel also carries node:cluster's own). */
function isAnswer(m: unknown): m is SlotAnswerMessage {
  return typeof m === "object" && m !== null && (m as { type?: unknown }).type === "ogw:slot-answer";
}

/** True for a worker's slot message, as the primary receives it. */
export function isSlotRequest(m: unknown): m is SlotRequestMessage {
  if (typeof m !== "object" || m === null) return false;
  const type = (m as { type?: unknown }).type;
  return type === "ogw:slot-acquire" || type === "ogw:slot-release";
}

/**
 * The primary's side: applies one worker message to the table and returns the answer to send
 * back (acquire), or undefined (release).
 */
export function answerSlotRequest(
  table: SlotTable,
  owner: number,
  m: SlotRequestMessage,
): SlotAnswerMessage | undefined {
  if (m.type === "ogw:slot-release") {
    table.release(owner, m.lease);
    return undefined;
  }
  const granted = table.acquire(owner, m.lease, slotKey(m.node, m.model), m.limit);
  return { type: "ogw:slot-answer", lease: m.lease, granted };
}

const NO_SLOT_TO_RETURN = { release: (): Promise<void> => Promise.resolve() };

/** Creates the worker side of the gate. */
export function createIpcSlotGate(options: IpcSlotGateOptions): IpcSlotGate {
  const { channel, log } = options;
  const timeoutMs = options.timeoutMs ?? 1_000;
  let nextLease = 1;
  let closed = false;
  let fellBack = false;
  /** Acquires waiting for their answer. */
  const pending = new Map<number, (granted: boolean) => void>();

  const send = (m: SlotRequestMessage): boolean => {
    if (closed || !channel.connected) return false;
    try {
      channel.send(m);
      return true;
    } catch {
      return false;
    }
  };
  const release = (lease: number): void => void send({ type: "ogw:slot-release", lease });

  const onMessage = (m: unknown): void => {
    if (!isAnswer(m)) return;
    const waiter = pending.get(m.lease);
    if (waiter) {
      pending.delete(m.lease);
      waiter(m.granted);
    } else if (m.granted) {
      // Its caller stopped waiting and counted locally: the primary must not keep the slot.
      release(m.lease);
    }
  };
  channel.on("message", onMessage);

  const fallBack = (node: string, model: string): { release(): Promise<void> } => {
    if (!fellBack) {
      fellBack = true;
      log?.warn({ node, model, timeoutMs }, IPC_SLOTS_LOCAL_MSG);
    }
    return NO_SLOT_TO_RETURN;
  };

  return {
    tryAcquire(node, model, limit) {
      const lease = nextLease++;
      if (!send({ type: "ogw:slot-acquire", lease, node, model, limit })) return Promise.resolve(fallBack(node, model));
      return new Promise((resolve) => {
        const timer = setTimeout(() => {
          pending.delete(lease);
          resolve(fallBack(node, model));
        }, timeoutMs);
        pending.set(lease, (granted) => {
          clearTimeout(timer);
          if (fellBack) {
            fellBack = false;
            log?.info({ node, model }, IPC_SLOTS_SHARED_AGAIN_MSG);
          }
          if (!granted) return resolve(undefined);
          let released = false;
          resolve({
            release() {
              if (!released) {
                released = true;
                release(lease);
              }
              return Promise.resolve();
            },
          });
        });
      });
    },
    close() {
      closed = true;
      channel.off("message", onMessage);
      for (const [lease, waiter] of pending) {
        pending.delete(lease);
        waiter(true);
      }
    },
  };
}
