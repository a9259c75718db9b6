import { Code, ConnectError } from "@connectrpc/connect";
import { errors as undiciErrors } from "undici";
import { isUnreachable } from "../upstream/network-errors.js";
import { isUpstreamError } from "../upstream/upstream-error.js";
import type { UpstreamError } from "../upstream/upstream-error.js";
import { contentFreeError } from "./client-errors.js";
import { internalError, RETRY_AFTER_MS } from "./domain-errors.js";
import { gatewayError } from "./gateway-error.js";

/**
 * The one place where foreign errors become gRPC statuses.
 *
 * Order matters: an aborted RPC signal wins (deadline, cancel and shutdown
 * carry their own ConnectError as the reason, whatever the upstream threw
 * while being torn down); then errors that already are ConnectErrors (a
 * request decoding error reduced to its field path and kind, see
 * `contentFreeError`); then
 * Ollama's HTTP statuses and stream errors; then network errors. Anything
 * else is a gateway bug: INTERNAL with a generic message, cause kept for logs.
 * `facts` (model, node ...) go into the ErrorInfo metadata of upstream errors.
 */
export function toConnectError(err: unknown, signal?: AbortSignal, facts: Record<string, string> = {}): ConnectError {
  if (signal?.aborted && signal.reason instanceof ConnectError) return signal.reason;
  // A request that could not be decoded: the message may quote the request, which is neither logged nor echoed.
  if (err instanceof ConnectError) return contentFreeError(err);
  if (isUpstreamError(err)) return fromUpstream(err, facts);
  if (err instanceof undiciErrors.HeadersTimeoutError || err instanceof undiciErrors.BodyTimeoutError) {
    return gatewayError(Code.Unavailable, "UPSTREAM_TIMEOUT", "the Ollama node stopped responding", {
      metadata: facts,
      retryAfterMs: RETRY_AFTER_MS,
      cause: err,
    });
  }
  if (isUnreachable(err)) {
    return gatewayError(Code.Unavailable, "UPSTREAM_UNAVAILABLE", "the Ollama node is unreachable", {
      metadata: facts,
      retryAfterMs: RETRY_AFTER_MS,
      cause: err,
    });
  }
  return internalError(err);
}

// Ollama messages that mean the runner process died: transient, so the
// client may retry (on another node) rather than treat it as a bug.
const RUNNER_DIED =
  /runner (process )?has (unexpectedly stopped|terminated)|timed out waiting for (llama|llama-server)/i;

function fromUpstream(err: UpstreamError, facts: Record<string, string>): ConnectError {
  const metadata: Record<string, string> = { ...facts, node: err.node, upstream_message: err.message };
  if (err.status) metadata["upstream_status"] = String(err.status);
  if (err.kind === "protocol") {
    return gatewayError(
      Code.Internal,
      "UPSTREAM_PROTOCOL_ERROR",
      `the Ollama node sent an invalid response (${err.message})`,
      {
        metadata,
        cause: err,
      },
    );
  }
  if (err.kind === "stream") {
    const died = RUNNER_DIED.test(err.message);
    return gatewayError(
      died ? Code.Unavailable : Code.Internal,
      "UPSTREAM_ERROR",
      `Ollama failed during generation - ${err.message}`,
      {
        metadata,
        retryAfterMs: died ? RETRY_AFTER_MS : undefined,
        cause: err,
      },
    );
  }
  switch (err.status) {
    case 400:
      return gatewayError(Code.InvalidArgument, "UPSTREAM_REJECTED", `Ollama rejected the request - ${err.message}`, {
        metadata,
        cause: err,
      });
    case 404:
      return gatewayError(Code.NotFound, "MODEL_NOT_FOUND", err.message, { metadata, cause: err });
    case 429:
    case 502:
    case 503:
    case 504:
      return gatewayError(Code.Unavailable, "UPSTREAM_BUSY", `the Ollama node is busy - ${err.message}`, {
        metadata,
        retryAfterMs: RETRY_AFTER_MS,
        cause: err,
      });
    default: {
      const died = RUNNER_DIED.test(err.message);
      return gatewayError(died ? Code.Unavailable : Code.Internal, "UPSTREAM_ERROR", `Ollama failed - ${err.message}`, {
        metadata,
        retryAfterMs: died ? RETRY_AFTER_MS : undefined,
        cause: err,
      });
    }
  }
}
