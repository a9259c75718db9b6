import { gatewayOverloaded } from "../errors/domain-errors.js";
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
 * without bound in memory. A call counts from its `begin` until its end (last message sent,
 * failed, or cancelled); services exempt from the cap (`exemptionsOf`) are not counted.
 */
export function concurrencyCap(max: number): ConcurrencyCap {
  let active = 0;
  // One release for every call: the pipeline runs each call's end once.
  const release: CallEnd = () => {
    active--;
  };
  return {
    get active() {
      return active;
    },
    begin(call) {
      if (exemptionsOf(call.method.parent.typeName).cap) return undefined;
      if (active >= max) throw gatewayOverloaded(max);
      active++;
      return release;
    },
  };
}
