import type { DescMethod } from "@bufbuild/protobuf";
import { createContextValues } from "@connectrpc/connect";
import type { ContextValues } from "@connectrpc/connect";
import type { TLSSocket } from "node:tls";
import { kTlsSocket } from "../auth/client-certificate.js";
import { kRpcInfo, newRpcInfo } from "../observability/rpc-info.js";
import type { RpcInfo } from "../observability/rpc-info.js";

/**
 * One call as the pipeline's hooks see it, whichever path serves it: connect-node (through
 * `pipelineInterceptor`) or the gRPC fast path (its handler context is one). Hooks read the
 * request, may write response headers and trailers, and may put their own values in `values`
 * for the handler (an authenticated identity, later).
 */
export interface Call {
  /** The method called; its service is `method.parent`. */
  readonly method: DescMethod;
  /** True when the call has a streamed side (server streaming here): the log line counts its messages. */
  readonly streaming: boolean;
  /** The protocol on the wire: "grpc", "grpc-web" or "connect". */
  readonly protocolName: string;
  /** The request headers (no HTTP/2 pseudo-headers). */
  readonly requestHeader: Headers;
  /**
   * Response headers. Write them in `begin`: a stream's headers leave with its first message,
   * and connect-node sends those of a call that fails before answering from the handler's own
   * context, which an interceptor cannot reach (the trailers carry what a hook wrote there).
   */
  readonly responseHeader: Headers;
  /** Response trailers, sent on success and on error (with the error's metadata and status added). */
  readonly responseTrailer: Headers;
  /** The call's context values, shared with the handler (`HandlerContext.values`). */
  readonly values: ContextValues;
  /** Facts for the log line: request id, peer address, model, node, messages. */
  readonly info: RpcInfo;
  /** Aborted when the call ends, is cancelled, passes its deadline or the gateway shuts down. */
  readonly signal: AbortSignal;
}

/**
 * The context values a call starts with: its RpcInfo, with the peer address (undefined:
 * unknown), and the TLS connection it came on, if any (mTLS reads the client certificate from
 * it). Both paths make them before the pipeline runs (connect-node through its `contextValues`
 * option), because only the transport knows the socket.
 */
export function callValues(peer: string | undefined, tls?: TLSSocket): ContextValues {
  const values = createContextValues().set(kRpcInfo, newRpcInfo(peer));
  if (tls !== undefined) values.set(kTlsSocket, tls);
  return values;
}

/** The protocol a request speaks, from its content type (a Connect GET has none). */
export function protocolOf(contentType: string | null): string {
  if (contentType?.startsWith("application/grpc-web")) return "grpc-web";
  if (contentType?.startsWith("application/grpc")) return "grpc";
  return "connect";
}
