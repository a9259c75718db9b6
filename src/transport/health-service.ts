// grpc.health.v1.Health for connect-node, following
// https://github.com/grpc/grpc/blob/master/doc/health-checking.md.
//
// The status table is a plain Map ("" = the whole server). Each Watch stream
// is a small record holding the latest status for its service and a wake-up
// callback; a status change only stores the new value and wakes the stream,
// which yields it when the client pulls. Updates are therefore coalesced for
// slow readers (the spec only promises the newest status), memory per stream
// is constant, and exactly one abort listener is attached per stream.

import { Code, ConnectError } from "@connectrpc/connect";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { HealthCheckResponse_ServingStatus as ServingStatus } from "../gen/grpc/health/v1/health_pb.js";
import type {
  Health,
  HealthCheckRequest,
  HealthCheckResponseSchema,
  HealthListResponseSchema,
} from "../gen/grpc/health/v1/health_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";

type CheckResponseInit = MessageInitShape<typeof HealthCheckResponseSchema>;
type ListResponseInit = MessageInitShape<typeof HealthListResponseSchema>;

/** Default cap on concurrent Watch streams; each holds an HTTP/2 stream open indefinitely. */
export const DEFAULT_MAX_HEALTH_WATCHERS = 1000;

/** Options for {@link createHealthService}; all optional so the defaults fit a single gateway process. */
export interface HealthServiceOptions {
  /**
   * Maximum number of concurrent Watch streams. Watches never end on their
   * own, so without a cap a misbehaving client could pin unbounded memory.
   * Further Watch calls fail with RESOURCE_EXHAUSTED. Default 1,000.
   */
  readonly maxWatchers?: number;
  /**
   * Initial status of the whole server (service name ""). Default SERVING,
   * as in grpc-go; call `setAll(NOT_SERVING)` while starting up if readiness
   * must wait for something.
   */
  readonly serverStatus?: ServingStatus;
  /** Service names known from the start, each NOT_SERVING until set. */
  readonly services?: Iterable<string>;
}

/**
 * A health service: the connect implementation to mount on a router plus the
 * controls the rest of the gateway uses to report readiness (start-up,
 * upstream outages, graceful shutdown).
 */
export interface HealthService {
  /** Mount with `router.service(Health, health.implementation)`. */
  readonly implementation: ServiceImpl<typeof Health>;
  /**
   * Sets the status of `service` ("" = the whole server), registering the
   * name if it is new. Watchers of that name are notified when it changes.
   */
  setStatus(service: string, status: ServingStatus): void;
  /** Sets every registered service and "" at once, e.g. NOT_SERVING on SIGTERM. */
  setAll(status: ServingStatus): void;
  /**
   * Makes a service name known (so Check answers instead of NOT_FOUND).
   * Starts NOT_SERVING unless a status is given; a name that is already
   * registered keeps its status.
   */
  register(service: string, status?: ServingStatus): void;
  /** Current status of a name, or undefined when it is not registered. */
  get(service: string): ServingStatus | undefined;
  /**
   * Ends every Watch stream with OK and refuses new ones (UNAVAILABLE), so
   * the HTTP/2 sessions can drain during shutdown. Check and List keep working.
   */
  close(): void;
  /** Number of Watch streams currently open; exposed for metrics and tests. */
  readonly watcherCount: number;
}

/** One open Watch stream. */
interface Watcher {
  readonly service: string;
  latest: ServingStatus;
  done: boolean;
  wake: (() => void) | undefined;
}

/**
 * Creates the grpc.health.v1.Health implementation and its controls.
 * A factory rather than a singleton so tests and multiple servers in one
 * process each get their own status table.
 */
export function createHealthService(options: HealthServiceOptions = {}): HealthService {
  const maxWatchers = options.maxWatchers ?? DEFAULT_MAX_HEALTH_WATCHERS;
  if (!Number.isInteger(maxWatchers) || maxWatchers < 0) {
    throw new RangeError(`maxWatchers must be a non-negative integer, got ${maxWatchers}`);
  }
  const statuses = new Map<string, ServingStatus>();
  const watchers = new Map<string, Set<Watcher>>();
  let watcherCount = 0;
  let closed = false;

  function assertSettable(status: ServingStatus): void {
    if (status === ServingStatus.SERVICE_UNKNOWN || ServingStatus[status] === undefined) {
      throw new RangeError(`cannot set health status ${String(status)}; SERVICE_UNKNOWN is reserved for Watch`);
    }
  }

  function notify(service: string, status: ServingStatus): void {
    const set = watchers.get(service);
    if (set === undefined) return;
    for (const w of set) {
      w.latest = status;
      w.wake?.();
    }
  }

  function put(service: string, status: ServingStatus): void {
    const previous = statuses.get(service);
    statuses.set(service, status);
    if (previous !== status) notify(service, status);
  }

  function setStatus(service: string, status: ServingStatus): void {
    assertSettable(status);
    put(service, status);
  }

  function setAll(status: ServingStatus): void {
    assertSettable(status);
    for (const service of [...statuses.keys()]) put(service, status);
  }

  function register(service: string, status: ServingStatus = ServingStatus.NOT_SERVING): void {
    assertSettable(status);
    if (!statuses.has(service)) put(service, status);
  }

  function addWatcher(w: Watcher): void {
    let set = watchers.get(w.service);
    if (set === undefined) {
      set = new Set();
      watchers.set(w.service, set);
    }
    set.add(w);
    watcherCount++;
  }

  function removeWatcher(w: Watcher): void {
    const set = watchers.get(w.service);
    if (set?.delete(w) !== true) return;
    watcherCount--;
    if (set.size === 0) watchers.delete(w.service);
  }

  function close(): void {
    closed = true;
    for (const set of watchers.values()) {
      for (const w of set) {
        w.done = true;
        w.wake?.();
      }
    }
  }

  function check(req: HealthCheckRequest): CheckResponseInit {
    const status = statuses.get(req.service);
    if (status === undefined) {
      // The name is not echoed: it is client input and would go into a header.
      throw new ConnectError("unknown service", Code.NotFound);
    }
    return { status };
  }

  async function* watch(req: HealthCheckRequest, ctx: HandlerContext): AsyncGenerator<CheckResponseInit> {
    if (closed) {
      throw new ConnectError("health service is shutting down", Code.Unavailable);
    }
    if (watcherCount >= maxWatchers) {
      throw new ConnectError("too many health watchers", Code.ResourceExhausted);
    }
    const w: Watcher = {
      service: req.service,
      latest: statuses.get(req.service) ?? ServingStatus.SERVICE_UNKNOWN,
      done: ctx.signal.aborted,
      wake: undefined,
    };
    // One listener for the whole stream, removed in `finally`.
    const onAbort = (): void => {
      w.done = true;
      w.wake?.();
    };
    addWatcher(w);
    ctx.signal.addEventListener("abort", onAbort, { once: true });
    try {
      let sent: ServingStatus | undefined;
      while (!w.done) {
        if (w.latest !== sent) {
          sent = w.latest;
          yield { status: sent };
          continue;
        }
        await new Promise<void>((resolve) => {
          w.wake = resolve;
        });
        w.wake = undefined;
      }
      // A deadline or the server's shutdown signal ends the stream with that
      // status (DEADLINE_EXCEEDED, UNAVAILABLE) rather than a misleading OK.
      const reason: unknown = ctx.signal.reason;
      if (ctx.signal.aborted && reason instanceof ConnectError) throw reason;
      // Closed by close(): a watcher must still learn the last status (the
      // NOT_SERVING set just before a shutdown) before its stream ends.
      if (!ctx.signal.aborted && w.latest !== sent) yield { status: w.latest };
    } finally {
      ctx.signal.removeEventListener("abort", onAbort);
      removeWatcher(w);
    }
  }

  function list(): ListResponseInit {
    const out: Record<string, CheckResponseInit> = {};
    for (const [service, status] of statuses) out[service] = { status };
    return { statuses: out };
  }

  for (const service of options.services ?? []) register(service);
  const serverStatus = options.serverStatus ?? ServingStatus.SERVING;
  assertSettable(serverStatus);
  statuses.set("", serverStatus);

  return {
    implementation: { check, watch, list },
    setStatus,
    setAll,
    register,
    get: (service) => statuses.get(service),
    close,
    get watcherCount() {
      return watcherCount;
    },
  };
}
