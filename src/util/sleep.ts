/**
 * Waits `ms`, or rejects with the signal's reason when it aborts first. `unref`: the wait does not
 * keep the process alive (for background work such as an export's retry). @default false
 */
export function sleep(ms: number, signal: AbortSignal, options: { unref?: boolean } = {}): Promise<void> {
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      clearTimeout(t);
      reject(signal.reason as Error);
    };
    const t = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    if (options.unref === true) t.unref();
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
