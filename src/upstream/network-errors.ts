/**
 * How a failed request to an Ollama node is classified at the network level: the upstream layer's
 * own vocabulary, used by node health (circuit breakers) and by the error conversion above it.
 */

/** Node and undici error codes that mean "the node cannot be reached". */
const UNREACHABLE_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTFOUND",
  "EAI_AGAIN",
  "UND_ERR_SOCKET",
  "UND_ERR_CONNECT_TIMEOUT",
  "UND_ERR_CLOSED",
  "UND_ERR_DESTROYED",
]);

// Of those, the ones that mean "nothing listens there" rather than "a
// connection broke": they open a node's circuit at once.
const DOWN_CODES = new Set([
  "ECONNREFUSED",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTFOUND",
  "EAI_AGAIN",
  "UND_ERR_CONNECT_TIMEOUT",
]);

/** True when the node could not be connected to at all (as opposed to a connection that broke). */
export function isNodeDown(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && DOWN_CODES.has(code)) return true;
  }
  return false;
}

/** True when an error (or its cause chain) is a connection-level failure. */
export function isUnreachable(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && UNREACHABLE_CODES.has(code)) return true;
  }
  return false;
}
