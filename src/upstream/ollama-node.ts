import { Pool } from "undici";
import type { Dispatcher } from "undici";
import { readNdjson } from "./ndjson-reader.js";
import type { NdjsonStream } from "./ndjson-reader.js";
import { UpstreamError } from "./upstream-error.js";

/** How the gateway talks to every Ollama node. */
export interface UpstreamOptions {
  /** Maximum open connections per node. @default 64 */
  connections: number;
  /** TCP connect timeout, so a dead host fails fast. @default 5000 */
  connectTimeoutMs: number;
  /**
   * Longest wait for response headers and longest gap between body chunks.
   * Model loads take minutes, so this is long; the RPC deadline bounds each
   * call anyway. @default 600000
   */
  idleTimeoutMs: number;
  /** Longest NDJSON line accepted from a node (memory bound). @default 8 MiB */
  maxLineBytes: number;
  /** Largest non-streaming response body accepted (e.g. embeddings). @default 64 MiB */
  maxResponseBytes: number;
}

/** HTTP methods the Ollama API uses. */
export type UpstreamMethod = "GET" | "HEAD" | "POST" | "DELETE";

/**
 * One Ollama server: a keep-alive connection pool and typed calls on it.
 * Every call takes the RPC's AbortSignal, so a cancelled or expired RPC
 * closes the upstream connection and Ollama stops generating.
 */
export interface OllamaNode {
  /** Name used in logs, metrics, errors and routing (unique per gateway). */
  readonly name: string;
  /** Base URL, e.g. http://127.0.0.1:11434. */
  readonly url: string;
  /**
   * POSTs `body` and yields the NDJSON objects as they arrive, in batches of
   * what had arrived by each read (see readNdjson). A non-2xx status throws
   * UpstreamError("http"); an `{"error": ...}` line throws
   * UpstreamError("stream") after the objects before it were yielded.
   */
  stream(path: string, body: unknown, signal: AbortSignal): AsyncGenerator<Record<string, unknown>[], void, undefined>;
  /**
   * Like `stream`, as a reader without an async generator (the streaming relay's hot path reads
   * it in push mode, `NdjsonStream.pump`). Resolves once the response headers arrived (non-2xx throws UpstreamError("http")); the
   * caller must `close()` it.
   */
  open(path: string, body: unknown, signal: AbortSignal): Promise<NdjsonStream>;
  /** A request with a single JSON answer; resolves undefined for an empty body. */
  call(method: UpstreamMethod, path: string, body: unknown, signal: AbortSignal): Promise<unknown>;
  /** Closes the pool; in-flight requests are destroyed. */
  close(): Promise<void>;
}

/**
 * Follows the requests nodes send, for metrics and traces (wired in `gateway.ts`; README,
 * "Operating it"). Called synchronously from the request's own async flow; must never throw.
 */
export interface UpstreamObserver {
  /**
   * A request to `node` is about to go out under `signal` (a call's, or derived from one: see
   * `watcherOf`); the returned exchange (if any) follows it.
   */
  start(
    node: string,
    method: UpstreamMethod,
    path: string,
    body: unknown,
    signal: AbortSignal,
  ): UpstreamExchange | undefined;
}

/**
 * One request an UpstreamObserver follows. Every member is optional: a request is only followed
 * as far as someone listens (a stream is wrapped only for `answered` or `ended`).
 */
export interface UpstreamExchange {
  /** Headers to send with the request (the trace context: `traceparent`, `tracestate`), if any. */
  readonly headers?: Readonly<Record<string, string>>;
  /** The response headers arrived with this status. */
  readonly responded?: (status: number) => void;
  /** The answer's last object: a stream's final chunk (`done: true`), or the JSON answer. */
  readonly answered?: (final: Record<string, unknown>) => void;
  /** The exchange is over: read to its end or closed (`error` undefined), or failed. Called once. */
  readonly ended?: (error: unknown) => void;
}

/** Where and how to reach one node. */
export interface NodeAddress {
  /** Unique name of the node. */
  name: string;
  /** Base URL (http or https). */
  url: string;
}

const ERROR_BODY_LIMIT = 64 * 1024;

/** Creates the pool and calls for one node; `observer` (optional) follows every request. */
export function createOllamaNode(
  address: NodeAddress,
  options: UpstreamOptions,
  observer?: UpstreamObserver,
): OllamaNode {
  const origin = new URL(address.url);
  const basePath = origin.pathname.replace(/\/+$/, "");
  const pool = new Pool(origin.origin, {
    connections: options.connections,
    pipelining: 1,
    keepAliveTimeout: 4_000,
    headersTimeout: options.idleTimeoutMs,
    bodyTimeout: options.idleTimeoutMs,
    connect: { timeout: options.connectTimeoutMs },
  });
  const name = address.name;

  async function send(
    method: UpstreamMethod,
    path: string,
    body: unknown,
    signal: AbortSignal,
    exchange: UpstreamExchange | undefined,
  ): Promise<Dispatcher.ResponseData> {
    const json = body === undefined ? undefined : JSON_HEADERS;
    const extra = exchange?.headers;
    let res: Dispatcher.ResponseData;
    try {
      res = await pool.request({
        method,
        path: basePath + path,
        headers: extra === undefined ? json : { ...json, ...extra },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
      });
    } catch (e) {
      exchange?.ended?.(e);
      throw e;
    }
    exchange?.responded?.(res.statusCode);
    if (res.statusCode >= 400) {
      const text = await readText(res.body, ERROR_BODY_LIMIT, name).catch(() => "");
      const error = new UpstreamError("http", ollamaErrorText(text, res.statusCode), name, res.statusCode);
      exchange?.ended?.(error);
      throw error;
    }
    return res;
  }

  async function open(path: string, body: unknown, signal: AbortSignal): Promise<NdjsonStream> {
    const exchange = observer?.start(name, "POST", path, body, signal);
    const res = await send("POST", path, body, signal, exchange);
    const reader = readNdjson(res.body, options.maxLineBytes, name);
    return exchange?.answered === undefined && exchange?.ended === undefined
      ? reader
      : new ObservedStream(reader, exchange.answered, exchange.ended);
  }

  return {
    name,
    url: address.url,
    async *stream(path, body, signal) {
      const reader = await open(path, body, signal);
      try {
        for (let batch; (batch = await reader.next()) !== undefined; ) yield batch;
      } finally {
        // Stopping early (client gone, error) must free the connection at
        // once; destroying it also tells Ollama to stop generating.
        reader.close();
      }
    },
    open,
    async call(method, path, body, signal) {
      const exchange = observer?.start(name, method, path, body, signal);
      const res = await send(method, path, body, signal, exchange);
      let answer: unknown;
      try {
        const text = await readText(res.body, options.maxResponseBytes, name);
        if (text.trim() === "") answer = undefined;
        else {
          try {
            answer = JSON.parse(text) as unknown;
          } catch (e) {
            throw new UpstreamError("protocol", "response is not valid JSON", name, 0, { cause: e });
          }
        }
      } catch (e) {
        exchange?.ended?.(e);
        throw e;
      }
      if (exchange !== undefined) {
        if (typeof answer === "object" && answer !== null && !Array.isArray(answer)) {
          exchange.answered?.(answer as Record<string, unknown>);
        }
        exchange.ended?.(undefined);
      }
      return answer;
    },
    close: () => pool.destroy(),
  };
}

const JSON_HEADERS: Readonly<Record<string, string>> = Object.freeze({ "content-type": "application/json" });

/**
 * A reader with its exchange told about its final chunk (`answered`) and its end (`ended`:
 * whichever of the end of the body, a failure or `close()` comes first). Only observed requests
 * pay for it: one object per stream, its methods shared (no closure per stream, nor per pump
 * unless `ended` is wanted).
 */
class ObservedStream implements NdjsonStream {
  #over = false;

  constructor(
    private readonly reader: NdjsonStream,
    private readonly answered: ((final: Record<string, unknown>) => void) | undefined,
    private readonly ended: ((error: unknown) => void) | undefined,
  ) {}

  #end(error: unknown): void {
    if (this.#over) return;
    this.#over = true;
    this.ended?.(error);
  }

  #look(batch: Record<string, unknown>[]): void {
    const answered = this.answered;
    if (answered !== undefined) for (const chunk of batch) if (chunk["done"] === true) answered(chunk);
  }

  async next(): Promise<Record<string, unknown>[] | undefined> {
    if (this.ended === undefined) {
      // Only the final chunk is wanted: no promise of our own beyond this one.
      const batch = await this.reader.next();
      if (batch !== undefined) this.#look(batch);
      return batch;
    }
    try {
      const batch = await this.reader.next();
      if (batch === undefined) this.#end(undefined);
      else this.#look(batch);
      return batch;
    } catch (e) {
      this.#end(e);
      throw e;
    }
  }

  pump(onBatch: (batch: Record<string, unknown>[]) => boolean | Promise<void>): Promise<void> {
    const pumped = this.reader.pump((batch) => {
      this.#look(batch);
      return onBatch(batch);
    });
    if (this.ended === undefined) return pumped;
    return pumped.then(
      () => this.#end(undefined),
      (e: unknown) => {
        this.#end(e);
        throw e;
      },
    );
  }

  close(): void {
    this.reader.close();
    if (this.ended !== undefined) this.#end(undefined);
  }
}

/** Reads a body as UTF-8 up to `limit` bytes; destroys it and throws past that. */
async function readText(body: Dispatcher.ResponseData["body"], limit: number, node: string): Promise<string> {
  const parts: Buffer[] = [];
  let size = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) {
      body.destroy();
      throw new UpstreamError("protocol", `response larger than ${limit} bytes`, node, 0);
    }
    parts.push(chunk);
  }
  return Buffer.concat(parts, size).toString("utf8");
}

/** Ollama errors are `{"error":"..."}`; fall back to the raw text or the status. */
function ollamaErrorText(text: string, status: number): string {
  try {
    const parsed: unknown = JSON.parse(text);
    if (typeof parsed === "object" && parsed !== null && "error" in parsed) {
      const e = (parsed as { error: unknown }).error;
      if (typeof e === "string") return e;
    }
  } catch {
    // not JSON: use the text itself
  }
  const trimmed = text.trim();
  return trimmed === "" ? `HTTP ${status}` : trimmed.slice(0, 1000);
}
