import type { SlotGate } from "./scheduler.js";
import type { SlotGrant, SlotRank, SlotTable } from "./slot-table.js";
import { slotKey, splitSlotKey } from "./slot-table.js";

/**
 * Slot accounting and admission order shared by the workers of one gateway (WORKERS > 1) without
 * Redis: each worker's scheduler asks the primary process over the cluster IPC channel, and the
 * primary's `SlotTable` grants or refuses atomically — the way replicas share slots through Redis
 * leases (README, "Several replicas"). A worker's scheduler still counts its own requests; this
 * gate is the gateway-wide check on top.
 *
 * A refused acquire carries its request's rank (priority, arrival, deadline) and leaves a waiter
 * in the primary; when a slot of that (node, model) frees, the primary hands it to the best waiter
 * of all the workers and sends that worker an `ogw:slot-grant`. The worker parks the grant, wakes
 * its scheduler (`onFree`), and the scheduler's next acquire of that key takes the parked slot
 * without a round trip; a grant nobody took by then (the request was cancelled, or placed on
 * another node) is given straight back, so the primary hands it on and no slot leaks.
 *
 * Never stalls a caller: if the primary does not answer within `timeoutMs` (or the channel is
 * gone), the slot is granted on this worker's own counting — as slot leases fall back to local
 * counting when Redis is unreachable — and one warning is logged per streak; a grant that arrives
 * after its timeout is given back at once so the primary's count stays true.
 */
export interface IpcSlotGate extends SlotGate {
  /** Calls `listener` when the primary handed this worker a slot it waited for (see above). Returns the unsubscribe. */
  onFree(listener: (node: string, model: string) => void): () => void;
  /** True while the primary answers (GetStatus `slots_shared`); false after a fallback until it answers again, or once closed. */
  shared(): boolean;
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
  /** The request's rank; with it, a refusal leaves a waiter in the primary. */
  readonly rank?: SlotRank | undefined;
  /**
   * A lease of the same (node, model) this worker gives back in the same breath (a request ended
   * and the next one here wants its slot): the primary hands that slot to the best waiter of all
   * the workers, this request included, instead of to another worker's waiter before this
   * request's rank is known.
   */
  readonly releasing?: number | undefined;
}

/** A worker gives a slot back. */
export interface SlotReleaseMessage {
  readonly type: "ogw:slot-release";
  /** The lease of the granted acquire (or of an `ogw:slot-grant`). */
  readonly lease: number;
}

/** The primary's answer to an acquire. */
export interface SlotAnswerMessage {
  readonly type: "ogw:slot-answer";
  /** The lease of the acquire answered. */
  readonly lease: number;
  /** True = the slot is held for the worker until it releases it (or exits). */
  readonly granted: boolean;
  /** The lease to release it by, when not `lease` (the slot given back with it went to this request). */
  readonly heldAs?: number | undefined;
}

/** The primary handed a freed slot to this worker's waiter: it is held under `lease` until released. */
export interface SlotGrantMessage {
  readonly type: "ogw:slot-grant";
  /** The primary's lease id for it (negative). */
  readonly lease: number;
  /** Node name. */
  readonly node: string;
  /** Canonical model name. */
  readonly model: string;
}

/** What a worker sends the primary about slots. */
export type SlotRequestMessage = SlotAcquireMessage | SlotReleaseMessage;

/** What the primary sends a worker about slots. */
export type SlotReplyMessage = SlotAnswerMessage | SlotGrantMessage;

/** One message the primary sends, and the worker it goes to. */
export interface SlotOutgoing {
  /** The worker (its cluster id). */
  readonly owner: number;
  readonly message: SlotReplyMessage;
}

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
  /** Longest wait for the primary's answer before granting on local counting, ms. @default 5000 */
  timeoutMs?: number;
  /** Where the fallback is reported (warn once per streak, info when answers come back). @default silent */
  log?: IpcSlotGateLog;
}

/** Logged (warn) once per streak of unanswered requests: workers may then together exceed a node's slots. */
export const IPC_SLOTS_LOCAL_MSG = "primary process did not answer a slot request, counting slots in this worker only";
/** Logged (info) when the primary answers again after a fallback. */
export const IPC_SLOTS_SHARED_AGAIN_MSG = "slot accounting shared through the primary process again";

/** Longest node or model name a slot message may carry (anything longer is not ours). */
const MAX_NAME = 1_024;

const isObject = (m: unknown): m is Record<string, unknown> => typeof m === "object" && m !== null;
const isLease = (v: unknown): v is number => Number.isSafeInteger(v);
const isName = (v: unknown): v is string => typeof v === "string" && v.length > 0 && v.length <= MAX_NAME;
const isTime = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v);

/** True for a well-formed rank (the channel is untrusted input shape-wise). */
function isRank(v: unknown): v is SlotRank {
  if (!isObject(v)) return false;
  return isTime(v["priority"]) && isTime(v["enqueuedAt"]) && (v["deadlineAt"] === undefined || isTime(v["deadlineAt"]));
}

/** True for an answer or grant of this protocol (the channel also carries node:cluster's own messages). */
function isReply(m: unknown): m is SlotReplyMessage {
  if (!isObject(m) || !isLease(m["lease"])) return false;
  if (m["type"] === "ogw:slot-answer")
    return typeof m["granted"] === "boolean" && (m["heldAs"] === undefined || isLease(m["heldAs"]));
  return m["type"] === "ogw:slot-grant" && isName(m["node"]) && isName(m["model"]);
}

/** True for a well-formed worker slot message, as the primary receives it. */
export function isSlotRequest(m: unknown): m is SlotRequestMessage {
  if (!isObject(m) || !isLease(m["lease"])) return false;
  if (m["type"] === "ogw:slot-release") return true;
  return (
    m["type"] === "ogw:slot-acquire" &&
    isName(m["node"]) &&
    isName(m["model"]) &&
    Number.isSafeInteger(m["limit"]) &&
    (m["rank"] === undefined || isRank(m["rank"])) &&
    (m["releasing"] === undefined || isLease(m["releasing"]))
  );
}

/** The grant messages for slots the table handed to waiters. */
export function grantMessages(grants: readonly SlotGrant[]): SlotOutgoing[] {
  return grants.map((g) => ({
    owner: g.owner,
    message: { type: "ogw:slot-grant", lease: g.lease, ...splitSlotKey(g.key) },
  }));
}

/**
 * The primary's side: applies one message of worker `owner` to the table and returns what to
 * send: the answer to an acquire, and a grant for every waiter a released slot was handed to.
 */
export function answerSlotRequest(
  table: SlotTable,
  owner: number,
  m: SlotRequestMessage,
  now = Date.now(),
): SlotOutgoing[] {
  if (m.type === "ogw:slot-release") return grantMessages(table.release(owner, m.lease, now));
  const key = slotKey(m.node, m.model);
  // Waits (when refused) before the slot given back with it frees, so it competes for that slot.
  const granted = table.acquire(owner, m.lease, key, m.limit, m.rank);
  const answer = (heldAs?: number): SlotOutgoing => ({
    owner,
    message:
      heldAs === undefined
        ? { type: "ogw:slot-answer", lease: m.lease, granted: granted || heldAs !== undefined }
        : { type: "ogw:slot-answer", lease: m.lease, granted: true, heldAs },
  });
  if (m.releasing === undefined) return [answer()];
  const grants = table.release(owner, m.releasing, now);
  const mine = granted ? undefined : grants.find((g) => g.owner === owner && g.key === key);
  return [answer(mine?.lease), ...grantMessages(grants.filter((g) => g !== mine))];
}

const NO_SLOT_TO_RETURN = { release: (): Promise<void> => Promise.resolve() };

/** Creates the worker side of the gate. */
export function createIpcSlotGate(options: IpcSlotGateOptions): IpcSlotGate {
  const { channel, log } = options;
  const timeoutMs = options.timeoutMs ?? 5_000;
  let nextLease = 1;
  let closed = false;
  let fellBack = false;
  /** Acquires waiting for their answer. */
  const pending = new Map<number, (granted: boolean, heldAs?: number) => void>();
  /** Per key: slots the primary handed this worker's waiter, not taken yet. */
  const parked = new Map<string, number[]>();
  const freeListeners = new Set<(node: string, model: string) => void>();

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
  /**
   * Releases of held slots not sent yet, lease → key: sent at the end of the current tick, unless
   * an acquire of the same key made in the same tick carries one along (`releasing`).
   */
  const releasing = new Map<number, string>();
  let flushing = false;
  const flush = (): void => {
    flushing = false;
    for (const lease of releasing.keys()) release(lease);
    releasing.clear();
  };

  /** A slot of `key` held under `lease`, given back once. */
  const held = (lease: number, key: string): { release(): Promise<void> } => {
    let released = false;
    return {
      release() {
        if (!released) {
          released = true;
          releasing.set(lease, key);
          if (!flushing) {
            flushing = true;
            queueMicrotask(flush);
          }
        }
        return Promise.resolve();
      },
    };
  };

  /** Takes a release of `key` not sent yet, to send it along with an acquire of the same key. */
  const takeRelease = (key: string): number | undefined => {
    for (const [lease, k] of releasing) {
      if (k === key) {
        releasing.delete(lease);
        return lease;
      }
    }
    return undefined;
  };

  const unpark = (key: string, lease: number): boolean => {
    const leases = parked.get(key);
    const i = leases?.indexOf(lease) ?? -1;
    if (leases === undefined || i === -1) return false;
    leases.splice(i, 1);
    if (leases.length === 0) parked.delete(key);
    return true;
  };

  const onGrant = (m: SlotGrantMessage): void => {
    if (closed) return release(m.lease);
    const key = slotKey(m.node, m.model);
    const leases = parked.get(key);
    if (leases) leases.push(m.lease);
    else parked.set(key, [m.lease]);
    // After the messages and continuations already due (a refusal's clean-up among them), so the
    // scheduler is free to place its head when woken.
    setImmediate(() => {
      for (const listener of [...freeListeners]) {
        try {
          listener(m.node, m.model);
        } catch {
          // a listener's failure must not keep the slot
        }
      }
      // Not taken by the wake-up: nobody here wants it now; the primary hands it on.
      if (unpark(key, m.lease)) release(m.lease);
    });
  };

  const onMessage = (m: unknown): void => {
    if (!isReply(m)) return;
    if (m.type === "ogw:slot-grant") return onGrant(m);
    const waiter = pending.get(m.lease);
    if (waiter) {
      pending.delete(m.lease);
      waiter(m.granted, m.heldAs);
    } else if (m.granted) {
      // Its caller stopped waiting and counted locally: the primary must not keep the slot.
      release(m.heldAs ?? m.lease);
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
    tryAcquire(node, model, limit, rank) {
      const key = slotKey(node, model);
      const waiting = parked.get(key)?.[0];
      if (waiting !== undefined && unpark(key, waiting)) return Promise.resolve(held(waiting, key));
      const lease = nextLease++;
      const along = takeRelease(key);
      const m: SlotAcquireMessage = {
        type: "ogw:slot-acquire",
        lease,
        node,
        model,
        limit,
        ...(rank ? { rank } : {}),
        ...(along !== undefined ? { releasing: along } : {}),
      };
      if (!send(m)) return Promise.resolve(fallBack(node, model));
      return new Promise((resolve) => {
        const timer = setTimeout(() => {
          pending.delete(lease);
          resolve(fallBack(node, model));
        }, timeoutMs);
        pending.set(lease, (granted, heldAs) => {
          clearTimeout(timer);
          if (fellBack) {
            fellBack = false;
            log?.info({ node, model }, IPC_SLOTS_SHARED_AGAIN_MSG);
          }
          resolve(granted ? held(heldAs ?? lease, key) : undefined);
        });
      });
    },
    onFree(listener) {
      freeListeners.add(listener);
      return () => {
        freeListeners.delete(listener);
      };
    },
    shared: () => !closed && !fellBack && channel.connected,
    close() {
      flush();
      for (const leases of parked.values()) for (const lease of leases) release(lease);
      parked.clear();
      closed = true;
      channel.off("message", onMessage);
      for (const [lease, waiter] of pending) {
        pending.delete(lease);
        waiter(true);
      }
    },
  };
}
