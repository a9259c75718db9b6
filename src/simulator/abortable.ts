/**
 * Small helpers that make waits cancellable, so a client disconnect or a simulator shutdown
 * stops every pending timer at once instead of letting work run on.
 */
import type { EventEmitter } from "node:events";
import { abortError } from "./errors.js";

/** Rejects with an AbortError if the signal is already aborted. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortError();
}

/**
 * Waits `ms` milliseconds (0 = yield one macrotask so I/O such as socket closes is seen),
 * rejecting early with an AbortError when `signal` aborts.
 */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.reject(abortError());
  if (ms <= 0) {
    // Cheaper than an abortable setImmediate (no listener churn on the hot token path).
    return new Promise<void>((resolve, reject) => {
      setImmediate(() => (signal?.aborted ? reject(abortError()) : resolve()));
    });
  }
  return new Promise<void>((resolve, reject) => {
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(abortError());
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** Races a promise against a signal; the promise keeps running but the caller stops waiting. */
export function abortable<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(abortError());
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(abortError());
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(error instanceof Error ? error : new Error(String(error)));
      },
    );
  });
}

/** Resolves on the emitter's `drain`, or when the signal aborts or the stream closes. */
export function waitForDrain(emitter: EventEmitter, signal: AbortSignal): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = (): void => {
      emitter.off("drain", done);
      emitter.off("close", done);
      signal.removeEventListener("abort", done);
      resolve();
    };
    emitter.on("drain", done);
    emitter.on("close", done);
    signal.addEventListener("abort", done, { once: true });
  });
}
