import { InferenceService } from "../gen/ollama/gateway/v1/inference_pb.js";
import type { Limiter } from "../limits/limiter.js";
import type { RpcInfo } from "../observability/rpc-info.js";
import { exemptionsOf } from "./exemptions.js";
import type { CallHook } from "./pipeline.js";
import { principalOf } from "./principal.js";

/** Requests the caller may still make now (best knowledge of this replica), on every call under a request limit. */
export const REMAINING_REQUESTS_HEADER = "x-ratelimit-remaining-requests";
/** Tokens the caller may still use in its tightest quota window, on every inference call under a token quota. */
export const REMAINING_TOKENS_HEADER = "x-ratelimit-remaining-tokens";

/**
 * The tokens a finished call is charged: Ollama's prompt and completion counts; for a stream that
 * ended without them (cancelled, failed mid-way) the messages it sent, one token each at least,
 * so that cancelling just before the end is not free.
 */
export function tokensOf(info: RpcInfo, streaming: boolean): number {
  const reported = info.promptTokens + info.completionTokens;
  return reported > 0 || !streaming ? reported : info.messages;
}

/**
 * The rate limit hook (README, "Rate limits and quotas"): per principal — the authenticated one,
 * or the client address while authentication is off — request rate, concurrent streams and token
 * quotas, decided at once by `limiter` (never waiting on Redis). A refused call ends with
 * RESOURCE_EXHAUSTED (RATE_LIMITED, TOKEN_QUOTA_EXCEEDED or TOO_MANY_STREAMS) and a RetryInfo;
 * every call under a limit gets the remaining allowance in `x-ratelimit-remaining-requests` and
 * (inference calls) `x-ratelimit-remaining-tokens`, in the headers, and in the trailers of a
 * refusal too (connect-node sends a refused call's trailers only). At the end a stream's slot is
 * given back and an inference call's tokens are charged.
 *
 * Calls exempt from the concurrency cap (health, reflection, the status RPC) are exempt here too:
 * they are how operators and orchestrators see the gateway, whoever is over a limit. Token quotas
 * judge and charge the InferenceService only. Costs nothing per call while no principal has a limit.
 */
export function rateLimitHook(limiter: Limiter): CallHook {
  return {
    begin(call) {
      if (!limiter.enabled()) return undefined;
      const service = call.method.parent.typeName;
      if (exemptionsOf(service).cap) return undefined;
      const principal = principalOf(call.values);
      const anonymous = principal === undefined || principal.via === "anonymous";
      const name = anonymous ? call.info.peer : principal.name;
      const streaming = call.streaming;
      const admission = limiter.admit(name, anonymous, { streaming, metered: service === InferenceService.typeName });
      const requests = admission.remainingRequests;
      const tokens = admission.remainingTokens;
      if (requests !== undefined) call.responseHeader.set(REMAINING_REQUESTS_HEADER, String(requests));
      if (tokens !== undefined) call.responseHeader.set(REMAINING_TOKENS_HEADER, String(tokens));
      if (admission.refusal !== undefined) {
        if (requests !== undefined) call.responseTrailer.set(REMAINING_REQUESTS_HEADER, String(requests));
        if (tokens !== undefined) call.responseTrailer.set(REMAINING_TOKENS_HEADER, String(tokens));
        throw admission.refusal;
      }
      const end = admission.end;
      if (end === undefined) return undefined;
      const info = call.info;
      return () => end(tokensOf(info, streaming));
    },
  };
}
