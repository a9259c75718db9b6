import { abortReason, untilAborted } from "./until-aborted.js";

/**
 * Runs `fn` for `key` unless a call for that key is already in flight, in which case the caller
 * shares that call's result or error.
 *
 * `signal` is the caller's: when it aborts, that caller stops waiting at once (rejected with the
 * signal's reason) while the shared call goes on for the others. The shared call gets its own
 * signal (`fn`'s argument), which aborts when every caller that joined it has left — a caller
 * without a signal never leaves. Its own bound (a timeout) is for `fn` to add.
 */
export type SingleFlight<T> = (
  key: string,
  fn: (signal: AbortSignal) => Promise<T>,
  signal?: AbortSignal,
) => Promise<T>;

interface Flight<T> {
  readonly result: Promise<T>;
  readonly controller: AbortController;
  /** Callers with a signal still waiting. */
  waiters: number;
  /** A caller without a signal joined: the call is never abandoned. */
  pinned: boolean;
}

/**
 * Creates a single-flight group: one upstream call per key however many requests miss the cache
 * at once. The entry is removed as soon as the call settles — or is abandoned by all its callers —
 * so a later call runs `fn` again (results are not cached here; that is the cache's job).
 */
export function createSingleFlight<T>(): SingleFlight<T> {
  const inFlight = new Map<string, Flight<T>>();

  const start = (key: string, fn: (signal: AbortSignal) => Promise<T>): Flight<T> => {
    const controller = new AbortController();
    // A synchronous throw is shared like a rejection.
    const call = new Promise<T>((resolve) => resolve(fn(controller.signal)));
    const flight: Flight<T> = {
      controller,
      waiters: 0,
      pinned: false,
      result: call.finally(() => {
        if (inFlight.get(key) === flight) inFlight.delete(key);
      }),
    };
    // Everyone may have left by the time it settles.
    flight.result.catch(() => undefined);
    inFlight.set(key, flight);
    return flight;
  };

  return (key, fn, signal) => {
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    const flight = inFlight.get(key) ?? start(key, fn);
    if (signal === undefined) {
      flight.pinned = true;
      return flight.result;
    }
    flight.waiters++;
    return untilAborted(flight.result, signal, () => {
      if (--flight.waiters > 0 || flight.pinned) return;
      // The last caller left: nobody may join a call that is being abandoned.
      if (inFlight.get(key) === flight) inFlight.delete(key);
      flight.controller.abort(abortReason(signal));
    });
  };
}

/** The same factory under the name of the cache API sketch (`singleFlight<T>()`). */
export const singleFlight: <T>() => SingleFlight<T> = createSingleFlight;
