import { ConnectError } from "@connectrpc/connect";
import { clientCancelled, internalError } from "../errors/domain-errors.js";
import type { Call } from "./call.js";

/**
 * Called once when a call ends, with the error the client is sent (undefined = OK). Must not
 * throw: it runs while the call's answer is being finished.
 */
export type CallEnd = (error: ConnectError | undefined) => void;

/**
 * One step every call goes through (request id, logging, the concurrency cap; later
 * authentication, permissions, rate limits, metrics). `begin` runs before the request is read;
 * it may throw a ConnectError to refuse the call, and may return what to run when the call
 * ends. A hook with nothing to do at the end returns undefined, so it costs no closure.
 */
export interface CallHook {
  /** Admits (returns) or refuses (throws) the call; the optional result runs when it ends. */
  begin(call: Call): CallEnd | undefined;
  /**
   * Optional second step, run once the call's request message has arrived, before the handler
   * (every hook has begun by then); may throw a ConnectError to refuse the call. A hook that
   * counts calls against a shared limit counts them here, so a call whose body never comes
   * holds nothing of it (README, "Operating it").
   */
  admit?(call: Call): void;
}

/**
 * A hook that sometimes has to wait before it can admit or refuse (authentication verifying a
 * token it has not seen): it answers with a promise then, and synchronously otherwise, so only
 * the calls that must wait allocate a promise.
 */
export interface WaitingCallHook {
  /** As `CallHook.begin`, or a promise of it (a rejection refuses the call). */
  begin(call: Call): CallEnd | undefined | Promise<CallEnd | undefined>;
  /** As `CallHook.admit`. */
  admit?(call: Call): void;
}

/** The ordered hooks, run the same way by connect-node's interceptor and the gRPC fast path. */
export interface Pipeline {
  /**
   * Runs every hook's `begin` in order. When hook k refuses, the ends of the hooks before it
   * run (in reverse) with its error, so the refusal is logged and any slot is given back, and
   * that error is thrown (always a ConnectError). Otherwise returns the one function to call
   * when the call ends: it runs the hooks' ends in reverse order, once, whatever calls it again.
   *
   * When a hook answers with a promise, the rest runs once it settles and the result is a
   * promise (rejecting with the refusal); a call whose signal aborted meanwhile (client gone,
   * deadline passed) is refused with that reason before the hooks after it run.
   */
  begin(call: Call): CallEnd | Promise<CallEnd>;
  /**
   * Runs the hooks' `admit` in order once the request message has arrived (after a `begin`
   * that returned). Throws the first refusal (a ConnectError; anything else becomes INTERNAL):
   * the caller ends the call with it through the `CallEnd` from `begin`.
   */
  admit(call: Call): void;
}

/** A pipeline of hooks that never wait: `begin` always answers at once. */
export interface SyncPipeline extends Pipeline {
  begin(call: Call): CallEnd;
}

const NOTHING_TO_END: CallEnd = () => {};

/**
 * Builds a pipeline from hooks in the order they run. Per call it allocates nothing for hooks
 * without an end, and otherwise one array and one closure (no promise, no closure per hook),
 * unless a waiting hook answers with a promise.
 */
export function createPipeline(hooks: readonly CallHook[]): SyncPipeline;
export function createPipeline(hooks: readonly WaitingCallHook[]): Pipeline;
export function createPipeline(hooks: readonly WaitingCallHook[]): Pipeline {
  const list = [...hooks];
  const admitting = list.filter((h) => h.admit !== undefined);
  /** Runs hooks from `from` on; synchronous until one answers with a promise. */
  function run(call: Call, from: number, ends: CallEnd[] | undefined): CallEnd | Promise<CallEnd> {
    for (let i = from; i < list.length; i++) {
      let end: CallEnd | undefined | Promise<CallEnd | undefined>;
      try {
        end = list[i]!.begin(call);
      } catch (e) {
        refuse(e, ends);
      }
      if (end instanceof Promise) return resume(call, end, i + 1, ends);
      if (end !== undefined) (ends ??= []).push(end);
    }
    return endOf(ends);
  }
  async function resume(
    call: Call,
    pending: Promise<CallEnd | undefined>,
    next: number,
    ends: CallEnd[] | undefined,
  ): Promise<CallEnd> {
    let end: CallEnd | undefined;
    try {
      end = await pending;
    } catch (e) {
      refuse(e, ends);
    }
    if (end !== undefined) (ends ??= []).push(end);
    if (call.signal.aborted) {
      refuse(call.signal.reason instanceof ConnectError ? call.signal.reason : clientCancelled(), ends);
    }
    return run(call, next, ends);
  }
  return {
    begin: (call) => run(call, 0, undefined),
    admit(call) {
      for (const hook of admitting) {
        try {
          hook.admit!(call);
        } catch (e) {
          throw e instanceof ConnectError ? e : internalError(e);
        }
      }
    },
  };
}

/**
 * Refuses the call: the ends of the hooks that ran run with the refusal, which is thrown. A hook
 * that throws something other than a ConnectError has a bug: the call fails as INTERNAL, cause logged.
 */
function refuse(e: unknown, ends: readonly CallEnd[] | undefined): never {
  const refusal = e instanceof ConnectError ? e : internalError(e);
  if (ends !== undefined) endAll(ends, refusal);
  throw refusal;
}

/** The one end of an admitted call: the hooks' ends in reverse, once. */
function endOf(ends: CallEnd[] | undefined): CallEnd {
  if (ends === undefined) return NOTHING_TO_END;
  let ended = false;
  return (error) => {
    if (ended) return;
    ended = true;
    endAll(ends, error);
  };
}

/** Runs ends last to first; one that throws (a bug) does not stop the others, and is rethrown after them. */
function endAll(ends: readonly CallEnd[], error: ConnectError | undefined): void {
  let failure: { thrown: unknown } | undefined;
  for (let i = ends.length - 1; i >= 0; i--) {
    try {
      ends[i]!(error);
    } catch (e) {
      failure ??= { thrown: e };
    }
  }
  if (failure !== undefined) throw failure.thrown;
}
