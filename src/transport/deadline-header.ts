import { parseTimeout as parseConnectTimeout } from "@connectrpc/connect/protocol-connect";
import { parseTimeout as parseGrpcTimeout } from "@connectrpc/connect/protocol-grpc";

/**
 * The longest a Node timer can wait (2^31 - 1 ms, about 24.8 days): a longer delay fires at
 * once, with a TimeoutOverflowWarning. No deadline the gateway arms is longer.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** The deadline headers: gRPC and gRPC-Web send `grpc-timeout`, Connect `connect-timeout-ms`. */
export const GRPC_TIMEOUT = "grpc-timeout";
export const CONNECT_TIMEOUT = "connect-timeout-ms";

/** A deadline header as the gateway applies it. */
export interface CappedTimeout {
  /** The header value to pass on (the client's, or the cap in the same header's syntax). */
  readonly value: string;
  /** The deadline in ms it stands for. */
  readonly ms: number;
}

/**
 * A client's deadline header with its value capped to `maxMs` (README, "Operating it": any
 * deadline longer than `MAX_DEADLINE_MS` is capped to it, on every protocol). connect-node
 * rejects a deadline above its `maxTimeoutMs` instead of capping it, and arms a timer for any
 * other, which overflows above 2^31 - 1 ms and fires at once: so the header is rewritten before
 * connect-node reads it. Undefined for a value that is not a valid deadline: connect-node
 * answers it as the protocol error it is.
 */
export function capTimeout(
  name: typeof GRPC_TIMEOUT | typeof CONNECT_TIMEOUT,
  value: string,
  maxMs: number,
): CappedTimeout | undefined {
  const cap = Math.min(Math.floor(maxMs), MAX_TIMER_MS);
  const parsed =
    name === GRPC_TIMEOUT
      ? parseGrpcTimeout(value, Number.MAX_SAFE_INTEGER)
      : parseConnectTimeout(value, Number.MAX_SAFE_INTEGER);
  if (parsed.error !== undefined || parsed.timeoutMs === undefined) return undefined;
  if (parsed.timeoutMs <= cap) return { value, ms: parsed.timeoutMs };
  if (name === CONNECT_TIMEOUT) return { value: String(cap), ms: cap };
  // grpc-timeout takes at most 8 digits: milliseconds while they fit, else whole seconds.
  return cap <= 99_999_999
    ? { value: `${cap}m`, ms: cap }
    : { value: `${Math.floor(cap / 1000)}S`, ms: Math.floor(cap / 1000) * 1000 };
}

/**
 * Caps the deadline headers in `header` (both kinds, whichever the protocol reads) and returns
 * the call's deadline in ms from now, or undefined when it has none (or an invalid one).
 */
export function capDeadlineHeaders(header: Headers, maxMs: number): number | undefined {
  let ms: number | undefined;
  for (const name of [GRPC_TIMEOUT, CONNECT_TIMEOUT] as const) {
    const value = header.get(name);
    if (value === null) continue;
    const capped = capTimeout(name, value, maxMs);
    if (capped === undefined) continue;
    if (capped.value !== value) header.set(name, capped.value);
    ms = ms === undefined ? capped.ms : Math.min(ms, capped.ms);
  }
  return ms;
}
