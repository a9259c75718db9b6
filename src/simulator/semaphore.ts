/**
 * A FIFO counting semaphore with abortable waits: one per loaded model, sized NUM_PARALLEL,
 * with unbounded waiters exactly like the Go runner's weighted semaphore.
 */
import { abortError } from "./errors.js";

/** Counting semaphore whose waiters are served first-in first-out. */
export interface Semaphore {
  /** Waits for a permit; resolves to an idempotent release function. Rejects with AbortError on abort. */
  acquire(signal?: AbortSignal): Promise<() => void>;
  /** Permits currently held. */
  readonly held: number;
  /** Callers currently waiting. */
  readonly waiting: number;
}

/** Creates a semaphore with `size` permits (minimum 1). */
export function createSemaphore(size: number): Semaphore {
  const capacity = Math.max(1, Math.floor(size));
  let held = 0;
  const waiters: Array<{ grant: () => void }> = [];

  const makeRelease = (): (() => void) => {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = waiters.shift();
      if (next) next.grant();
      else held--;
    };
  };

  return {
    get held() {
      return held;
    },
    get waiting() {
      return waiters.length;
    },
    acquire(signal) {
      if (signal?.aborted) return Promise.reject(abortError());
      if (held < capacity && waiters.length === 0) {
        held++;
        return Promise.resolve(makeRelease());
      }
      return new Promise((resolve, reject) => {
        const waiter = {
          grant: () => {
            signal?.removeEventListener("abort", onAbort);
            resolve(makeRelease());
          },
        };
        const onAbort = (): void => {
          const index = waiters.indexOf(waiter);
          if (index >= 0) waiters.splice(index, 1);
          reject(abortError());
        };
        signal?.addEventListener("abort", onAbort, { once: true });
        waiters.push(waiter);
      });
    },
  };
}
