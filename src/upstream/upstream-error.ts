/**
 * What went wrong talking to an Ollama node, in terms of Ollama (HTTP status,
 * its error text), not gRPC. `toConnectError` turns it into a status at the
 * edge, so the upstream layer never needs to know about gRPC codes.
 */
export class UpstreamError extends Error {
  override readonly name = "UpstreamError";
  constructor(
    /** How it failed: an HTTP error status, an error line inside a 200 stream, or a broken protocol. */
    readonly kind: "http" | "stream" | "protocol",
    /** Ollama's own error text (or our description for protocol errors). */
    message: string,
    /** The node that failed. */
    readonly node: string,
    /** HTTP status for kind "http" (0 otherwise). */
    readonly status = 0,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** True for any UpstreamError, also across duplicate module copies. */
export function isUpstreamError(e: unknown): e is UpstreamError {
  return e instanceof Error && e.name === "UpstreamError";
}
