import { randomBytes } from "node:crypto";
import type { CallHook } from "./pipeline.js";

/** The header a client names its call with, and in which the gateway echoes the id. */
export const REQUEST_ID_HEADER = "x-request-id";

/** Longest client id kept: longer ones are replaced, so a client cannot flood the logs. */
const MAX_REQUEST_ID_LENGTH = 128;

/**
 * The request id policy: a client's `x-request-id` is kept when it is 1 to 128 visible ASCII
 * characters (0x21 to 0x7e: no spaces, no control characters, nothing a log reader could
 * misread); otherwise undefined, and the gateway makes one.
 */
export function acceptedRequestId(given: string | null | undefined): string | undefined {
  if (given === null || given === undefined) return undefined;
  if (given.length === 0 || given.length > MAX_REQUEST_ID_LENGTH) return undefined;
  for (let i = 0; i < given.length; i++) {
    const c = given.charCodeAt(i);
    if (c < 0x21 || c > 0x7e) return undefined;
  }
  return given;
}

/**
 * Generated ids: `prefix-counter` (base 36). Cheaper per call than random ids; the prefix,
 * random per process by default, keeps the ids of replicas apart.
 */
export function sequentialRequestIds(prefix: string = randomBytes(4).toString("hex")): () => string {
  let counter = 0;
  return () => `${prefix}-${(++counter).toString(36)}`;
}

/**
 * Names every call: the client's id (see `acceptedRequestId`) or a new one, into the call's
 * RpcInfo (for the log line) and echoed in the response headers and trailers, so a client can
 * quote it even from an error's trailers. Nothing to do when the call ends.
 */
export function requestIdHook(newId: () => string = sequentialRequestIds()): CallHook {
  return {
    begin(call) {
      const id = acceptedRequestId(call.requestHeader.get(REQUEST_ID_HEADER)) ?? newId();
      call.info.requestId = id;
      call.responseHeader.set(REQUEST_ID_HEADER, id);
      call.responseTrailer.set(REQUEST_ID_HEADER, id);
      return undefined;
    },
  };
}
