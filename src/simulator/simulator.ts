/**
 * startSimulator: an Ollama-compatible HTTP server (node:http, no framework) with a realistic
 * scheduler, deterministic models, fault injection and live stats — the project's stand-in for
 * `ollama serve` in tests, benchmarks and demos.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { sleep } from "./abortable.js";
import { resolveModelSpec, type ResolvedModel } from "./catalog.js";
import { ApiError, isAbortError, SERVER_BUSY_MESSAGE } from "./errors.js";
import { createEventHub, type SimulatorEvents } from "./events.js";
import { createFaultInjector, type FaultInjector } from "./faults.js";
import { peekModel } from "./go-json.js";
import { createExchange, type Exchange } from "./http-exchange.js";
import { createModelStore } from "./model-store.js";
import { nameKey, parseModelName } from "./model-name.js";
import { resolveOptions, type ResolvedSimulatorOptions, type SimulatorOptions } from "./options.js";
import { handleAdmin } from "./route-admin.js";
import { handleChat } from "./route-chat.js";
import { handleEmbed, handleEmbeddings } from "./route-embed.js";
import { handleGenerate } from "./route-generate.js";
import {
  handleCopy,
  handleDelete,
  handlePs,
  handleRoot,
  handleShow,
  handleTags,
  handleVersion,
} from "./route-models.js";
import { handlePull } from "./route-pull.js";
import { handlePush } from "./route-push.js";
import { createScheduler, type LoadedRunner } from "./scheduler.js";
import type { Handler, SimContext } from "./sim-context.js";
import { bump, createStats, resetStats, type SimulatorStats } from "./stats.js";

// Types callers of startSimulator need, re-exported so one import path suffices.
export type { SimulatorOptions } from "./options.js";
export type { SimModelSpec } from "./catalog.js";
export type { SimulatorStats } from "./stats.js";
export type { Fault, FaultInjector } from "./faults.js";
export type { SimulatorEvents } from "./events.js";

/** A running simulator. */
export interface Simulator {
  /** Base URL, e.g. `http://127.0.0.1:54321` (unspecified hosts are reported as 127.0.0.1). */
  readonly url: string;
  readonly host: string;
  readonly port: number;
  /** Live counters, mutated in place. */
  readonly stats: SimulatorStats;
  /** Add/clear faults at run time. */
  readonly faults: FaultInjector;
  /** request / disconnect / load / unload events. */
  readonly events: SimulatorEvents;
  /** Effective options. */
  readonly options: Readonly<ResolvedSimulatorOptions>;
  /** Runners currently loaded or loading (what /api/ps shows). */
  loaded(): LoadedRunner[];
  /** Clears stats and faults; loaded models stay loaded. */
  reset(): void;
  /** Closes the server, all sockets and timers; never hangs. */
  close(): Promise<void>;
}

const ROUTES: Readonly<Record<string, Readonly<Record<string, Handler>>>> = {
  "/": { GET: handleRoot, HEAD: handleRoot },
  "/api/version": { GET: handleVersion, HEAD: handleVersion },
  "/api/generate": { POST: handleGenerate },
  "/api/chat": { POST: handleChat },
  "/api/embed": { POST: handleEmbed },
  "/api/embeddings": { POST: handleEmbeddings },
  "/api/tags": { GET: handleTags, HEAD: handleTags },
  "/api/show": { POST: handleShow },
  "/api/ps": { GET: handlePs },
  "/api/pull": { POST: handlePull },
  "/api/push": { POST: handlePush },
  "/api/delete": { DELETE: handleDelete },
  "/api/copy": { POST: handleCopy },
};

const MAX_BODY_BYTES = 256 * 1024 * 1024;

/** Starts a simulator and resolves once it listens. */
export async function startSimulator(options: SimulatorOptions = {}): Promise<Simulator> {
  const config = resolveOptions(options);
  const stats = createStats();
  const events = createEventHub();
  const faults = createFaultInjector(() => {
    stats.faultsTriggered++;
  });
  for (const fault of config.faults) faults.add(fault);
  const store = createModelStore(config.models);
  const registry = new Map<string, ResolvedModel>();
  for (const raw of config.registry) {
    const spec = resolveModelSpec(raw);
    const name = parseModelName(spec.name);
    if (name) registry.set(nameKey(name), spec);
  }
  const scheduler = createScheduler(config, {
    onLoad: (model, numCtx) => {
      bump(stats.loads, model);
      stats.loadsTotal++;
      events.emit("load", { model, numCtx, at: performance.now() });
    },
    onUnload: (model, reason) => {
      if (reason === "shutdown") return;
      bump(stats.unloads, model);
      stats.unloadsTotal++;
      if (reason === "evicted") stats.evictions++;
      if (reason === "reload") stats.reloads++;
      events.emit("unload", { model, reason, at: performance.now() });
    },
    onPendingChange: (pending) => {
      stats.pendingLoads = pending;
      stats.maxPendingLoads = Math.max(stats.maxPendingLoads, pending);
    },
    onBusy: () => {
      stats.busyRejections++;
    },
  });
  const ctx: SimContext = { config, store, registry, scheduler, stats, events };
  let closing = false;
  const reset = (): void => {
    resetStats(stats);
    faults.clear();
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const path = (req.url ?? "/").split("?")[0] ?? "/";
    const admin = path.startsWith("/_sim/");
    const ex = createExchange(req, res, path, { stats, events, closing: () => closing, observed: !admin });
    try {
      if (admin) {
        if (ex.method !== "GET") ex.body = await readBody(req);
        await handleAdmin(ex, ctx, { faults, reset });
        return;
      }
      await route(ex);
    } catch (error) {
      renderError(ex, error);
    } finally {
      if (!ex.finished) {
        if (res.headersSent) ex.end();
        else ex.sendError(500, "simulator: no response produced");
      }
    }
  };

  const route = async (ex: Exchange): Promise<void> => {
    bump(stats.requests, ex.path);
    const methods = ROUTES[ex.path];
    if (!methods) {
      events.emit("request", { method: ex.method, path: ex.path, ...traced(ex), at: performance.now() });
      return ex.sendText(404, "404 page not found");
    }
    const handler = methods[ex.method];
    if (!handler) {
      events.emit("request", { method: ex.method, path: ex.path, ...traced(ex), at: performance.now() });
      ex.res.setHeader("Allow", Object.keys(methods).join(", "));
      return ex.sendText(405, "405 method not allowed");
    }
    if (ex.method !== "GET" && ex.method !== "HEAD") ex.body = await readBody(ex.req);
    ex.model = peekModel(ex.body);
    events.emit("request", {
      method: ex.method,
      path: ex.path,
      model: ex.model,
      ...(ex.method !== "GET" && ex.method !== "HEAD" ? { body: ex.body } : {}),
      ...traced(ex),
      at: performance.now(),
    });
    const fault = faults.take(ex.path, ex.model);
    switch (fault?.kind) {
      case "stall":
        await sleep(fault.ms, ex.signal);
        break;
      case "error-before-stream":
        return ex.sendError(fault.status, fault.message);
      case "busy":
        return ex.sendError(503, SERVER_BUSY_MESSAGE);
      case "endless-line":
        return ex.endlessLine();
      case "drop-connection":
        if (fault.afterTokens === 0) return ex.drop();
        ex.fault = fault;
        break;
      case "error-mid-stream":
      case "malformed-line":
        ex.fault = fault;
        break;
      case undefined:
        break;
    }
    await handler(ex, ctx);
  };

  const server = createServer((req, res) => {
    void handle(req, res);
  });
  // Like Go's http.Server without IdleTimeout: idle keep-alive connections are never closed by us.
  server.keepAliveTimeout = 0;
  const sockets = new Set<Socket>();
  server.on("connection", (socket) => {
    sockets.add(socket);
    socket.setNoDelay(true);
    socket.on("close", () => sockets.delete(socket));
  });

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(config.port, config.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const urlHost = urlHostFor(config.host);
  let closed: Promise<void> | undefined;

  return {
    url: `http://${urlHost}:${address.port}`,
    host: config.host,
    port: address.port,
    stats,
    faults,
    events,
    options: config,
    loaded: () => scheduler.loaded(),
    reset,
    close() {
      closed ??= new Promise<void>((resolve) => {
        closing = true;
        scheduler.close();
        const timer = setTimeout(resolve, 2000);
        timer.unref();
        server.close(() => {
          clearTimeout(timer);
          resolve();
        });
        server.closeAllConnections();
        for (const socket of sockets) socket.destroy();
      });
      return closed;
    },
  };
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    const buffer = Buffer.isBuffer(chunk) ? chunk : Buffer.from(String(chunk));
    size += buffer.length;
    if (size > MAX_BODY_BYTES) throw new ApiError(413, "request body too large");
    chunks.push(buffer);
  }
  return Buffer.concat(chunks);
}

/** The request's `traceparent` header as a RequestEvent field (absent when it came without one). */
function traced(ex: Exchange): { traceparent?: string } {
  const header = ex.req.headers["traceparent"];
  return typeof header === "string" ? { traceparent: header } : {};
}

function renderError(ex: Exchange, error: unknown): void {
  if (ex.finished) return;
  if (error instanceof ApiError) {
    if (!ex.res.headersSent) return ex.sendError(error.status, error.message);
  } else if (isAbortError(error) || ex.signal.aborted) {
    if (!ex.res.headersSent) {
      ex.res.destroy();
      return;
    }
  } else if (!ex.res.headersSent) {
    return ex.sendError(500, error instanceof Error ? error.message : String(error));
  }
  const message = error instanceof Error ? error.message : String(error);
  ex.res.end(`${JSON.stringify({ error: message })}\n`);
}

function urlHostFor(host: string): string {
  if (host === "0.0.0.0" || host === "" || host === "::") return "127.0.0.1";
  return host.includes(":") ? `[${host}]` : host;
}
