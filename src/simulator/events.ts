/**
 * Typed events the simulator emits so tests can observe what the "Ollama node" saw: requests,
 * client disconnects (with a high-resolution timestamp), model loads and unloads.
 */

/** A request arrived (admin routes excluded). */
export interface RequestEvent {
  readonly method: string;
  readonly path: string;
  /** Model string as sent, if the body named one. */
  readonly model?: string;
  /**
   * The raw request body exactly as received (absent for GET/HEAD and unknown routes), so tests
   * can assert on the JSON a gateway sent, e.g. `JSON.parse(e.body.toString("utf8"))`. The buffer
   * is the simulator's own: read it, do not modify it.
   */
  readonly body?: Buffer;
  /** The W3C `traceparent` header it came with, if any (a traced gateway sends its client span's). */
  readonly traceparent?: string;
  readonly at: number;
}

/** A client closed the connection before the response finished. */
export interface DisconnectEvent {
  readonly path: string;
  readonly model?: string;
  /** `performance.now()` when the simulator noticed the close. */
  readonly at: number;
  /** Tokens (or stream lines) this request had emitted when it was cut. */
  readonly tokens: number;
}

/** A model runner started loading. */
export interface LoadEvent {
  readonly model: string;
  readonly numCtx: number;
  readonly at: number;
}

/** Why a runner went away. */
export type UnloadReason = "expired" | "requested" | "evicted" | "reload" | "shutdown";

/** A model runner was unloaded. */
export interface UnloadEvent {
  readonly model: string;
  readonly reason: UnloadReason;
  readonly at: number;
}

/** Event name → payload. */
export interface SimulatorEventMap {
  request: RequestEvent;
  disconnect: DisconnectEvent;
  load: LoadEvent;
  unload: UnloadEvent;
}

/** Subscribe side of the simulator's events. */
export interface SimulatorEvents {
  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof SimulatorEventMap>(type: K, listener: (event: SimulatorEventMap[K]) => void): () => void;
  /** Removes a listener added with `on`. */
  off<K extends keyof SimulatorEventMap>(type: K, listener: (event: SimulatorEventMap[K]) => void): void;
  /** Like EventEmitter's `once`: calls the listener for the next event only; returns a remover. */
  once<K extends keyof SimulatorEventMap>(type: K, listener: (event: SimulatorEventMap[K]) => void): () => void;
  /** Resolves with the next event that passes `filter`; rejects when the signal aborts. */
  next<K extends keyof SimulatorEventMap>(
    type: K,
    options?: { filter?: (event: SimulatorEventMap[K]) => boolean; signal?: AbortSignal },
  ): Promise<SimulatorEventMap[K]>;
}

/** Emit side, kept internal to the simulator. */
export interface EventHub extends SimulatorEvents {
  emit<K extends keyof SimulatorEventMap>(type: K, event: SimulatorEventMap[K]): void;
}

type AnyListener = (event: never) => void;

/** Creates an event hub; a throwing listener is reported asynchronously, never breaks the simulator. */
export function createEventHub(): EventHub {
  const listeners = new Map<keyof SimulatorEventMap, Set<AnyListener>>();
  const hub: EventHub = {
    on(type, listener) {
      let set = listeners.get(type);
      if (!set) {
        set = new Set();
        listeners.set(type, set);
      }
      set.add(listener as AnyListener);
      return () => hub.off(type, listener);
    },
    off(type, listener) {
      listeners.get(type)?.delete(listener as AnyListener);
    },
    once(type, listener) {
      const off = hub.on(type, (event) => {
        off();
        listener(event);
      });
      return off;
    },
    next(type, options = {}) {
      const { filter, signal } = options;
      return new Promise((resolve, reject) => {
        const reason = (): Error => (signal?.reason instanceof Error ? signal.reason : new Error("aborted"));
        if (signal?.aborted) {
          reject(reason());
          return;
        }
        const onAbort = (): void => {
          off();
          reject(reason());
        };
        const off = hub.on(type, (event) => {
          if (filter && !filter(event)) return;
          off();
          signal?.removeEventListener("abort", onAbort);
          resolve(event);
        });
        signal?.addEventListener("abort", onAbort, { once: true });
      });
    },
    emit(type, event) {
      const set = listeners.get(type);
      if (!set) return;
      for (const listener of [...set]) {
        try {
          (listener as (e: typeof event) => void)(event);
        } catch (error) {
          queueMicrotask(() => {
            throw error;
          });
        }
      }
    },
  };
  return hub;
}
