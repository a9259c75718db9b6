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

/** Where and how to reach one node. */
export interface NodeAddress {
  /** Unique name of the node. */
  name: string;
  /** Base URL (http or https). */
  url: string;
}

const ERROR_BODY_LIMIT = 64 * 1024;

/** Creates the pool and calls for one node. */
export function createOllamaNode(address: NodeAddress, options: UpstreamOptions): OllamaNode {
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
  ): Promise<Dispatcher.ResponseData> {
    const res = await pool.request({
      method,
      path: basePath + path,
      headers: body === undefined ? undefined : { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
    if (res.statusCode >= 400) {
      const text = await readText(res.body, ERROR_BODY_LIMIT, name).catch(() => "");
      throw new UpstreamError("http", ollamaErrorText(text, res.statusCode), name, res.statusCode);
    }
    return res;
  }

  async function open(path: string, body: unknown, signal: AbortSignal): Promise<NdjsonStream> {
    const res = await send("POST", path, body, signal);
    return readNdjson(res.body, options.maxLineBytes, name);
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
      const res = await send(method, path, body, signal);
      const text = await readText(res.body, options.maxResponseBytes, name);
      if (text.trim() === "") return undefined;
      try {
        return JSON.parse(text) as unknown;
      } catch (e) {
        throw new UpstreamError("protocol", "response is not valid JSON", name, 0, { cause: e });
      }
    },
    close: () => pool.destroy(),
  };
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
