/**
 * The running calls of the fast path, so that shutdown can abort them all with one listener on
 * its signal. One `addEventListener` per call on the long-lived shutdown signal would churn a
 * listener record per call in an object that lives for the whole process, which V8 pays for in
 * promoted garbage (docs/architecture.md, "Cost per call"); a list threaded through the calls
 * costs two pointer writes.
 */
export interface LiveCalls {
  /** Registers a call: `abort` runs once if shutdown comes first. Returns the call's entry. */
  add(abort: (reason: unknown) => void): LiveCall;
  /** Takes a call off the list (idempotent). */
  remove(call: LiveCall): void;
  /** How many calls are registered (tests). */
  readonly size: number;
}

/** One registered call. */
export interface LiveCall {
  /** @internal */
  abort: ((reason: unknown) => void) | undefined;
  /** @internal */
  prev: LiveCall | undefined;
  /** @internal */
  next: LiveCall | undefined;
}

/** Creates the register; when `shutdown` aborts, every registered call is aborted with its reason (newest first). */
export function createLiveCalls(shutdown: AbortSignal): LiveCalls {
  let head: LiveCall | undefined;
  let size = 0;
  const remove = (c: LiveCall): void => {
    if (c.abort === undefined) return;
    c.abort = undefined;
    if (c.prev !== undefined) c.prev.next = c.next;
    else head = c.next;
    if (c.next !== undefined) c.next.prev = c.prev;
    c.prev = c.next = undefined;
    size--;
  };
  shutdown.addEventListener(
    "abort",
    () => {
      while (head !== undefined) {
        const c = head;
        const abort = c.abort!;
        remove(c);
        abort(shutdown.reason);
      }
    },
    { once: true },
  );
  return {
    add(abort) {
      if (shutdown.aborted) {
        abort(shutdown.reason);
        return { abort: undefined, prev: undefined, next: undefined };
      }
      const c: LiveCall = { abort, prev: undefined, next: head };
      if (head !== undefined) head.prev = c;
      head = c;
      size++;
      return c;
    },
    remove,
    get size() {
      return size;
    },
  };
}
