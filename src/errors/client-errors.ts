import { Code, ConnectError } from "@connectrpc/connect";

/**
 * Errors a client causes by what it sends (a body that is not protobuf or JSON, a broken
 * envelope, a compressed body that does not inflate), as opposed to server errors. Some carry
 * the code INTERNAL (as connect-node and grpc-go answer an undecodable request), so the code
 * alone cannot tell them apart; the log line needs to (README, "Operating it": client errors are
 * logged at info without a stack trace, server errors at error with their cause).
 */

/** Errors made here (`contentFreeError`) or marked by the transport as the client's doing. */
const marked = new WeakSet<ConnectError>();

/** Marks `error` as caused by the client's request (see `isClientCaused`); returns it. */
export function markClientCaused(error: ConnectError): ConnectError {
  marked.add(error);
  return error;
}

// The messages of connect-node's and protobuf-es's own errors about a request's bytes: decoding
// (binary or JSON), envelopes, decompression. Matched at the start of the message only.
const CLIENT_CAUSED =
  /^(parse binary: |cannot decode |protocol error: |received compressed envelope|invalid envelope|decompression failed|message is larger than configured readMaxBytes)/;

/**
 * Whether the client's request caused `error` (malformed bytes, an envelope or compression the
 * gateway cannot read), whatever its code: marked errors, and connect-node's and protobuf-es's
 * errors about a request's bytes, recognised by their message.
 */
export function isClientCaused(error: ConnectError): boolean {
  return marked.has(error) || CLIENT_CAUSED.test(error.rawMessage);
}

/** Whether a message is a decoding error of a request (protobuf binary or JSON), which may quote the request. */
export function isDecodeMessage(message: string): boolean {
  return message.startsWith("parse binary: ") || message.startsWith("cannot decode ");
}

/** Longest JSON key or field name kept in a message: anything longer is not a field path. */
const MAX_NAME = 64;
const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;
// protobuf-es: "cannot decode <what> <type> from <JSON|binary>: <reason>"
const DECODE = /^cannot decode (message|field|enum) ([A-Za-z0-9_.]+) from (JSON|binary):? ?(.*)$/s;

/**
 * A decoding error's message reduced to what it says about the request's shape, never its
 * content: the message or field path and the kind of error. protobuf-es and V8 quote the
 * request in their messages (a string value, the JSON around a syntax error); the gateway
 * neither logs nor echoes those quotes (README, "Errors"). Messages that are not decoding errors
 * are returned unchanged.
 *
 * - `cannot decode field <path> from JSON: expected string, got "…"` → `… expected string`
 * - `cannot decode enum <type> from JSON: "…"` → `… unknown value`
 * - `cannot decode message <type> from JSON: <V8 syntax error with a snippet>` → `… invalid JSON (at position n)`
 * - `… key "<name>" is unknown` keeps the name only when it is an identifier of at most 64 characters
 */
export function contentFreeDecodeMessage(message: string): string {
  if (message.startsWith("parse binary: ")) return `parse binary: ${binaryReason(message.slice(14))}`;
  const m = DECODE.exec(message);
  if (m === null) return message;
  const [, what, type, format, reason] = m as unknown as [string, string, string, string, string];
  const head = `cannot decode ${what} ${type} from ${format}`;
  if (format === "binary") return `${head}: ${binaryReason(reason)}`;
  if (what === "enum") return `${head}: unknown value`;
  if (what === "field") return `${head}: ${fieldReason(reason)}`;
  return `${head}: ${messageReason(reason)}`;
}

/** Binary decoding errors name wire types and field numbers only; anything quoted is dropped all the same. */
function binaryReason(reason: string): string {
  if (/utf-?8/i.test(reason)) return "invalid UTF-8";
  return unquoted(reason).slice(0, 120);
}

function fieldReason(reason: string): string {
  const item = /^(list item #\d+): (.*)$/s.exec(reason);
  if (item !== null) return `${item[1]}: ${fieldReason(item[2]!)}`;
  if (reason.startsWith("map entry ")) {
    const rest = reason.indexOf(": ");
    return rest < 0 ? "invalid map entry" : `map entry: ${fieldReason(reason.slice(rest + 2))}`;
  }
  if (reason.startsWith("invalid map key: ")) return `invalid map key: ${fieldReason(reason.slice(17))}`;
  if (reason.startsWith("duplicate map key")) return "duplicate map key";
  // "expected string, got 5", "expected number (int32), got 1.5", "expected Array, got …"
  const expected = /^(expected [^,:]+?)(, got .*|: .*)?$/s.exec(reason);
  if (expected !== null) return expected[1]!;
  return unquoted(reason).slice(0, 120);
}

function messageReason(reason: string): string {
  const key = /^(key|duplicate object key) "(.*)"( is unknown)?$/s.exec(reason);
  if (key !== null) {
    const name = key[2]!;
    const kind = key[1] === "key" ? "is unknown" : "is duplicated";
    return name.length <= MAX_NAME && IDENTIFIER.test(name) ? `key "${name}" ${kind}` : `a key ${kind}`;
  }
  if (/^maximum recursion depth of \d+ reached$/.test(reason)) return reason;
  // V8's JSON.parse messages all mention JSON; some quote the text around the error.
  if (/JSON/.test(reason)) {
    const at = /at position (\d+)/.exec(reason);
    return at === null ? "invalid JSON" : `invalid JSON at position ${at[1]}`;
  }
  // A value of the wrong kind for the message (a string, a number, an array …), as protobuf-es formats it.
  return "invalid value";
}

/** `text` with every double-quoted part replaced, so no quoted value survives. */
function unquoted(text: string): string {
  return text.replace(/"(?:[^"\\]|\\.)*"?/g, "<value>");
}

/**
 * The error to send and log instead of a decoding error: same code, the message reduced by
 * `contentFreeDecodeMessage`, no cause (the original's message and stack quote the request),
 * marked as the client's doing. Other errors are returned as they are.
 */
export function contentFreeError(error: ConnectError): ConnectError {
  if (!isDecodeMessage(error.rawMessage)) return error;
  const clean = new ConnectError(contentFreeDecodeMessage(error.rawMessage), error.code, error.metadata);
  clean.details = error.details;
  return markClientCaused(clean);
}

/** Codes whose errors are the gateway's own failures, logged at error level with their cause. */
export function isServerError(error: ConnectError): boolean {
  return (error.code === Code.Internal || error.code === Code.Unknown) && !isClientCaused(error);
}
