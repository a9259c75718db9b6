import { Code, ConnectError } from "@connectrpc/connect";
import { gatewayError } from "./gateway-error.js";

/**
 * The catalogue of the gateway's own errors: one function per situation, so a situation reads
 * the same (code, reason, message, RetryInfo) wherever it is raised, and every call gets a fresh
 * error object (handlers and the pipeline may add metadata to it; a shared instance would carry
 * one call's facts into another's trailers). Errors that come from Ollama are converted in
 * `to-connect-error.ts`; request validation lives in `invalidArgument`. The reasons are the
 * contract listed in the README's error table.
 */

/** How long a client should wait before retrying a busy or unreachable node. */
export const RETRY_AFTER_MS = 1_000;
/** How long a client should wait before retrying a gateway at its call limit: calls end quickly. */
export const OVERLOADED_RETRY_AFTER_MS = 250;

/** Bounds of a RetryInfo derived from a predicted wait. */
const MIN_RETRY_MS = 100;
const MAX_RETRY_MS = 30_000;

/** A predicted wait as a RetryInfo delay: at least 100 ms, at most 30 s, 1 s when nothing was predicted. */
export function retryDelayMs(expectedMs: number | undefined): number {
  return Math.min(MAX_RETRY_MS, Math.max(MIN_RETRY_MS, expectedMs ?? RETRY_AFTER_MS));
}

/** No Ollama node answered at all (every node down or unreachable). `facts`: the model, the nodes tried. */
export function noNodeAnswered(facts: { model?: string; nodes?: readonly string[] } = {}): ConnectError {
  const metadata: Record<string, string> = {};
  if (facts.model !== undefined) metadata["model"] = facts.model;
  if (facts.nodes !== undefined) metadata["nodes"] = [...facts.nodes].sort().join(" ");
  return gatewayError(Code.Unavailable, "UPSTREAM_UNAVAILABLE", "no Ollama node answered", {
    retryAfterMs: RETRY_AFTER_MS,
    metadata,
  });
}

/** The model is installed only on nodes that are out of rotation (circuit open) or were excluded. */
export function noHealthyNodeFor(model: string): ConnectError {
  return gatewayError(Code.Unavailable, "UPSTREAM_UNAVAILABLE", "no healthy Ollama node has this model", {
    retryAfterMs: RETRY_AFTER_MS,
    metadata: { model },
  });
}

/** No node that answered has the model. */
export function modelNotFound(model: string): ConnectError {
  return gatewayError(Code.NotFound, "MODEL_NOT_FOUND", `model ${model} not found on any node`, {
    metadata: { model },
  });
}

/** A pull failed because the registry does not know the model; Ollama's own words go in `upstream_message`. */
export function modelNotInRegistry(model: string, node: string, upstreamMessage: string, cause: unknown): ConnectError {
  return gatewayError(
    Code.NotFound,
    "MODEL_NOT_FOUND",
    `model ${model} not found in its registry - ${upstreamMessage}`,
    {
      metadata: { model, node, upstream_message: upstreamMessage },
      cause,
    },
  );
}

/** The gateway is handling its maximum number of calls (`MAX_CONCURRENT_RPCS`): not one model's queue. */
export function gatewayOverloaded(maxCalls: number): ConnectError {
  return gatewayError(
    Code.ResourceExhausted,
    "GATEWAY_OVERLOADED",
    `the gateway is handling its maximum of ${maxCalls} calls`,
    { retryAfterMs: OVERLOADED_RETRY_AFTER_MS, metadata: { max_calls: String(maxCalls) } },
  );
}

/** The model's admission queue (or the gateway's total of queued requests) is full. */
export function queueFull(model: string, queued: number, expectedWaitMs: number | undefined): ConnectError {
  return gatewayError(Code.ResourceExhausted, "QUEUE_FULL", `the queue for ${model} is full`, {
    retryAfterMs: retryDelayMs(expectedWaitMs),
    metadata: { model, queued: String(queued) },
  });
}

/** The predicted wait for a slot is longer than the call's deadline. */
export function deadlineTooShort(model: string, expectedWaitMs: number): ConnectError {
  return gatewayError(
    Code.ResourceExhausted,
    "DEADLINE_TOO_SHORT",
    `the expected wait for ${model} is longer than the deadline`,
    {
      retryAfterMs: retryDelayMs(expectedWaitMs),
      metadata: { model, expected_wait_ms: String(Math.round(expectedWaitMs)) },
    },
  );
}

/** The predicted wait for a slot is longer than the queue's latency budget (`QUEUE_MAX_WAIT_MS`). */
export function expectedWaitTooLong(model: string, expectedWaitMs: number, maxWaitMs: number): ConnectError {
  return gatewayError(
    Code.ResourceExhausted,
    "QUEUE_WAIT_TOO_LONG",
    `the expected wait for ${model} is longer than the queue allows`,
    {
      retryAfterMs: retryDelayMs(expectedWaitMs),
      metadata: {
        model,
        expected_wait_ms: String(Math.round(expectedWaitMs)),
        max_wait_ms: String(maxWaitMs),
      },
    },
  );
}

/** A queued request waited the whole latency budget (`QUEUE_MAX_WAIT_MS`) without getting a slot. */
export function waitedTooLong(model: string, maxWaitMs: number, expectedWaitMs: number | undefined): ConnectError {
  return gatewayError(
    Code.ResourceExhausted,
    "QUEUE_WAIT_TOO_LONG",
    `waited ${maxWaitMs} ms in the queue for ${model}`,
    {
      retryAfterMs: retryDelayMs(expectedWaitMs),
      metadata: { model, max_wait_ms: String(maxWaitMs) },
    },
  );
}

/** A RetryInfo delay for a limit: what the limiter computed, in whole ms, at least 1 ms. */
function limitRetryMs(ms: number): number {
  return Math.max(1, Math.ceil(ms));
}

/**
 * The principal (or, while authentication is off, the client address) is over its request rate:
 * its token bucket (README, "Rate limits and quotas") has no token until `retryAfterMs`.
 */
export function rateLimited(principal: string, ratePerSec: number, burst: number, retryAfterMs: number): ConnectError {
  return gatewayError(Code.ResourceExhausted, "RATE_LIMITED", "request rate limit reached", {
    retryAfterMs: limitRetryMs(retryAfterMs),
    metadata: { principal, requests_per_second: String(ratePerSec), burst: String(burst) },
  });
}

/** The principal has used its tokens of the current minute or day; the call passes when that window ends, `retryAfterMs` from now. */
export function tokenQuotaExceeded(principal: string, retryAfterMs: number): ConnectError {
  return gatewayError(Code.ResourceExhausted, "TOKEN_QUOTA_EXCEEDED", "token quota used up", {
    retryAfterMs: limitRetryMs(retryAfterMs),
    metadata: { principal },
  });
}

/** The principal has its maximum of streams open; `retryAfterMs` is a guess (streams end when they end). */
export function tooManyStreams(principal: string, maxStreams: number, retryAfterMs: number): ConnectError {
  return gatewayError(Code.ResourceExhausted, "TOO_MANY_STREAMS", `at most ${maxStreams} streams may be open at once`, {
    retryAfterMs: limitRetryMs(retryAfterMs),
    metadata: { principal, max_streams: String(maxStreams) },
  });
}

/** The gateway is shutting down: queued requests and, past the grace period, running calls end with this. */
export function shuttingDown(): ConnectError {
  return gatewayError(Code.Unavailable, "SHUTTING_DOWN", "server shutting down");
}

/** Ollama ended a stream without its final (`done`) chunk, e.g. when its repeat detector fired. */
export function streamEndedEarly(model: string, node: string): ConnectError {
  return gatewayError(Code.Internal, "UPSTREAM_PROTOCOL_ERROR", "the Ollama stream ended before its final message", {
    metadata: { model, node },
  });
}

/** Ollama answered an /api/embed with a different number of vectors than inputs, or not numbers. */
export function wrongEmbeddings(model: string, node: string, got: number | undefined, expected: number): ConnectError {
  return gatewayError(
    Code.Internal,
    "UPSTREAM_PROTOCOL_ERROR",
    `the Ollama node answered with ${got ?? "no"} embeddings for ${expected} inputs`,
    { metadata: { model, node } },
  );
}

/** A pull's progress stream ended without Ollama's `success` status. */
export function pullWithoutSuccess(model: string, node: string): ConnectError {
  return gatewayError(Code.Internal, "UPSTREAM_PROTOCOL_ERROR", "the pull ended without success", {
    metadata: { node, model },
  });
}

/** The client cancelled the call (reset its stream, closed its connection). */
export function clientCancelled(): ConnectError {
  return new ConnectError("the client cancelled the call", Code.Canceled);
}

/** The client stopped reading a stream before it ended. */
export function clientStoppedReading(): ConnectError {
  return new ConnectError("the client stopped reading", Code.Canceled);
}

/** The call's deadline (the client's, capped by `MAX_DEADLINE_MS`) passed. */
export function deadlineExceeded(): ConnectError {
  return new ConnectError("the operation timed out", Code.DeadlineExceeded);
}

/** The gateway's own upper bound of a call's duration passed (`MAX_DEADLINE_MS`, also for calls without a deadline). */
export function maxDeadlinePassed(): ConnectError {
  return new ConnectError("the gateway's maximum deadline passed", Code.DeadlineExceeded);
}

/**
 * The reason a call's signal is aborted with once the call has ended, so timers and listeners tied
 * to it are freed. One object for every call, the one exception to "a fresh error per call": it is
 * made on every call's hot path (a ConnectError per call was 1 % of the gateway's CPU in bench (a)),
 * and it never reaches a client, a log line or the pipeline, which is what could write into an
 * error; nothing in the gateway mutates errors.
 */
const CALL_ENDED = new ConnectError("the call has ended", Code.Canceled);

/** See CALL_ENDED. */
export function callEnded(): ConnectError {
  return CALL_ENDED;
}

/**
 * The call carries no credentials (no `authorization: Bearer`, no `x-api-key`, no client
 * certificate) while authentication is on.
 */
export function missingCredentials(): ConnectError {
  return gatewayError(
    Code.Unauthenticated,
    "MISSING_CREDENTIALS",
    "credentials are required (authorization Bearer or x-api-key)",
  );
}

/**
 * The credentials are not valid: an unknown, disabled or malformed key, a token with a wrong
 * signature, issuer or audience, an unverified certificate. Never says which: a caller probing
 * keys learns nothing.
 */
export function invalidCredentials(): ConnectError {
  return gatewayError(Code.Unauthenticated, "INVALID_CREDENTIALS", "the credentials are not valid");
}

/** The credentials were valid but have expired (an API key's expiry, a token's exp), or are not valid yet (nbf). */
export function expiredCredentials(): ConnectError {
  return gatewayError(Code.Unauthenticated, "EXPIRED_CREDENTIALS", "the credentials have expired or are not valid yet");
}

/**
 * The gateway could not get the keys to check a token with (the JWKS URL unreachable and never
 * fetched): not the caller's fault, so UNAVAILABLE with a RetryInfo. The cause is kept for the log.
 */
export function authUnavailable(cause: unknown): ConnectError {
  return gatewayError(Code.Unavailable, "AUTH_UNAVAILABLE", "the credentials cannot be checked right now", {
    retryAfterMs: RETRY_AFTER_MS,
    cause,
  });
}

/** What a principal was refused: a model, a method, or an `x-priority` above its maximum. */
export type PermissionDenial =
  | { readonly kind: "model"; readonly model: string }
  | { readonly kind: "method"; readonly method: string }
  | { readonly kind: "priority"; readonly priority: number; readonly maxPriority: number };

/** The authenticated principal may not do this (README "Permissions"); `principal` goes in the metadata. */
export function permissionDenied(principal: string, denial: PermissionDenial): ConnectError {
  switch (denial.kind) {
    case "model":
      return gatewayError(
        Code.PermissionDenied,
        "MODEL_NOT_ALLOWED",
        `${principal} may not use model ${denial.model}`,
        {
          metadata: { principal, model: denial.model },
        },
      );
    case "method":
      return gatewayError(Code.PermissionDenied, "METHOD_NOT_ALLOWED", `${principal} may not call ${denial.method}`, {
        metadata: { principal, method: denial.method },
      });
    case "priority":
      return gatewayError(
        Code.PermissionDenied,
        "PRIORITY_NOT_ALLOWED",
        `${principal} may not use x-priority above ${denial.maxPriority}`,
        {
          metadata: { principal, priority: String(denial.priority), max_priority: String(denial.maxPriority) },
        },
      );
  }
}

/** Anything that is not one of the above: a gateway bug. The cause is kept for the log, never sent. */
export function internalError(cause: unknown): ConnectError {
  return new ConnectError("internal error", Code.Internal, undefined, undefined, cause);
}

/**
 * A call's request body did not arrive within `REQUEST_BODY_TIMEOUT_MS` of its headers. DEADLINE_EXCEEDED, as for a
 * deadline: the call could not complete in the time it was given, and another try may (a client that is merely slow).
 */
export function requestBodyTimeout(timeoutMs: number): ConnectError {
  return gatewayError(
    Code.DeadlineExceeded,
    "REQUEST_BODY_TIMEOUT",
    `the request body did not arrive within ${timeoutMs} ms of the headers`,
    { metadata: { timeout_ms: String(timeoutMs) } },
  );
}

/**
 * More calls than `REQUEST_BODY_MAX_WAITING` were waiting for their request body at once, and this one had been
 * silent longest, so it was ended to make room (README, "Operating it").
 */
export function requestBodyShed(maxWaiting: number): ConnectError {
  return gatewayError(
    Code.ResourceExhausted,
    "GATEWAY_OVERLOADED",
    `too many calls are waiting for their request body (${maxWaiting}); this one was silent longest`,
    { retryAfterMs: OVERLOADED_RETRY_AFTER_MS, metadata: { max_waiting_bodies: String(maxWaiting) } },
  );
}

/**
 * An Embed whose answer cannot fit in one response message (`MAX_MESSAGE_BYTES`): refused before any upstream
 * work, with how many of its inputs would fit, so the client can split it.
 */
export function embedAnswerTooLarge(facts: {
  model: string;
  inputs: number;
  fit: number;
  dimensions: number;
  answerBytes: number;
  maxBytes: number;
}): ConnectError {
  return gatewayError(
    Code.InvalidArgument,
    "ANSWER_TOO_LARGE",
    `the answer to ${facts.inputs} inputs of ${facts.dimensions} dimensions (about ${facts.answerBytes} bytes in this encoding) ` +
      `exceeds the ${facts.maxBytes}-byte message limit - at most ${facts.fit} inputs fit in one call`,
    {
      metadata: {
        model: facts.model,
        max_inputs: String(facts.fit),
        dimensions: String(facts.dimensions),
        max_message_bytes: String(facts.maxBytes),
      },
      violations: [{ field: "inputs", description: `at most ${facts.fit} inputs fit in one answer for this model` }],
    },
  );
}
