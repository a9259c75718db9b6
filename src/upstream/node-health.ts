import type { OllamaNode } from "./ollama-node.js";

/** Probe settings. */
export interface NodeHealthOptions {
  /** How often each node gets `GET /api/version`. */
  intervalMs: number;
  /** Timeout of one probe. */
  timeoutMs: number;
}

/** Called whenever a node's health flips. */
export type HealthListener = (node: string, healthy: boolean) => void;

/**
 * Whether each Ollama node answers, from active probes (`GET /api/version`
 * on an interval: cheap, and it tells the version) and passive reports from real
 * traffic (a refused connection marks a node down at once, without waiting
 * for the next probe). Nodes start unhealthy until their first answer, so
 * the gateway never reports SERVING before it has reached Ollama.
 */
export interface NodeHealth {
  /** True when the node answered its last probe or request. */
  isHealthy(node: string): boolean;
  /** True when at least one node is healthy. */
  anyHealthy(): boolean;
  /** Ollama's version on the node, from its last successful probe. */
  version(node: string): string | undefined;
  /** Traffic to the node succeeded. */
  reportSuccess(node: string): void;
  /** Traffic to the node failed at the connection level. */
  reportFailure(node: string): void;
  /** Subscribes to flips; returns the unsubscribe function. */
  onChange(listener: HealthListener): () => void;
  /** Probes every node now and resolves when all probes finished. */
  probeAll(): Promise<void>;
  /** Starts the probe timer (first probes run at once). */
  start(): void;
  /** Stops probing and aborts probes in flight. */
  stop(): void;
}

/** Creates the health tracker for a set of nodes. */
export function createNodeHealth(nodes: readonly OllamaNode[], options: NodeHealthOptions): NodeHealth {
  const healthy = new Map<string, boolean>(nodes.map((n) => [n.name, false]));
  const versions = new Map<string, string>();
  const listeners = new Set<HealthListener>();
  const stopper = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  let probing: Promise<void> | undefined;

  function set(node: string, value: boolean): void {
    if (!healthy.has(node) || healthy.get(node) === value) return;
    healthy.set(node, value);
    for (const l of listeners) l(node, value);
  }

  async function probe(node: OllamaNode): Promise<void> {
    const signal = AbortSignal.any([stopper.signal, AbortSignal.timeout(options.timeoutMs)]);
    try {
      const answer = await node.call("GET", "/api/version", undefined, signal);
      const v = (answer as { version?: unknown } | undefined)?.version;
      if (typeof v === "string") versions.set(node.name, v.slice(0, 64));
      set(node.name, true);
    } catch {
      if (!stopper.signal.aborted) set(node.name, false);
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
    isHealthy: (node) => healthy.get(node) === true,
    anyHealthy: () => {
      for (const v of healthy.values()) if (v) return true;
      return false;
    },
    version: (node) => versions.get(node),
    reportSuccess: (node) => set(node, true),
    reportFailure: (node) => set(node, false),
    onChange(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
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
