import type { DescMethod } from "@bufbuild/protobuf";
import { ConnectError } from "@connectrpc/connect";
import type { ContextValues, Interceptor, StreamRequest, UnaryRequest } from "@connectrpc/connect";
import { clientCancelled } from "../errors/domain-errors.js";
import { toConnectError } from "../errors/to-connect-error.js";
import { kRpcInfo, newRpcInfo } from "../observability/rpc-info.js";
import type { RpcInfo } from "../observability/rpc-info.js";
import { watchStream } from "../util/watch-stream.js";
import { protocolOf } from "./call.js";
import type { Call } from "./call.js";
import type { CallEnd, Pipeline } from "./pipeline.js";

/**
 * Runs the pipeline for every call connect-node serves (gRPC-Web, Connect, compressed gRPC,
 * every service the fast path leaves), as the one interceptor: the same hooks, errors, headers,
 * trailers and log line as the fast path.
 *
 * A call ends when a unary answer is ready, a stream's last message was taken, the call
 * failed, or (streams) its signal fired: connect-node aborts it when the client goes away,
 * also before the stream was read at all. The error a hook's end sees is the one sent: a
 * foreign error becomes a ConnectError here (`toConnectError`, as the fast path does),
 * instead of later in connect-node.
 */
export function pipelineInterceptor(pipeline: Pipeline): Interceptor {
  return (next) => async (req) => {
    const call = new ConnectCall(req);
    let end: CallEnd;
    try {
      const begun = pipeline.begin(call);
      end = typeof begun === "function" ? begun : await begun;
    } catch (e) {
      // Refused: the hooks that ran have ended with this error (a ConnectError, see Pipeline).
      throw call.withTrailers(e as ConnectError);
    }
    let res;
    try {
      // connect-node runs interceptors of unary calls once the request message has arrived, and
      // of streaming calls before: those are admitted when their first message arrives.
      if (req.stream) req = { ...req, message: admitOnFirst(req.message, () => pipeline.admit(call)) };
      else pipeline.admit(call);
      res = await next(req);
    } catch (e) {
      const error = toConnectError(e, req.signal);
      end(error);
      throw call.withTrailers(error);
    }
    call.answered(res.header, res.trailer);
    if (!res.stream) {
      end(undefined);
      return res;
    }
    // The error the stream failed with, as sent (see mapError).
    let failure: ConnectError | undefined;
    const finish = (error: ConnectError | undefined): void => {
      req.signal.removeEventListener("abort", onAbort);
      end(error);
    };
    const onAbort = (): void => finish(gone(req.signal));
    req.signal.addEventListener("abort", onAbort, { once: true });
    return {
      ...res,
      message: watchStream(res.message, {
        onEnd: ({ error, abandoned }) => {
          if (error !== undefined) failure = toConnectError(error, req.signal);
          finish(abandoned ? gone(req.signal) : failure);
        },
        // The trailers already hold the hooks' (the response's own Headers): only the conversion is left.
        mapError: (error) => failure ?? toConnectError(error, req.signal),
      }),
    };
  };
}

/** `messages`, running `admit` when the first one (or the end of an empty stream) arrives; a refusal fails the read. */
function admitOnFirst<T>(messages: AsyncIterable<T>, admit: () => void): AsyncIterable<T> {
  return {
    [Symbol.asyncIterator]() {
      const it = messages[Symbol.asyncIterator]();
      let admitted = false;
      return {
        async next() {
          const r = await it.next();
          if (!admitted) {
            admitted = true;
            admit();
          }
          return r;
        },
        return: (value?: unknown) => it.return?.(value) ?? Promise.resolve({ done: true as const, value: undefined }),
      };
    },
  };
}

/** Why a stream ended early: the signal's ConnectError (deadline, shutdown, reset code) or a client cancel. */
function gone(signal: AbortSignal): ConnectError {
  return signal.reason instanceof ConnectError ? signal.reason : clientCancelled();
}

/**
 * A connect-node call as the hooks see it. Until the handler answers, the hooks' response
 * headers and trailers are kept here (an interceptor cannot reach the handler context's
 * before); `answered` moves them into the response's, where later writes go straight.
 */
class ConnectCall implements Call {
  readonly method: DescMethod;
  readonly streaming: boolean;
  readonly requestHeader: Headers;
  readonly values: ContextValues;
  readonly info: RpcInfo;
  readonly signal: AbortSignal;
  #header: Headers | undefined;
  #trailer: Headers | undefined;

  constructor(req: UnaryRequest | StreamRequest) {
    this.method = req.method;
    this.streaming = req.stream;
    this.requestHeader = req.header;
    this.values = req.contextValues;
    this.signal = req.signal;
    let info = req.contextValues.get(kRpcInfo);
    if (info === undefined) {
      // An adapter set up without `callValues` (tests): the peer is unknown.
      info = newRpcInfo(undefined);
      req.contextValues.set(kRpcInfo, info);
    }
    this.info = info;
  }

  get protocolName(): string {
    return protocolOf(this.requestHeader.get("content-type"));
  }

  get responseHeader(): Headers {
    return (this.#header ??= new Headers());
  }

  get responseTrailer(): Headers {
    return (this.#trailer ??= new Headers());
  }

  /**
   * The handler answered: what the hooks wrote goes into the response's headers and trailers,
   * except names the handler set itself (it writes after the hooks on the fast path, so its
   * value wins there too).
   */
  answered(header: Headers, trailer: Headers): void {
    addMissing(this.#header, header);
    addMissing(this.#trailer, trailer);
    this.#header = header;
    this.#trailer = trailer;
  }

  /**
   * The error as it must be sent when the call fails before answering: connect-node builds
   * those trailers from the handler context's and the error's metadata only, so the hooks'
   * trailers travel as metadata of a copy (the error itself is never modified: it may be
   * shared, and is the caller's). Same order as the fast path: the hooks' first, the error's
   * appended.
   */
  withTrailers(error: ConnectError): ConnectError {
    const trailer = this.#trailer;
    if (trailer === undefined) return error;
    const metadata = new Headers(trailer);
    error.metadata.forEach((value, name) => {
      metadata.append(name, value);
    });
    const copy = new ConnectError(error.rawMessage, error.code, metadata, undefined, error.cause);
    copy.details = error.details;
    copy.stack = error.stack;
    return copy;
  }
}

function addMissing(from: Headers | undefined, to: Headers): void {
  from?.forEach((value, name) => {
    if (!to.has(name)) to.set(name, value);
  });
}
