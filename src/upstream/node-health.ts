import { isNodeDown } from "./network-errors.js";
import type { OllamaNode } from "./ollama-node.js";

/** Probe and circuit-breaker settings. */
export interface NodeHealthOptions {
  /** How often each node gets `GET /api/version`. */
  intervalMs: number;
  /** Timeout of one probe. */
  timeoutMs: number;
  /** Consecutive request failures (5xx, timeouts) that open a node's circuit. @default 5 */
  failureThreshold?: number;
  /** How long an open circuit stays open before a trial request may pass (half-open). @default 5000 */
  openMs?: number;
}

/** A node's circuit: closed (routable), open (not routable), half-open (routable on trial). */
export type CircuitState = "closed" | "open" | "half-open";

/** Called whenever a node's health flips. */
export type HealthListener = (node: string, healthy: boolean) => void;

/**
 * What one replica concluded about a node, in the form other replicas can act on: `"down"` = its
 * circuit opened (a refused connection, or the failure threshold), `"up"` = it closed after a
 * real success. Half-open is not a verdict: it is only permission to try.
 */
export type NodeVerdict = "down" | "up";

/**
 * Called when this replica's own evidence (a probe or traffic) opens or closes a circuit — never
 * for flips made by `applyRemote`, so that sharing verdicts cannot echo between replicas.
 */
export type VerdictListener = (node: string, verdict: NodeVerdict) => void;

/**
 * Whether each Ollama node can be routed to: a circuit breaker per node, fed
 * by active probes (`GET /api/version` on an interval: cheap, and it tells
 * the version) and by real traffic.
 *
 * - A refused connection (nothing listening, in traffic or in a probe) opens
 *   the circuit at once: the node is down, no need to count.
 * - Other failures (Ollama 5xx, broken streams, slow probes) open it after
 *   `failureThreshold` in a row; any success resets the count.
 * - After `openMs`, or as soon as a probe answers, an open circuit turns
 *   half-open: requests may go there again, the first success closes it and
 *   the first failure opens it again.
 *
 * "Healthy" everywhere (health service, GetStatus) means routable: closed or
 * half-open. Nodes start open until their first probe answers, so the
 * gateway never reports SERVING before it has reached Ollama.
 */
export interface NodeHealth {
  /** True when requests may be routed to the node (circuit closed or half-open). */
  isHealthy(node: string): boolean;
  /** The node's circuit state. */
  state(node: string): CircuitState;
  /** True when at least one node is healthy. */
  anyHealthy(): boolean;
  /** Ollama's version on the node, from its last successful probe. */
  version(node: string): string | undefined;
  /** Traffic to the node succeeded. */
  reportSuccess(node: string): void;
  /**
   * Traffic to the node failed: `unreachable` for connection-level failures
   * (open at once), otherwise an error that counts towards the threshold.
   */
  reportFailure(node: string, kind?: "unreachable" | "error"): void;
  /** Subscribes to flips of `isHealthy`; returns the unsubscribe function. */
  onChange(listener: HealthListener): () => void;
  /**
   * Subscribes to this replica's own verdicts (circuit opened / closed after a success), the
   * ones worth telling other replicas; returns the unsubscribe function.
   */
  onLocalVerdict(listener: VerdictListener): () => void;
  /**
   * Applies another replica's verdict, so a node it found down stops getting traffic here before
   * this replica's own probe or requests find out. `"down"` opens a routable circuit (openedAt =
   * now: it turns half-open after `openMs`, or when a probe here answers, as a local open does);
   * `"up"` turns an open circuit half-open, so traffic may try it (a real success here closes
   * it). Ignored for unknown nodes and for nodes this replica has not probed yet (its first
   * probe decides, so it never reports SERVING before reaching Ollama itself). Never reported
   * to `onLocalVerdict` listeners.
   */
  applyRemote(node: string, verdict: NodeVerdict): void;
  /** Probes every node now and resolves when all probes finished. */
  probeAll(): Promise<void>;
  /** Starts the probe timer (first probes run at once). */
  start(): void;
  /** Stops probing and aborts probes in flight. */
  stop(): void;
}

interface Circuit {
  state: CircuitState;
  failures: number;
  openedAt: number;
}

/** Creates the health tracker for a set of nodes. */
export function createNodeHealth(nodes: readonly OllamaNode[], options: NodeHealthOptions): NodeHealth {
  const threshold = options.failureThreshold ?? 5;
  const openMs = options.openMs ?? 5_000;
  const circuits = new Map<string, Circuit>(nodes.map((n) => [n.name, { state: "open", failures: 0, openedAt: 0 }]));
  const versions = new Map<string, string>();
  const listeners = new Set<HealthListener>();
  const verdictListeners = new Set<VerdictListener>();
  const stopper = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  let probing: Promise<void> | undefined;

  function routable(c: Circuit): boolean {
    if (c.state === "open" && c.openedAt > 0 && Date.now() - c.openedAt >= openMs) c.state = "half-open";
    return c.state !== "open";
  }

  /** Moves a circuit; `local` = on this replica's own evidence (then open/closed transitions are verdicts). */
  function move(node: string, next: CircuitState, local = true): void {
    const c = circuits.get(node);
    if (c === undefined) return;
    const before = routable(c);
    const previous = c.state;
    // The first probe's answer is this replica starting up, not news for the others.
    const initial = previous === "open" && c.openedAt === 0;
    if (next === "open") c.openedAt = Date.now();
    if (next !== "open") c.failures = 0;
    c.state = next;
    const after = routable(c);
    if (before !== after) for (const l of listeners) l(node, after);
    if (local && !initial && previous !== next && (next === "open" || next === "closed")) {
      for (const l of verdictListeners) l(node, next === "open" ? "down" : "up");
    }
  }

  function success(node: string): void {
    const c = circuits.get(node);
    if (c === undefined) return;
    c.failures = 0;
    if (c.state !== "closed") move(node, "closed");
  }

  function failure(node: string): void {
    const c = circuits.get(node);
    if (c === undefined) return;
    if (c.state === "half-open") return move(node, "open");
    c.failures++;
    if (c.failures >= threshold) move(node, "open");
  }

  async function probe(node: OllamaNode): Promise<void> {
    const signal = AbortSignal.any([stopper.signal, AbortSignal.timeout(options.timeoutMs)]);
    try {
      const answer = await node.call("GET", "/api/version", undefined, signal);
      const v = (answer as { version?: unknown } | undefined)?.version;
      if (typeof v === "string") versions.set(node.name, v.slice(0, 64));
      const c = circuits.get(node.name)!;
      // The node answers again: let traffic try it (a real success closes it).
      if (c.state === "open") move(node.name, c.openedAt === 0 ? "closed" : "half-open");
    } catch (e) {
      if (stopper.signal.aborted) return;
      // Nothing listening: down now. A slow or odd answer only counts
      // towards the threshold, so one late probe on a busy machine does
      // not take a working node out of service.
      if (isNodeDown(e) || circuits.get(node.name)!.openedAt === 0) move(node.name, "open");
      else failure(node.name);
    }
  }

  function probeAll(): Promise<void> {
    // One round at a time: a slow round is not stacked on by the timer.
    probing ??= Promise.all(nodes.map(probe)).then(() => {
      probing = undefined;
    });
    return probing;
  }

  return {
    isHealthy: (node) => {
      const c = circuits.get(node);
      return c !== undefined && routable(c);
    },
    state: (node) => {
      const c = circuits.get(node);
      if (c === undefined) return "open";
      routable(c);
      return c.state;
    },
    anyHealthy: () => {
      for (const c of circuits.values()) if (routable(c)) return true;
      return false;
    },
    version: (node) => versions.get(node),
    reportSuccess: success,
    reportFailure(node, kind = "unreachable") {
      if (kind === "unreachable") move(node, "open");
      else failure(node);
    },
    onChange(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    onLocalVerdict(listener) {
      verdictListeners.add(listener);
      return () => verdictListeners.delete(listener);
    },
    applyRemote(node, verdict) {
      const c = circuits.get(node);
      // Open and never opened by a failure: the first probe has not answered yet.
      if (c === undefined || (c.state === "open" && c.openedAt === 0)) return;
      const open = !routable(c);
      if (verdict === "down" && !open) move(node, "open", false);
      else if (verdict === "up" && open) move(node, "half-open", false);
    },
    probeAll,
    start() {
      if (timer) return;
      void probeAll();
      timer = setInterval(() => void probeAll(), options.intervalMs);
      timer.unref();
    },
    stop() {
      if (timer) clearInterval(timer);
      timer = undefined;
      stopper.abort();
    },
  };
}
