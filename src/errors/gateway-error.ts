import { Code, ConnectError } from "@connectrpc/connect";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "../gen/google/rpc/error_details_pb.js";

/** The `google.rpc.ErrorInfo.domain` of every error this gateway raises. */
export const ERROR_DOMAIN = "ollama.gateway.v1";

/**
 * Stable, machine-readable error reasons (`google.rpc.ErrorInfo.reason`).
 * Clients switch on these, never on message text, so they never change.
 */
export type ErrorReason =
  | "INVALID_REQUEST"
  | "MODEL_NOT_FOUND"
  | "UPSTREAM_REJECTED"
  | "QUEUE_FULL"
  | "GATEWAY_OVERLOADED"
  | "DEADLINE_TOO_SHORT"
  | "QUEUE_WAIT_TOO_LONG"
  | "UPSTREAM_BUSY"
  | "UPSTREAM_UNAVAILABLE"
  | "UPSTREAM_TIMEOUT"
  | "UPSTREAM_ERROR"
  | "UPSTREAM_PROTOCOL_ERROR"
  | "SHUTTING_DOWN"
  | "MISSING_CREDENTIALS"
  | "INVALID_CREDENTIALS"
  | "EXPIRED_CREDENTIALS"
  | "AUTH_UNAVAILABLE"
  | "MODEL_NOT_ALLOWED"
  | "METHOD_NOT_ALLOWED"
  | "PRIORITY_NOT_ALLOWED"
  | "RATE_LIMITED"
  | "TOKEN_QUOTA_EXCEEDED"
  | "TOO_MANY_STREAMS"
  | "REQUEST_BODY_TIMEOUT"
  | "ANSWER_TOO_LARGE";

/** One invalid request field, reported as a `google.rpc.BadRequest` violation. */
export interface FieldViolation {
  /** Path of the field in proto names, e.g. `messages[2].role`. */
  field: string;
  /** What is wrong with it. */
  description: string;
}

/** What to attach to a gateway error besides its code and message. */
export interface GatewayErrorDetails {
  /** Facts for `ErrorInfo.metadata` (model, node, upstream message ...). */
  metadata?: Record<string, string>;
  /** Adds a `google.rpc.RetryInfo` with this delay. */
  retryAfterMs?: number;
  /** Adds a `google.rpc.BadRequest` with these violations. */
  violations?: FieldViolation[];
  /** The original error, kept for logs; never sent to clients. */
  cause?: unknown;
}

// grpc-js decodes grpc-message with decodeURI, which leaves these characters
// percent-encoded; other clients show them fine. Keep them out of messages so
// every client reads the same text (structured facts go in details).
const RESERVED = /[:/?#&=+,;@$]/g;

/**
 * Makes a status message that reads the same in every gRPC client.
 * The verbatim text belongs in ErrorInfo metadata.
 */
export function safeStatusMessage(text: string): string {
  return text.replace(RESERVED, " ").replace(/\s+/g, " ").trim().slice(0, 500);
}

/**
 * Creates the one error type the gateway sends: a ConnectError with a
 * `google.rpc.ErrorInfo` (and RetryInfo / BadRequest when useful).
 */
export function gatewayError(
  code: Code,
  reason: ErrorReason,
  message: string,
  details: GatewayErrorDetails = {},
): ConnectError {
  const outgoing: ConstructorParameters<typeof ConnectError>[3] = [
    {
      desc: ErrorInfoSchema,
      value: { reason, domain: ERROR_DOMAIN, metadata: details.metadata ?? {} },
    },
  ];
  if (details.retryAfterMs !== undefined) {
    outgoing.push({
      desc: RetryInfoSchema,
      value: { retryDelay: durationFromMs(Math.max(0, Math.round(details.retryAfterMs))) },
    });
  }
  if (details.violations && details.violations.length > 0) {
    outgoing.push({
      desc: BadRequestSchema,
      value: { fieldViolations: details.violations },
    });
  }
  return new ConnectError(safeStatusMessage(message), code, undefined, outgoing, details.cause);
}

/** INVALID_ARGUMENT for request fields that fail validation. */
export function invalidArgument(violations: FieldViolation[]): ConnectError {
  const first = violations[0];
  const message =
    first === undefined
      ? "invalid request"
      : `invalid ${first.field} - ${first.description}` +
        (violations.length > 1 ? ` (and ${violations.length - 1} more)` : "");
  return gatewayError(Code.InvalidArgument, "INVALID_REQUEST", message, { violations });
}

/** Reads the ErrorInfo reason back from an error, for logs and metrics. */
export function errorReason(err: ConnectError): string | undefined {
  for (const d of err.findDetails(ErrorInfoSchema)) return d.reason;
  return undefined;
}
