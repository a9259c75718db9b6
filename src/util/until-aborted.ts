/**
 * Waits for `p`, but rejects with the signal's reason as soon as `signal` aborts (at once when it
 * already has). `p` itself runs on; its later outcome is ignored (never an unhandled rejection).
 * This is how a caller stops waiting for work it cannot cancel — a Redis command, or a load
 * shared with other callers — without stopping that work. `onLeave` runs when the caller left
 * because of the signal (e.g. to count the waiters of shared work).
 */
export function untilAborted<T>(p: Promise<T>, signal: AbortSignal | undefined, onLeave?: () => void): Promise<T> {
  if (signal === undefined) return p;
  if (signal.aborted) {
    p.catch(() => undefined);
    return Promise.reject(abortReason(signal));
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => {
      reject(abortReason(signal));
      onLeave?.();
    };
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(err as Error);
      },
    );
  });
}

/** The reason an aborted signal carries (connect puts its DEADLINE_EXCEEDED / CANCELLED ConnectError there). */
export function abortReason(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  return reason instanceof Error
    ? reason
    : new DOMException(String(reason ?? "This operation was aborted"), "AbortError");
}

/**
 * `p`'s value, or undefined when it takes longer than `ms`; `p` runs on either way. A plain timer
 * cleared as soon as `p` settles, so the common fast case costs no timer that outlives it and no
 * `AbortSignal.timeout`/`AbortSignal.any` per call.
 */
export function within<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  return new Promise<T | undefined>((resolve, reject) => {
    const timer = setTimeout(() => resolve(undefined), ms);
    p.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (err: unknown) => {
        clearTimeout(timer);
        reject(err as Error);
      },
    );
  });
}
