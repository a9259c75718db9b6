import type * as http from "node:http";
import { constants as h2constants } from "node:http2";
import type * as http2 from "node:http2";
import type { DescMethod } from "@bufbuild/protobuf";
import { ConnectError, createConnectRouter } from "@connectrpc/connect";
import type { ContextValues } from "@connectrpc/connect";
import { universalRequestFromNodeRequest, universalResponseToNodeResponse } from "@connectrpc/connect-node";
import type { ConnectNodeAdapterOptions, connectNodeAdapter } from "@connectrpc/connect-node";
import { createAsyncIterable, encodeEnvelope } from "@connectrpc/connect/protocol";
import type { UniversalHandler, UniversalServerRequest, UniversalServerResponse } from "@connectrpc/connect/protocol";
import { codeFromHttpStatus, errorFromJsonBytes, errorToJsonBytes } from "@connectrpc/connect/protocol-connect";
import { findTrailerError, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import { trailerFlag, trailerParse, trailerSerialize } from "@connectrpc/connect/protocol-grpc-web";
import { contentFreeError } from "../errors/client-errors.js";
import type { Logger } from "../observability/logger.js";
import { kRpcInfo, newRpcInfo } from "../observability/rpc-info.js";
import type { RpcInfo } from "../observability/rpc-info.js";
import { protocolOf } from "../pipeline/call.js";
import type { Call } from "../pipeline/call.js";
import { pipelineInterceptor } from "../pipeline/connect-interceptor.js";
import type { Pipeline } from "../pipeline/pipeline.js";
import { createThrottledReport } from "./connection-limits.js";
import { capDeadlineHeaders } from "./deadline-header.js";
import type { BodyWait, RequestBodyWaits } from "./request-body-waits.js";

/** What connect-node's handler needs from the gateway, beyond connect-node's own options. */
export interface ConnectHandlerOptions extends ConnectNodeAdapterOptions {
  /** The call pipeline: run by the interceptor (first, before any in `interceptors`), and for calls failing before it. */
  pipeline: Pipeline;
  /** Each call's context values (its RpcInfo with the peer), made as the request arrives. */
  contextValues: (req: http.IncomingMessage | http2.Http2ServerRequest) => ContextValues;
  /** Longest deadline a call may have (`MAX_DEADLINE_MS`): longer deadline headers are capped to it. */
  maxDeadlineMs: number;
  /** The register of calls waiting for their request body, shared with the gRPC fast path. */
  bodies: RequestBodyWaits;
  /** Where failed response writes are reported (one line per 10 s with their count). Default: nowhere. */
  log?: Pick<Logger, "warn">;
}

/** A request listener for `http` and `http2` servers, of the type connect-node's `connectNodeAdapter` returns. */
export type NodeRequestHandler = ReturnType<typeof connectNodeAdapter>;

/** Failed response writes are reported at most this often, with their count. */
const REPORT_INTERVAL_MS = 10_000;

/** Statuses connect-node answers before any call exists (wrong method, content type, HTTP version): not RPCs. */
const NOT_A_CALL = new Set([405, 415, 505]);

/**
 * connect-node's request listener (`connectNodeAdapter`, rebuilt from its public parts) with
 * what the gateway needs around each call, so every protocol it serves (gRPC-Web, Connect,
 * compressed gRPC) behaves as the fast path does (README, "Operating it"):
 *
 * - deadline headers longer than `maxDeadlineMs` are capped before connect-node reads them
 *   (it would refuse them, or arm a timer that overflows and fires at once);
 * - the request body is read under the shared body register: it must arrive within
 *   `REQUEST_BODY_TIMEOUT_MS` of the headers and within the deadline, and a call may be shed
 *   when too many wait. connect-node reads a unary body before any interceptor and does not
 *   bound the read by the deadline; the error surfaces as the call's, in the protocol's form;
 * - a call that fails before connect-node runs its interceptors (a unary request that does not
 *   arrive or decode) still goes through the pipeline, so it gets its log line and request id,
 *   and its error is made content-free (`contentFreeError`) like every decoding error;
 * - JSON is decoded strictly, as protobuf's JSON mapping specifies: an unknown field or enum
 *   name is INVALID_ARGUMENT, as an unknown enum number is (connect-es ignores both by default);
 * - once the answer is sent, a body still unread does not hold the stream (HTTP/2) or the
 *   connection (HTTP/1.1) open; failed writes are counted in a throttled `warn` line instead of
 *   a stack trace on stderr per call.
 */
export function createConnectHandler(options: ConnectHandlerOptions): NodeRequestHandler {
  const begun = new WeakSet<ContextValues>();
  const tracked: Pipeline = {
    begin(call) {
      begun.add(call.values);
      return options.pipeline.begin(call);
    },
    admit: (call) => options.pipeline.admit(call),
  };
  const router = createConnectRouter({
    ...options,
    jsonOptions: { ignoreUnknownFields: false, ...options.jsonOptions },
    interceptors: [pipelineInterceptor(tracked), ...(options.interceptors ?? [])],
  });
  options.routes(router);
  const prefix = options.requestPathPrefix ?? "";
  const paths = new Map<string, UniversalHandler>(router.handlers.map((h) => [prefix + h.requestPath, h]));
  let lastFailure = "";
  const failures = createThrottledReport(REPORT_INTERVAL_MS, (count) =>
    options.log?.warn({ failed: count, error: lastFailure }, "writing responses failed"),
  );

  return (req, res) => {
    const handler = paths.get(req.url?.split("?", 2)[0] ?? "");
    if (handler === undefined) {
      res.writeHead(404);
      res.end();
      return;
    }
    const values = options.contextValues(req);
    const uReq = universalRequestFromNodeRequest(req, res, undefined, values);
    const deadlineMs = capDeadlineHeaders(uReq.header, options.maxDeadlineMs);
    const kind = handler.method.methodKind;
    const streamingInput = kind === "client_streaming" || kind === "bidi_streaming";
    const body = watchBody(uReq, options.bodies, deadlineMs, streamingInput, () => {
      // HTTP/1.1: the rest of the body will not be read, so the connection cannot serve another request.
      if (!("stream" in req) && !res.headersSent) res.setHeader("connection", "close");
    });
    // Once the answer is out, a body still unread (a refusal, a body that stalled) holds neither its
    // place nor the HTTP/2 stream: Node ends a stream only when both sides have, and connect-node's
    // write promise waits for that. The trailers are the answer's last frame: the stream is closed
    // (RST_STREAM NO_ERROR, after them) as soon as they are submitted.
    if ("stream" in req) {
      const stream = req.stream;
      stream.once("wantTrailers", () => {
        setImmediate(() => {
          body.wait.done();
          if (!req.complete && !stream.closed) stream.close(h2constants.NGHTTP2_NO_ERROR);
        });
      });
    }
    handler({ ...uReq, body: body.iterable })
      .then(async (uRes) => {
        const answer = begun.has(values) ? uRes : await answerLate(options, handler.method, uReq, uRes, values);
        await universalResponseToNodeResponse(answer, res);
      })
      .catch((e: unknown) => {
        lastFailure = e instanceof Error ? e.message : String(e);
        failures.add();
      })
      .finally(() => body.wait.done());
  };
}

/**
 * The request body as connect-node reads it, under the body register; `wait` is the call's place
 * there. A call whose input is a stream (client streaming, bidi: reflection) leaves the register
 * with its first bytes, since its body ends only with the call.
 */
function watchBody(
  uReq: UniversalServerRequest,
  bodies: RequestBodyWaits,
  deadlineMs: number | undefined,
  streamingInput: boolean,
  onExpire: () => void,
): { iterable: AsyncIterable<Uint8Array>; wait: BodyWait } {
  let failure: ConnectError | undefined;
  let fail: ((e: ConnectError) => void) | undefined;
  const expired = new Promise<never>((_, reject) => (fail = reject));
  expired.catch(() => {
    // Raced against each read; nobody else waits for it.
  });
  const wait = bodies.wait((error) => {
    failure = error;
    onExpire();
    fail?.(error);
  }, deadlineMs);
  const source = uReq.body;
  if (!isAsyncIterable(source)) {
    wait.done();
    return { iterable: createAsyncIterable([]), wait };
  }
  const iterable: AsyncIterable<Uint8Array> = {
    [Symbol.asyncIterator]() {
      const it = source[Symbol.asyncIterator]();
      return {
        async next() {
          if (failure !== undefined) throw failure;
          const r = await Promise.race([it.next(), expired]);
          if (r.done === true || streamingInput) wait.done();
          else wait.progress();
          return r;
        },
        return(value?: unknown) {
          wait.done();
          return it.return?.(value) ?? Promise.resolve({ done: true as const, value: undefined });
        },
      };
    },
  };
  return { iterable, wait };
}

function isAsyncIterable(v: unknown): v is AsyncIterable<Uint8Array> {
  return typeof v === "object" && v !== null && Symbol.asyncIterator in v;
}

/**
 * The answer to a call that connect-node ended before its interceptors ran (a unary request
 * whose body did not arrive or decode, or whose deadline header is invalid): the error is read
 * back from the answer as the protocol encodes it, made content-free, and the call goes
 * through the pipeline (its log line, its request id), then the answer is encoded again with
 * the hooks' headers and trailers. Answers that are not a call's (405, 415, 505) pass as they are.
 */
async function answerLate(
  options: ConnectHandlerOptions,
  method: DescMethod,
  uReq: UniversalServerRequest,
  uRes: UniversalServerResponse,
  values: ContextValues,
): Promise<UniversalServerResponse> {
  if (NOT_A_CALL.has(uRes.status)) return uRes;
  const protocol = protocolOf(uReq.header.get("content-type"));
  let error: ConnectError | undefined;
  let bytes: Uint8Array | undefined;
  let trailer: Headers | undefined;
  if (protocol === "grpc") {
    trailer = uRes.trailer;
    error = trailer === undefined ? undefined : findTrailerError(trailer);
  } else {
    bytes = await readAll(uRes.body);
    if (protocol === "connect") {
      if (uRes.status !== 200) {
        error = errorFromJsonBytes(bytes, undefined, new ConnectError("", codeFromHttpStatus(uRes.status)));
      }
    } else {
      trailer = trailerOf(bytes);
      error = trailer === undefined ? undefined : findTrailerError(trailer);
    }
  }
  const clean = error === undefined ? undefined : contentFreeError(error);
  const call = new LateCall(method, uReq, values);
  try {
    // A waiting hook (authentication checking a new token) answers with a promise.
    const end = options.pipeline.begin(call);
    (end instanceof Promise ? await end : end)(clean);
  } catch {
    // Refused by a hook: the hooks before it have ended (and logged) with its refusal.
  }
  const header = new Headers(uRes.header);
  call.header?.forEach((value, name) => {
    header.set(name, value);
  });
  if (protocol === "connect") {
    let body = bytes ?? new Uint8Array(0);
    if (clean !== undefined) {
      body = errorToJsonBytes(clean, options.jsonOptions);
      header.set("content-length", String(body.byteLength));
    }
    call.trailer?.forEach((value, name) => {
      header.set(`trailer-${name}`, value);
    });
    return { ...uRes, header, body: createAsyncIterable([body]) };
  }
  const out = new Headers(trailer);
  for (const name of ["grpc-status", "grpc-message", "grpc-status-details-bin"]) out.delete(name);
  call.trailer?.forEach((value, name) => {
    out.set(name, value);
  });
  setTrailerStatus(out, clean);
  if (protocol === "grpc") return { ...uRes, header, trailer: out };
  return { ...uRes, header, body: createAsyncIterable([encodeEnvelope(trailerFlag, trailerSerialize(out))]) };
}

/** The trailer block of a gRPC-Web answer (its envelope flagged 0x80), or undefined. */
function trailerOf(bytes: Uint8Array): Headers | undefined {
  let at = 0;
  while (at + 5 <= bytes.length) {
    const flags = bytes[at]!;
    const length = new DataView(bytes.buffer, bytes.byteOffset + at + 1, 4).getUint32(0);
    const data = bytes.subarray(at + 5, at + 5 + length);
    if ((flags & trailerFlag) === trailerFlag) return trailerParse(data);
    at += 5 + length;
  }
  return undefined;
}

async function readAll(body: UniversalServerResponse["body"]): Promise<Uint8Array> {
  if (body === undefined) return new Uint8Array(0);
  if (body instanceof Uint8Array) return body;
  const chunks: Uint8Array[] = [];
  for await (const chunk of body) chunks.push(chunk);
  return Buffer.concat(chunks);
}

/** A call connect-node ended before the interceptors: what the hooks need to see of it. */
class LateCall implements Call {
  readonly method: DescMethod;
  readonly streaming: boolean;
  readonly protocolName: string;
  readonly requestHeader: Headers;
  readonly values: ContextValues;
  readonly info: RpcInfo;
  readonly signal: AbortSignal;
  header: Headers | undefined;
  trailer: Headers | undefined;

  constructor(method: DescMethod, uReq: UniversalServerRequest, values: ContextValues) {
    this.method = method;
    this.streaming = method.methodKind !== "unary";
    this.protocolName = protocolOf(uReq.header.get("content-type"));
    this.requestHeader = uReq.header;
    this.values = values;
    this.signal = uReq.signal;
    let info = values.get(kRpcInfo);
    if (info === undefined) {
      info = newRpcInfo(undefined);
      values.set(kRpcInfo, info);
    }
    this.info = info;
  }

  get responseHeader(): Headers {
    return (this.header ??= new Headers());
  }

  get responseTrailer(): Headers {
    return (this.trailer ??= new Headers());
  }
}
