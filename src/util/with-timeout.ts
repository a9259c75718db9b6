/** The outcome of a bounded operation: its value, or why it did not produce one. */
export type Outcome<T> = { ok: true; value: T } | { ok: false; error: unknown };

/** Raised (as an Outcome error) when an operation outlives its bound. */
export class TimeoutError extends Error {
  constructor(ms: number) {
    super(`timed out after ${ms} ms`);
    this.name = "TimeoutError";
  }
}

/**
 * Runs `op` and settles within `ms` whatever it does — the guarantee that lets a hung Redis never
 * hang an RPC. Never rejects: failures, synchronous throws and timeouts become `{ ok: false }`.
 * A late result or rejection of `op` is swallowed.
 */
export function withTimeout<T>(op: () => Promise<T>, ms: number): Promise<Outcome<T>> {
  return new Promise((resolve) => {
    let settled = false;
    const finish = (outcome: Outcome<T>): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(outcome);
    };
    const timer = setTimeout(() => finish({ ok: false, error: new TimeoutError(ms) }), ms);
    let p: Promise<T>;
    try {
      p = op();
    } catch (error) {
      finish({ ok: false, error });
      return;
    }
    p.then(
      (value) => finish({ ok: true, value }),
      (error: unknown) => finish({ ok: false, error }),
    );
  });
}
