import { Code } from "@connectrpc/connect";
import type { ConnectError } from "@connectrpc/connect";
import { errorReason } from "../errors/gateway-error.js";

/** When and how often a failed upstream call is tried again. */
export interface RetryPolicy {
  /** Tries in all, the first included. @default 3 */
  maxAttempts: number;
  /** Backoff before the second try, ms. @default 50 */
  initialBackoffMs: number;
  /** Upper bound of one backoff, ms. @default 1000 */
  maxBackoffMs: number;
  /** Growth of the backoff per try. @default 2 */
  multiplier: number;
}

/** The defaults documented on RetryPolicy. */
export const DEFAULT_RETRY_POLICY: RetryPolicy = {
  maxAttempts: 3,
  initialBackoffMs: 50,
  maxBackoffMs: 1000,
  multiplier: 2,
};

// Failures that say nothing about the request itself: another node (or the
// same one a moment later) may well succeed.
const RETRYABLE_REASONS = new Set(["UPSTREAM_UNAVAILABLE", "UPSTREAM_BUSY", "UPSTREAM_TIMEOUT", "UPSTREAM_ERROR"]);

/**
 * Whether an error may be retried. Only UNAVAILABLE failures of the upstream
 * qualify (node down, busy, runner died), and the caller must only retry
 * before any message reached the client: a stream that already sent tokens
 * is never replayed.
 */
export function isRetryable(err: ConnectError): boolean {
  return err.code === Code.Unavailable && RETRYABLE_REASONS.has(errorReason(err) ?? "");
}

/**
 * Backoff before try number `attempt` (2 = the first retry): exponential with
 * full jitter, so replicas retrying at once do not hit a node together.
 */
export function backoffMs(attempt: number, policy: RetryPolicy, random: () => number = Math.random): number {
  const cap = Math.min(policy.maxBackoffMs, policy.initialBackoffMs * policy.multiplier ** Math.max(0, attempt - 2));
  return Math.round(random() * cap);
}

/** What is known about a failed try when deciding whether to make another. */
export interface FailedTry {
  /** The failure as the client would see it. */
  error: ConnectError;
  /** Which try failed: 1 = the first. */
  attempt: number;
  /** Something already reached the client: the call is never replayed. */
  sent: boolean;
  /** Time left before the call's deadline, ms. */
  remainingMs: number;
}

/**
 * The backoff before the next try, or undefined when the failure is final: the error is not
 * retryable, a message already reached the client, the tries are used up, or the backoff would
 * not end before the deadline. The one decision both streams and unary calls follow.
 */
export function nextTryDelayMs(
  failed: FailedTry,
  policy: RetryPolicy,
  random: () => number = Math.random,
): number | undefined {
  if (failed.sent || !isRetryable(failed.error) || failed.attempt >= policy.maxAttempts) return undefined;
  const wait = backoffMs(failed.attempt + 1, policy, random);
  return wait < failed.remainingMs ? wait : undefined;
}
