import { constants as h2constants } from "node:http2";
import type { IncomingHttpHeaders, OutgoingHttpHeaders, ServerHttp2Stream } from "node:http2";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type {
  DescMessage,
  DescMethod,
  DescMethodServerStreaming,
  DescMethodUnary,
  MessageInitShape,
  MessageShape,
} from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { HandlerContext } from "@connectrpc/connect";
import { parseTimeout, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import { toConnectError } from "../errors/to-connect-error.js";
import type { MessageSink } from "../services/message-sink.js";
import { callEnded, clientCancelled, deadlineExceeded } from "../errors/domain-errors.js";
import { kRpcInfo } from "../observability/rpc-info.js";
import { LiteHeaders } from "./lite-headers.js";
import { callValues } from "../pipeline/call.js";
import type { Call } from "../pipeline/call.js";
import type { CallEnd, Pipeline } from "../pipeline/pipeline.js";
import { FRAME_PREFIX_BYTES, frame, frameMessageBytes, singleMessage } from "./grpc-frame.js";
import { createLiveCalls } from "./live-calls.js";
import type { LiveCall, LiveCalls } from "./live-calls.js";
import { createRequestBodyWaits } from "./request-body-waits.js";
import { sessionPeer } from "./session-peer.js";
import type { SessionPeer } from "./session-peer.js";
import type { BodyWait, RequestBodyWaits } from "./request-body-waits.js";
import { MAX_TIMER_MS } from "./deadline-header.js";

/**
 * One method the fast path serves. Built with `unaryRoute` or `serverStreamingRoute`, which keep
 * the request and response types together; the fast path itself only sees bytes.
 */
export interface FastRoute {
  /** The method, for its path and the HandlerContext. */
  readonly method: DescMethod;
  /** Decodes the request and runs the call, writing each response message as a gRPC frame into `sink`. */
  run(request: Uint8Array, ctx: HandlerContext, sink: MessageSink<Buffer>): Promise<void>;
}

/**
 * A unary method for the fast path: `impl` is the same function connect-node serves.
 * `encodeFrame` may encode the reply by hand (default: protobuf-es).
 */
export function unaryRoute<I extends DescMessage, O extends DescMessage>(
  method: DescMethodUnary<I, O>,
  impl: (req: MessageShape<I>, ctx: HandlerContext) => Promise<MessageInitShape<O>> | MessageInitShape<O>,
  encodeFrame: (message: MessageInitShape<O>) => Buffer = (m) =>
    frame(toBinary(method.output, create(method.output, m))),
): FastRoute {
  return {
    method,
    async run(request, ctx, sink) {
      const res = await impl(decode(method.input, request), ctx);
      sink.send(encodeFrame(res));
    },
  };
}

/**
 * A server-streaming method for the fast path: `impl` writes its messages into a sink.
 * `encodeFrame` may encode the common messages by hand (undefined = the generic way).
 */
export function serverStreamingRoute<I extends DescMessage, O extends DescMessage>(
  method: DescMethodServerStreaming<I, O>,
  impl: (req: MessageShape<I>, ctx: HandlerContext, sink: MessageSink<MessageInitShape<O>>) => Promise<void>,
  encodeFrame: (message: MessageInitShape<O>) => Buffer | undefined = () => undefined,
): FastRoute {
  return {
    method,
    run(request, ctx, frames) {
      const req = decode(method.input, request);
      return impl(req, ctx, {
        send: (message) =>
          frames.send(encodeFrame(message) ?? frame(toBinary(method.output, create(method.output, message)))),
        drained: () => frames.drained(),
      });
    },
  };
}

function decode<I extends DescMessage>(schema: I, bytes: Uint8Array): MessageShape<I> {
  try {
    return fromBinary(schema, bytes);
  } catch (e) {
    // As connect-node (and grpc-go) answer a request they cannot parse.
    throw new ConnectError(`parse binary: ${e instanceof Error ? e.message : String(e)}`, Code.Internal);
  }
}

/** What the fast path needs from the gateway. */
export interface GrpcFastPathOptions {
  /** The methods it serves; every other request is left to connect-node. */
  routes: readonly FastRoute[];
  /** Largest request message accepted, in bytes (as connect-node's `readMaxBytes`). */
  readMaxBytes: number;
  /** Largest response message sent, in bytes (as connect-node's `writeMaxBytes`). */
  writeMaxBytes: number;
  /** Aborts every running call (graceful shutdown's last step), as connect-node's `shutdownSignal`. */
  shutdownSignal: AbortSignal;
  /**
   * The call hooks (request id, logging, cap, ...), the same pipeline connect-node runs through
   * `pipelineInterceptor`: begun as each call starts, before its request is read (a refusal is
   * answered at once), ended with the error the client is sent.
   */
  pipeline: Pipeline;
  /**
   * Longest deadline a call may have: a longer `grpc-timeout` is capped to it (README,
   * "Operating it"). @default 2147483647 (the longest a Node timer can wait)
   */
  maxDeadlineMs?: number;
  /**
   * The register of calls waiting for their request body, shared with connect-node's path
   * (timeout, shedding). @default its own, with the default limits
   */
  bodies?: RequestBodyWaits;
}

/** Serves some gRPC calls straight on HTTP/2 streams. */
export interface GrpcFastPath {
  /** Takes the stream and returns true when it is a call the fast path serves; false leaves it untouched. */
  handle(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): boolean;
}

const CONTENT_TYPE = "application/grpc+proto";

/**
 * The gRPC protocol (binary protobuf, uncompressed requests) for a few hot methods, on the raw
 * HTTP/2 stream: length-prefixed messages written as they are produced, backpressure from
 * `write()`'s answer, trailers at the end. Generate, Chat and Embed go through here; connect-node
 * keeps everything else (gRPC-Web, Connect, JSON, compressed requests, other services).
 *
 * Why: connect-node's pipeline stacks async iterables per call (a dozen generators, about 130
 * closures and contexts per open stream, several promises per message) and builds a DOMException
 * per call; on a 2-core box that was most of the gateway's CPU per request and of its memory per
 * open stream. Behaviour is the same as connect-node's gRPC handler: the same HandlerContext
 * (deadline from `grpc-timeout`, client cancel, shutdown), the same call pipeline, the same
 * trailers (the handler's `responseTrailer`, then the error's metadata and status, as
 * `setTrailerStatus` writes them), the same size limits and protocol errors.
 */
export function createGrpcFastPath(options: GrpcFastPathOptions): GrpcFastPath {
  const routes = new Map(options.routes.map((r) => [`/${r.method.parent.typeName}/${r.method.name}`, r]));
  const bodies = options.bodies ?? createRequestBodyWaits();
  const live = createLiveCalls(options.shutdownSignal);
  const maxDeadlineMs = Math.min(options.maxDeadlineMs ?? MAX_TIMER_MS, MAX_TIMER_MS);
  return {
    handle(stream, headers) {
      const route = routes.get(headers[":path"] ?? "");
      if (route === undefined || headers[":method"] !== "POST") return false;
      const type = headers["content-type"];
      if (type !== "application/grpc" && type !== CONTENT_TYPE) return false;
      const encoding = headers["grpc-encoding"];
      if (encoding !== undefined && encoding !== "identity") return false;
      serve(stream, headers, route, options, bodies, live, maxDeadlineMs);
      return true;
    },
  };
}

function serve(
  stream: ServerHttp2Stream,
  headers: IncomingHttpHeaders,
  route: FastRoute,
  options: GrpcFastPathOptions,
  bodies: RequestBodyWaits,
  live: LiveCalls,
  maxDeadlineMs: number,
): void {
  const timeout = parseTimeout(single(headers["grpc-timeout"]) ?? null, Number.MAX_SAFE_INTEGER);
  const peer = sessionPeer(stream.session);
  // The deadline runs from now (the headers), body included; a longer one is capped, never overflowing a timer.
  const ctx = callContext(
    route.method,
    headers,
    timeout.timeoutMs === undefined ? undefined : Math.min(timeout.timeoutMs, maxDeadlineMs),
    live,
    peer,
  );
  const canceled = clientCancelled;

  let responded = false;
  let ended = false;
  let requestRead = false;
  let trailers: OutgoingHttpHeaders = { "grpc-status": "0" };
  let drain: { resolve(): void; reject(e: unknown): void } | undefined;

  stream.on("error", () => {
    // Reported through "close"; without a listener an error would crash the process.
  });
  stream.once("close", () => {
    if (!ended) ctx.abort(canceled());
    const d = drain;
    drain = undefined;
    d?.reject(canceled());
  });

  const respond = (): void => {
    responded = true;
    stream.respond(responseHeaders(ctx.header, { ":status": 200, "content-type": CONTENT_TYPE }), {
      waitForTrailers: true,
    });
    stream.once("wantTrailers", () => stream.sendTrailers(trailers));
  };
  // Messages written but not yet taken by HTTP/2 (flow control, a full socket). `send` answers
  // false once a message is written while an earlier one is still untaken; the producer then
  // sends the rest of the upstream batch in hand and awaits `drained()`, which resolves when
  // none is left. So a stream holds the untaken message, the one just written and at most the
  // rest of one batch; tokens that arrive meanwhile go out coalesced in the next message instead
  // of queueing up to the stream's 16 KB buffer as hundreds of tiny frames.
  let unsent = 0;
  const written = (): void => {
    unsent--;
    if (unsent > 0) return;
    const d = drain;
    drain = undefined;
    d?.resolve();
  };
  const sink: MessageSink<Buffer> = {
    send(frame) {
      if (stream.destroyed || stream.closed) throw canceled();
      const size = frameMessageBytes(frame);
      if (size > options.writeMaxBytes) {
        throw new ConnectError(
          `message size ${size} is larger than configured writeMaxBytes ${options.writeMaxBytes}`,
          Code.ResourceExhausted,
        );
      }
      if (!responded) respond();
      unsent++;
      stream.write(frame, written);
      return unsent <= 1;
    },
    drained() {
      if (stream.destroyed || stream.closed) return Promise.reject(canceled());
      if (unsent === 0) return Promise.resolve();
      return new Promise<void>((resolve, reject) => (drain = { resolve, reject }));
    },
  };

  let end: CallEnd | undefined;
  const finish = (error: ConnectError | undefined): void => {
    if (ended) return;
    ended = true;
    end?.(error);
    if (!stream.destroyed && !stream.closed) {
      // As connect-node's gRPC handler: the response trailers (the hooks' and the handler's),
      // the error's metadata appended, then the status.
      setTrailerStatus(ctx.responseTrailer, error);
      if (!responded) {
        // Trailers-only: status in the one HEADERS frame, as gRPC allows for a call with no messages.
        stream.respond(
          ctx.responseTrailer.outgoing(responseHeaders(ctx.header, { ":status": 200, "content-type": CONTENT_TYPE })),
          { endStream: true },
        );
        // A request we stopped reading (too large, refused) must not keep the stream open.
        if (!requestRead) stream.close(h2constants.NGHTTP2_NO_ERROR);
      } else {
        trailers = ctx.responseTrailer.outgoing();
        stream.end();
      }
    }
    ctx.abort(callEnded());
  };

  let begun: CallEnd | Promise<CallEnd>;
  try {
    begun = options.pipeline.begin(ctx);
  } catch (e) {
    // Refused by a hook: the hooks before it have ended with this error (a ConnectError).
    finish(e as ConnectError);
    return;
  }
  const run = async (): Promise<void> => {
    // After the pipeline, as connect-node raises it inside the interceptors: the refusal is logged.
    if (timeout.error) throw timeout.error;
    const body = await readRequest(stream, options.readMaxBytes, ctx.signal, bodies);
    requestRead = true;
    // Counted against the concurrency cap from here: a call without a body holds no slot.
    options.pipeline.admit(ctx);
    const kind = route.method.methodKind === "unary" ? "unary" : "server_streaming";
    await route.run(singleMessage(body, options.readMaxBytes, kind), ctx, sink);
  };
  const start = (): void => {
    run().then(
      () => finish(undefined),
      (e: unknown) => finish(toConnectError(e, ctx.signal)),
    );
  };
  if (typeof begun === "function") {
    end = begun;
    start();
  } else {
    // A hook is waiting (authentication verifying a new token): the call starts once it admits.
    begun.then(
      (admitted) => {
        end = admitted;
        start();
      },
      (e: unknown) => finish(e as ConnectError),
    );
  }
}

/**
 * One call on the fast path: the handler's HandlerContext and the pipeline's Call in one object
 * (nothing more to allocate per call for the hooks), with what the fast path itself needs.
 */
interface CallContext extends HandlerContext, Call {
  /** Ends the call's signal (deadline timer and shutdown listener freed); the first reason wins. */
  abort(reason: unknown): void;
  /** The response headers if anyone wrote some (none: no empty Headers made just to be copied). */
  readonly header: LiteHeaders | undefined;
  /** The response trailers, as the handler and the hooks wrote them (made on first use). */
  readonly responseTrailer: LiteHeaders;
}

/**
 * The same HandlerContext connect-node builds (deadline, shutdown, headers, values), with one
 * AbortController instead of three linked ones, and response headers made only when used.
 */
function callContext(
  method: DescMethod,
  headers: IncomingHttpHeaders,
  timeoutMs: number | undefined,
  live: LiveCalls,
  peer: SessionPeer,
): CallContext {
  const controller = new AbortController();
  const deadline = timeoutMs === undefined ? undefined : Date.now() + timeoutMs;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let entry: LiveCall | undefined;
  function abort(reason: unknown): void {
    clearTimeout(timer);
    if (entry !== undefined) live.remove(entry);
    if (!controller.signal.aborted) controller.abort(reason);
  }
  // Aborted at once when shutdown has begun; else by the one shutdown listener (`live-calls.ts`).
  entry = live.add(abort);
  if (timeoutMs !== undefined) {
    const expire = (): void => abort(deadlineExceeded());
    if (timeoutMs <= 0) expire();
    else timer = setTimeout(expire, timeoutMs);
  }
  let responseHeader: LiteHeaders | undefined;
  let responseTrailer: LiteHeaders | undefined;
  const values = callValues(peer.address, peer.tls);
  return {
    method,
    service: method.parent,
    streaming: method.methodKind !== "unary",
    signal: controller.signal,
    timeoutMs: () => (deadline === undefined ? undefined : deadline - Date.now()),
    requestMethod: "POST",
    requestHeader: new LiteHeaders(headers),
    get responseHeader() {
      return (responseHeader ??= new LiteHeaders());
    },
    get responseTrailer() {
      return (responseTrailer ??= new LiteHeaders());
    },
    get header() {
      return responseHeader;
    },
    protocolName: "grpc",
    values,
    info: values.get(kRpcInfo)!,
    url: `http://${single(headers[":authority"]) ?? "localhost"}${single(headers[":path"]) ?? ""}`,
    abort,
  };
}

/**
 * Reads the whole request body (one enveloped message), bounded by the limit, the call's signal
 * and the body register (`REQUEST_BODY_TIMEOUT_MS`, shedding).
 */
function readRequest(
  stream: ServerHttp2Stream,
  readMaxBytes: number,
  signal: AbortSignal,
  bodies: RequestBodyWaits,
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let wait: BodyWait | undefined;
    const cleanup = (): void => {
      stream.off("data", onData);
      stream.off("end", onEnd);
      signal.removeEventListener("abort", onAbort);
      wait?.done();
    };
    const onData = (chunk: Buffer): void => {
      wait?.progress();
      size += chunk.length;
      chunks.push(chunk);
      if (size > readMaxBytes + FRAME_PREFIX_BYTES) {
        cleanup();
        stream.pause();
        reject(
          new ConnectError(
            `message size is larger than configured readMaxBytes ${readMaxBytes}`,
            Code.ResourceExhausted,
          ),
        );
      }
    };
    const onEnd = (): void => {
      cleanup();
      resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
    };
    const onAbort = (): void => {
      cleanup();
      reject(signal.reason);
    };
    if (signal.aborted) return onAbort();
    wait = bodies.wait((error) => {
      cleanup();
      stream.pause();
      reject(error);
    });
    stream.on("data", onData);
    stream.once("end", onEnd);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/** `base` with the handler's and hooks' response headers added (written into `base`: one object per response). */
function responseHeaders(headers: LiteHeaders | undefined, base: OutgoingHttpHeaders): OutgoingHttpHeaders {
  return headers === undefined ? base : headers.outgoing(base);
}

function single(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}
