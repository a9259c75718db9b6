import { ConnectError } from "@connectrpc/connect";
import { internalError } from "../errors/domain-errors.js";
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

/** The ordered hooks, run the same way by connect-node's interceptor and the gRPC fast path. */
export interface Pipeline {
  /**
   * Runs every hook's `begin` in order. When hook k refuses, the ends of the hooks before it
   * run (in reverse) with its error, so the refusal is logged and any slot is given back, and
   * that error is thrown (always a ConnectError). Otherwise returns the one function to call
   * when the call ends: it runs the hooks' ends in reverse order, once, whatever calls it again.
   */
  begin(call: Call): CallEnd;
  /**
   * Runs the hooks' `admit` in order once the request message has arrived (after a `begin`
   * that returned). Throws the first refusal (a ConnectError; anything else becomes INTERNAL):
   * the caller ends the call with it through the `CallEnd` from `begin`.
   */
  admit(call: Call): void;
}

const NOTHING_TO_END: CallEnd = () => {};

/**
 * Builds a pipeline from hooks in the order they run. Per call it allocates nothing for hooks
 * without an end, and otherwise one array and one closure (no promise, no closure per hook).
 */
export function createPipeline(hooks: readonly CallHook[]): Pipeline {
  const list = [...hooks];
  const admitting = list.filter((h) => h.admit !== undefined);
  return {
    admit(call) {
      for (const hook of admitting) {
        try {
          hook.admit!(call);
        } catch (e) {
          throw e instanceof ConnectError ? e : internalError(e);
        }
      }
    },
    begin(call) {
      let ends: CallEnd[] | undefined;
      for (const hook of list) {
        let end: CallEnd | undefined;
        try {
          end = hook.begin(call);
        } catch (e) {
          // A hook that throws something else has a bug: the call fails as INTERNAL, cause logged.
          const refusal = e instanceof ConnectError ? e : internalError(e);
          if (ends !== undefined) endAll(ends, refusal);
          throw refusal;
        }
        if (end !== undefined) (ends ??= []).push(end);
      }
      if (ends === undefined) return NOTHING_TO_END;
      const taken = ends;
      let ended = false;
      return (error) => {
        if (ended) return;
        ended = true;
        endAll(taken, error);
      };
    },
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
