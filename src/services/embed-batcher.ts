import { deriveSignalFromAll } from "../util/signal-lineage.js";
import type { Urgency } from "./failover.js";
import type { OllamaBody } from "./ollama-request.js";

/** Micro-batching settings. */
export interface EmbedBatcherOptions {
  /** How long the first request of a batch waits for company, ms; 0 = no batching. */
  windowMs: number;
  /** A batch is sent at once when it reaches this many inputs. @default 256 */
  maxInputs: number;
  /**
   * Sends one /api/embed body (choosing the node, holding its slot) and
   * returns Ollama's answer and what it cost. `urgency` is the batch's: see `batchUrgency`.
   */
  send(body: OllamaBody, signal: AbortSignal, urgency: Urgency): Promise<EmbedAnswer>;
  /** True for errors that belong to the inputs (Ollama rejected the request), not to the node. */
  isRejection(e: unknown): boolean;
}

/** Ollama's answer to one /api/embed, with where it was served. */
export interface EmbedAnswer {
  /** The parsed body. */
  raw: unknown;
  /** The node that served it. */
  node: string;
  /** Time the batch waited for a slot, ms. */
  queueMs: number;
}

/** One caller's share of a batched /api/embed answer. */
export interface EmbedShare {
  /** The caller's vectors, in its input order. */
  vectors: unknown[];
  /** The batch's answer with `prompt_eval_count` scaled to this caller's share of the text. */
  raw: Record<string, unknown>;
  /** The node that served the batch. */
  node: string;
  /** Time the batch waited for a slot, ms. */
  queueMs: number;
}

/**
 * Merges concurrent Embed calls that would send the same request options
 * into one upstream /api/embed (one slot on one node), then splits the vectors back
 * in order. Ollama loads embedding models with one slot, so one request of
 * 64 inputs costs far less than 64 queued requests.
 *
 * A call goes out at once when no call with the same key is in flight, so a
 * lone request never waits; calls that arrive while one is in flight wait
 * up to `windowMs` to be sent together.
 *
 * A batch is admitted as urgently as its most urgent caller (see `batchUrgency`); a lone call
 * with exactly its own priority and deadline.
 *
 * A caller that cancels, or whose deadline passes, leaves its batch at once (waiting or in
 * flight) without cancelling the others; the upstream call is aborted only when every caller in
 * it is gone. When a batch
 * with several callers is rejected by Ollama (400, e.g. one input too long),
 * each caller is retried alone so the error reaches only the caller it
 * belongs to. Other failures (node down, busy) reach every caller.
 */
export interface EmbedBatcher {
  /**
   * Embeds `inputs` with `body`'s options (its `input` is replaced). `signal` is the caller's
   * (cancel, deadline); `urgency` its priority and time left.
   */
  embed(body: OllamaBody, inputs: readonly string[], signal: AbortSignal, urgency: Urgency): Promise<EmbedShare>;
}

interface Member {
  inputs: readonly string[];
  signal: AbortSignal;
  urgency: Urgency;
  resolve(share: EmbedShare): void;
  reject(e: unknown): void;
  /** Stops listening for the member leaving a waiting batch. */
  detach?: () => void;
}

interface Batch {
  key: string;
  body: OllamaBody;
  members: Member[];
  inputs: number;
  timer: NodeJS.Timeout | undefined;
}

/** Creates a batcher; with `windowMs` 0 every call goes straight upstream. */
export function createEmbedBatcher(options: EmbedBatcherOptions): EmbedBatcher {
  const open = new Map<string, Batch>();
  const inFlight = new Map<string, number>();

  async function tracked(key: string, body: OllamaBody, members: Member[]): Promise<void> {
    inFlight.set(key, (inFlight.get(key) ?? 0) + 1);
    try {
      await run(body, members);
    } finally {
      const n = (inFlight.get(key) ?? 1) - 1;
      if (n === 0) inFlight.delete(key);
      else inFlight.set(key, n);
    }
  }

  function send(batch: Batch): void {
    if (open.get(batch.key) === batch) open.delete(batch.key);
    if (batch.timer) clearTimeout(batch.timer);
    for (const m of batch.members) m.detach?.();
    void tracked(batch.key, batch.body, batch.members);
  }

  async function run(body: OllamaBody, members: Member[]): Promise<void> {
    const live = members.filter((m) => !m.signal.aborted);
    for (const m of members) if (m.signal.aborted) m.reject(m.signal.reason);
    if (live.length === 0) return;
    // Distinct texts once; each member maps its inputs onto them.
    const texts = [...new Set(live.flatMap((m) => m.inputs))];
    const controller = new AbortController();
    // The batch's upstream work counts as its first caller's (its spans go under that call).
    // Observers (tracing) find every call this request serves from its signal.
    deriveSignalFromAll(controller.signal, live);
    let remaining = live.length;
    // A caller that leaves is answered at once; the others' request goes on without it.
    const listeners = live.map((m) => ({
      signal: m.signal,
      leave: (): void => {
        m.reject(m.signal.reason);
        if (--remaining === 0) controller.abort(m.signal.reason);
      },
    }));
    for (const l of listeners) l.signal.addEventListener("abort", l.leave, { once: true });
    try {
      const answer = await options.send({ ...body, input: texts }, controller.signal, batchUrgency(live));
      const raw = answer.raw;
      const obj = (typeof raw === "object" && raw !== null ? raw : {}) as Record<string, unknown>;
      const vectors = obj["embeddings"];
      if (!Array.isArray(vectors) || vectors.length !== texts.length) {
        // Let the caller's shape check report it.
        for (const m of live)
          m.resolve({
            vectors: Array.isArray(vectors) ? vectors : [],
            raw: obj,
            node: answer.node,
            queueMs: answer.queueMs,
          });
        return;
      }
      const index = new Map(texts.map((t, i) => [t, i]));
      const totalChars = texts.reduce((n, t) => n + t.length, 0) || 1;
      const tokens = typeof obj["prompt_eval_count"] === "number" ? obj["prompt_eval_count"] : 0;
      for (const m of live) {
        const chars = m.inputs.reduce((n, t) => n + t.length, 0);
        m.resolve({
          vectors: m.inputs.map((t) => vectors[index.get(t)!]),
          raw: { ...obj, embeddings: undefined, prompt_eval_count: Math.round((tokens * chars) / totalChars) },
          node: answer.node,
          queueMs: answer.queueMs,
        });
      }
    } catch (e) {
      if (live.length > 1 && options.isRejection(e)) {
        // One bad input must not fail its neighbours: retry each caller alone.
        await Promise.all(live.map((m) => run(body, [m])));
      } else {
        for (const m of live) m.reject(e);
      }
    } finally {
      for (const l of listeners) l.signal.removeEventListener("abort", l.leave);
    }
  }

  return {
    embed(body, inputs, signal, urgency) {
      return new Promise<EmbedShare>((resolve, reject) => {
        const member: Member = { inputs, signal, urgency, resolve, reject };
        if (options.windowMs <= 0) return void run(body, [member]);
        const key = JSON.stringify(body);
        if (!inFlight.has(key) && !open.has(key)) return void tracked(key, body, [member]);
        let batch = open.get(key);
        if (batch === undefined) {
          const created: Batch = { key, body, members: [], inputs: 0, timer: undefined };
          created.timer = setTimeout(() => send(created), options.windowMs);
          open.set(key, created);
          batch = created;
        }
        const b = batch;
        b.members.push(member);
        b.inputs += inputs.length;
        // A caller that leaves while the batch waits is answered at once and
        // its inputs are not sent.
        const onAbort = (): void => {
          const i = b.members.indexOf(member);
          if (i === -1 || open.get(key) !== b) return;
          b.members.splice(i, 1);
          b.inputs -= inputs.length;
          reject(signal.reason);
          if (b.members.length === 0) {
            if (b.timer) clearTimeout(b.timer);
            open.delete(key);
          }
        };
        signal.addEventListener("abort", onAbort, { once: true });
        member.detach = () => signal.removeEventListener("abort", onAbort);
        if (b.inputs >= options.maxInputs) send(b);
      });
    },
  };
}

/**
 * The urgency a batch asks the scheduler for: the highest priority and the longest time left
 * among its members still waiting. A batch serves all its members, so it must neither wait
 * behind work its most urgent member would overtake, nor be refused (`DEADLINE_TOO_SHORT`) while
 * one member could still be served in time; a member with less time left than that leaves the
 * batch when its own deadline passes, and the others go on. Read at each admission, so members
 * that left no longer count; a lone call gets exactly its own priority and deadline.
 */
export function batchUrgency(members: readonly { signal: AbortSignal; urgency: Urgency }[]): Urgency {
  // A lone call (the common case) is exactly its own urgency: nothing to combine.
  if (members.length === 1) return members[0]!.urgency;
  // Loops, not filter/map/spread: asked on every admission try of every batch.
  const most = (of: (u: Urgency) => number): number => {
    let waiting = Number.NEGATIVE_INFINITY;
    let all = Number.NEGATIVE_INFINITY;
    for (const m of members) {
      const v = of(m.urgency);
      if (v > all) all = v;
      if (!m.signal.aborted && v > waiting) waiting = v;
    }
    return waiting === Number.NEGATIVE_INFINITY ? all : waiting;
  };
  return {
    priority: () => most((u) => u.priority()),
    remainingMs: () => most((u) => u.remainingMs()),
  };
}
