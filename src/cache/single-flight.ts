/**
 * Runs `fn` for `key` unless a call for that key is already in flight, in which case the caller
 * shares that call's result or error.
 */
export type SingleFlight<T> = (key: string, fn: () => Promise<T>) => Promise<T>;

/**
 * Creates a single-flight group: one upstream call per key however many requests miss the cache
 * at once. The entry is removed as soon as the call settles, so a later call runs `fn` again
 * (results are not cached here; that is the cache's job).
 */
export function createSingleFlight<T>(): SingleFlight<T> {
  const inFlight = new Map<string, Promise<T>>();
  return (key, fn) => {
    const current = inFlight.get(key);
    if (current !== undefined) return current;
    let call: Promise<T>;
    try {
      call = fn();
    } catch (err) {
      // A synchronous throw is shared like a rejection, and leaves no entry behind.
      return Promise.reject(err);
    }
    const shared = call.finally(() => {
      if (inFlight.get(key) === shared) inFlight.delete(key);
    });
    inFlight.set(key, shared);
    return shared;
  };
}

/** The same factory under the name of the cache API sketch (`singleFlight<T>()`). */
export const singleFlight: <T>() => SingleFlight<T> = createSingleFlight;
