/**
 * One HTTP request/response pair with the behaviours every route shares: Ollama-shaped JSON and
 * text answers, NDJSON streaming with per-object writes and backpressure, client-disconnect
 * detection (abort signal + "disconnect" event), and the stream-level faults.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { sleep, waitForDrain } from "./abortable.js";
import type { EventHub } from "./events.js";
import type { Fault } from "./faults.js";
import { bump, type SimulatorStats } from "./stats.js";

/** JSON content type used by gin's `c.JSON`. */
export const JSON_TYPE = "application/json; charset=utf-8";
/** NDJSON content type used by Ollama streams. */
export const NDJSON_TYPE = "application/x-ndjson";

/** A request in progress. */
export interface Exchange {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly method: string;
  readonly path: string;
  /** Aborted when the client disconnects or the simulator closes. */
  readonly signal: AbortSignal;
  /** `process.hrtime.bigint()` when the request arrived. */
  readonly startedAt: bigint;
  /** Raw request body (empty for GET/HEAD). */
  body: Buffer;
  /** Model named by the request, as sent. */
  model: string | undefined;
  /** A stream-level fault armed for this request (error-mid-stream, drop-connection, malformed-line). */
  fault: Fault | undefined;
  /** Tokens generated so far (reported with disconnects). */
  tokens: number;
  /** True once the response ended or the socket is gone. */
  readonly finished: boolean;
  sendJson(status: number, body: unknown): void;
  sendError(status: number, message: string): void;
  sendText(status: number, text: string): void;
  sendEmpty(status: number): void;
  /** Sends a complete body with an explicit content type (used for deliberately broken answers). */
  sendRaw(status: number, contentType: string, body: string): void;
  /** Starts a 200 NDJSON response (idempotent). */
  startStream(): void;
  /** Writes raw bytes to a started stream, waiting for drain when needed; false if the client is gone. */
  writeRaw(data: string | Buffer): Promise<boolean>;
  /** Ends the response. */
  end(): void;
  /** Destroys the socket on purpose (a fault), without counting a client disconnect. */
  drop(): void;
  /** Endless-line fault: 200 headers, then 64 KiB writes of a line that never ends, until the client leaves. */
  endlessLine(): Promise<void>;
}

/** Shared services an exchange reports to. */
export interface ExchangeDeps {
  readonly stats: SimulatorStats;
  readonly events: EventHub;
  /** True while the simulator shuts down (closes are then not client disconnects). */
  readonly closing: () => boolean;
  /** Whether this request counts in stats and events (false for admin routes). */
  readonly observed: boolean;
}

/** Wraps a request/response pair. */
export function createExchange(req: IncomingMessage, res: ServerResponse, path: string, deps: ExchangeDeps): Exchange {
  const controller = new AbortController();
  let dropped = false;

  const writeHead = (status: number, headers: Record<string, string>): void => {
    if (deps.observed) bump(deps.stats.responses, String(status));
    res.writeHead(status, headers);
  };

  const ex: Exchange = {
    req,
    res,
    method: req.method ?? "GET",
    path,
    signal: controller.signal,
    startedAt: process.hrtime.bigint(),
    body: Buffer.alloc(0),
    model: undefined,
    fault: undefined,
    tokens: 0,
    get finished() {
      return res.writableEnded || res.destroyed;
    },
    sendJson(status, body) {
      ex.sendRaw(status, JSON_TYPE, JSON.stringify(body));
    },
    sendError(status, message) {
      ex.sendJson(status, { error: message });
    },
    sendText(status, text) {
      ex.sendRaw(status, "text/plain", text);
    },
    sendRaw(status, contentType, body) {
      if (ex.finished || res.headersSent) return;
      writeHead(status, { "Content-Type": contentType, "Content-Length": String(Buffer.byteLength(body)) });
      res.end(body);
    },
    sendEmpty(status) {
      if (ex.finished || res.headersSent) return;
      writeHead(status, { "Content-Length": "0" });
      res.end();
    },
    startStream() {
      if (res.headersSent || ex.finished) return;
      writeHead(200, { "Content-Type": NDJSON_TYPE });
    },
    async writeRaw(data) {
      if (ex.finished) return false;
      ex.startStream();
      if (!res.write(data)) await waitForDrain(res, controller.signal);
      return !ex.finished && !controller.signal.aborted;
    },
    end() {
      if (!ex.finished) res.end();
    },
    drop() {
      dropped = true;
      controller.abort();
      res.destroy();
      req.socket.destroy();
    },
    async endlessLine() {
      ex.startStream();
      const prefix = `{"model":${JSON.stringify(ex.model ?? "")},"created_at":"1970-01-01T00:00:00Z","response":"`;
      const block = Buffer.alloc(64 * 1024, "a");
      if (!(await ex.writeRaw(prefix))) return;
      while (!ex.finished && !controller.signal.aborted) {
        if (!(await ex.writeRaw(block))) return;
        // Yield so a fast client cannot starve the event loop.
        await sleep(0).catch(() => undefined);
      }
    },
  };

  // The client is gone the moment its socket reads EOF or a reset, as Go's net/http sees it (a
  // background read cancels the request's context) — not when node:http closes the socket later,
  // after poll events already due: a request arriving on another connection in the same turn
  // would otherwise find the abandoned one still holding its slot.
  const socket = req.socket;
  const gone = (): void => {
    if (res.writableFinished || controller.signal.aborted) return;
    if (!dropped && !deps.closing() && deps.observed) {
      deps.stats.disconnects++;
      deps.events.emit("disconnect", { path, model: ex.model, at: performance.now(), tokens: ex.tokens });
    }
    controller.abort();
  };
  socket.on("end", gone);
  socket.on("error", gone);
  res.on("close", () => {
    socket.off("end", gone);
    socket.off("error", gone);
    gone();
  });

  return ex;
}

/** Destination for the chunks of a streamable answer (NDJSON when streaming, one merged JSON otherwise). */
export interface ResponseSink<T extends object> {
  /** Sends one chunk; `final` marks the last. Resolves false when the producer must stop. */
  push(chunk: T, final: boolean): Promise<boolean>;
  /** Reports an error after work started: an NDJSON `{"error"}` line if streaming, else status + JSON. */
  fail(message: string, status?: number): void;
}

/**
 * Creates a sink. In stream mode each chunk is one NDJSON write; otherwise chunks are merged and
 * the final one is sent as a single JSON object. The exchange's stream fault fires before the
 * chunk with index `afterTokens` (or before the final chunk if the answer is shorter).
 */
export function createSink<T extends object>(
  ex: Exchange,
  stream: boolean,
  merge: (accumulated: T | undefined, chunk: T) => T,
): ResponseSink<T> {
  let index = 0;
  let fired = false;
  let accumulated: T | undefined;

  const fail = (message: string, status = 500): void => {
    if (ex.finished) return;
    if (stream && ex.res.headersSent) {
      ex.res.end(`${JSON.stringify({ error: message })}\n`);
    } else {
      ex.sendError(status, message);
    }
  };

  return {
    fail,
    async push(chunk, final) {
      if (ex.finished) return false;
      const fault = ex.fault;
      if (fault && !fired && "afterTokens" in fault && (index >= fault.afterTokens || final)) {
        fired = true;
        if (fault.kind === "error-mid-stream") {
          if (stream) ex.startStream();
          fail(fault.message, 500);
          return false;
        }
        if (fault.kind === "drop-connection") {
          ex.drop();
          return false;
        }
        if (fault.kind === "malformed-line") {
          const garbage = `${JSON.stringify(chunk).slice(0, 40)}<<not json`;
          if (!stream) {
            ex.sendRaw(200, JSON_TYPE, garbage);
            return false;
          }
          if (!(await ex.writeRaw(`${garbage}\n`))) return false;
          if (fault.then === "end") {
            ex.end();
            return false;
          }
        }
      }
      index++;
      if (stream) {
        const ok = await ex.writeRaw(`${JSON.stringify(chunk)}\n`);
        if (final) ex.end();
        return ok;
      }
      accumulated = merge(accumulated, chunk);
      if (final) ex.sendJson(200, accumulated);
      return !ex.finished || final;
    },
  };
}
