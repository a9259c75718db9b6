import { gatewayOverloaded } from "../errors/domain-errors.js";
import type { Call } from "./call.js";
import { exemptionsOf } from "./exemptions.js";
import type { CallEnd, CallHook } from "./pipeline.js";

/** The concurrency cap, with its gauge. */
export interface ConcurrencyCap extends CallHook {
  /** Calls counted right now (the status RPC reports it). */
  readonly active: number;
}

/**
 * Caps the calls handled at once (`MAX_CONCURRENT_RPCS`): past `max` a call is refused at once
 * with RESOURCE_EXHAUSTED, reason GATEWAY_OVERLOADED and a RetryInfo, instead of queueing
 * without bound in memory. A call counts from the arrival of its request message (`admit`)
 * until its end (last message sent, failed, or cancelled), so streams that send headers and
 * never a body hold no slot (those are bounded by the transport: `REQUEST_BODY_TIMEOUT_MS`,
 * `REQUEST_BODY_MAX_WAITING`). A call arriving while the cap is full is refused at `begin`,
 * before its body is read; one whose body arrives while it is full, at `admit`. Services exempt
 * from the cap (`exemptionsOf`) are not counted.
 */
export function concurrencyCap(max: number): ConcurrencyCap {
  let active = 0;
  return {
    get active() {
      return active;
    },
    begin(call) {
      if (exemptionsOf(call.method.parent.typeName).cap) return undefined;
      if (active >= max) throw gatewayOverloaded(max);
      // The pipeline runs each call's end once: released only if admitted.
      const release: CallEnd = () => {
        const c = call as Counted;
        if (c[kCounted] === true) {
          c[kCounted] = false;
          active--;
        }
      };
      return release;
    },
    admit(call) {
      const c = call as Counted;
      if (c[kCounted] !== undefined || exemptionsOf(call.method.parent.typeName).cap) return;
      if (active >= max) throw gatewayOverloaded(max);
      c[kCounted] = true;
      active++;
    },
  };
}

/**
 * Marks a call the cap counted (true) or released (false), on the call itself: a `WeakSet` of
 * calls, added to and deleted from once per call, is the churn V8 pays for in promoted garbage
 * (docs/architecture.md, "Cost per call").
 */
const kCounted = Symbol("counted by the concurrency cap");

/** A call as the cap marks it. */
type Counted = Call & { [kCounted]?: boolean };
