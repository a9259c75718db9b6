import { createContextKey } from "@connectrpc/connect";
import type { HandlerContext } from "@connectrpc/connect";

/**
 * Facts about one RPC that the call pipeline and the handler fill in and the logging hook
 * reports in the RPC's single log line. Mutable on purpose: it is created per call (with the
 * peer) before the pipeline runs, written by the request-id hook and the handler, read once
 * at the end.
 */
export interface RpcInfo {
  /** From the `x-request-id` header, or generated (the request-id hook). Echoed in the response headers and trailers. */
  requestId: string;
  /** Client address as seen on the socket (the sidecar's, in a mesh). */
  peer: string;
  /** Model named in the request, when there is one. */
  model: string;
  /** Model that served the request (an alias's target or fallback, README "Model aliases"), when one was chosen. */
  servedModel: string;
  /** Why a fallback model served it (`x-fallback-reason`); empty when none did. */
  fallbackReason: string;
  /** Node that served the request, when one was chosen. */
  node: string;
  /** Messages sent to the client (streams). */
  messages: number;
  /**
   * Prompt tokens Ollama reported for the call (`prompt_eval_count` of its final message, or its
   * share of an Embed batch); 0 until then. With `completionTokens`, what the token quotas charge.
   */
  promptTokens: number;
  /** Completion tokens Ollama reported (`eval_count` of its final message); 0 until then. */
  completionTokens: number;
  /** The authenticated principal's name (never a credential); empty when authentication is off or skipped. */
  principal: string;
  /** The call's trace id (32 hex) when it is traced or the client sent a `traceparent`; "" otherwise. */
  traceId: string;
}

/** Context key under which each request's RpcInfo lives. */
export const kRpcInfo = createContextKey<RpcInfo | undefined>(undefined, { description: "rpc info" });

/** A fresh RpcInfo for a call from `peer` (undefined: unknown), before the pipeline and the handler fill it in. */
export function newRpcInfo(peer: string | undefined): RpcInfo {
  return {
    requestId: "",
    peer: peer ?? "",
    model: "",
    servedModel: "",
    fallbackReason: "",
    node: "",
    messages: 0,
    promptTokens: 0,
    completionTokens: 0,
    principal: "",
    traceId: "",
  };
}

/** The RpcInfo of a handler's request (a throwaway one outside the adapter, e.g. in unit tests). */
export function rpcInfo(ctx: HandlerContext): RpcInfo {
  let info = ctx.values.get(kRpcInfo);
  if (info === undefined) {
    info = newRpcInfo(undefined);
    ctx.values.set(kRpcInfo, info);
  }
  return info;
}
