import { randomBytes } from "node:crypto";
import { Cluster } from "ioredis";
import type { Redis } from "ioredis";
import { closeSharedRedisClient, createSharedRedisClient } from "../cache/redis-client.js";
import type { SharedRedisClient } from "../cache/redis-client.js";
import { maskRedisUrl, parseRedisUrl } from "../cache/redis-target.js";
import { TimeoutError, withTimeout } from "../cache/with-timeout.js";
import type { NodeHealth, NodeVerdict } from "../upstream/node-health.js";

/**
 * Node health shared between gateway replicas: when one replica's circuit for a node opens (a
 * refused connection, the failure threshold) or closes after a real success, it tells the others
 * through Redis pub/sub, so they stop routing to a dead node — or try a revived one — at once
 * instead of each paying for the discovery with its own failed requests or waiting for its own
 * probe (DESIGN.md §5). Best effort by design: a lost message only means a replica judges alone,
 * as it does without Redis.
 */
export interface SharedNodeHealth {
  /** This replica's id in the messages, so it recognises (and ignores) its own. */
  readonly origin: string;
  /** True while verdicts are published and received (both Redis connections ready and subscribed). */
  shared(): boolean;
  /** Stops sharing and closes both Redis connections (bounded; never throws). */
  close(): Promise<void>;
}

/** How node health is shared. */
export interface SharedNodeHealthOptions {
  /** The Redis the replicas share (`redis://`, `rediss://`, `redis+sentinel://`, `redis+cluster://`). */
  redisUrl: string;
  /** This replica's circuit breakers: its verdicts are published, the others' applied to it. */
  health: NodeHealth;
  /** Names of the configured nodes; messages about any other node are ignored. */
  nodes: readonly string[];
  /** Prefix of the channel name. @default "ogw:v1:" */
  namespace?: string;
  /** Bound of one PUBLISH (and of QUIT on close). @default 250 */
  commandTimeoutMs?: number;
  /** Where changes of the sharing state (one line each) and applied verdicts are reported. */
  log: { info(obj: object, msg: string): void; warn(obj: object, msg: string): void };
}

/** The channel (after the namespace) on which replicas exchange verdicts. */
export const NODE_HEALTH_CHANNEL = "node-health";
/** Logged (warn) once each time sharing is lost: from then on each replica judges nodes alone. */
export const HEALTH_LOCAL_MSG = "redis unavailable, node health judged by this replica alone";
/** Logged (info) when sharing is first established. */
export const HEALTH_SHARED_MSG = "node health shared through redis";
/** Logged (info) when sharing is back after an outage. */
export const HEALTH_SHARED_AGAIN_MSG = "node health shared through redis again";
/** Logged (info) when another replica's verdict changed a circuit here. */
export const HEALTH_REMOTE_MSG = "node health verdict from another replica applied";

/** Received messages longer than this are ignored: ours are well under 200 bytes. */
export const MAX_MESSAGE_BYTES = 512;
/** How often every connection is PINGed to find a hung server or a half-open TCP connection. */
const HEARTBEAT_MS = 1000;
/** Reconnect backoff: short, since while it lasts replicas route to nodes others know are down. */
const RECONNECT = { minDelayMs: 50, maxDelayMs: 1000 };

/** One verdict on the wire: `{"v":1,"o":<origin>,"n":<node>,"s":"down"|"up"}`. */
export interface NodeHealthMessage {
  origin: string;
  node: string;
  verdict: NodeVerdict;
}

/** The wire form of a verdict: small, versioned JSON. */
export function encodeNodeHealthMessage(m: NodeHealthMessage): string {
  return JSON.stringify({ v: 1, o: m.origin, n: m.node, s: m.verdict });
}

/**
 * Parses a received message; undefined (ignored, never thrown) for anything oversized, malformed,
 * of another version, or about a node not in `known` — the channel is open to anything that can
 * reach Redis, so nothing on it is trusted further than this.
 */
export function decodeNodeHealthMessage(text: string, known: ReadonlySet<string>): NodeHealthMessage | undefined {
  if (text.length > MAX_MESSAGE_BYTES) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) return undefined;
  const o: Record<string, unknown> = { ...parsed };
  const { v, o: origin, n: node, s: verdict } = o;
  if (v !== 1 || typeof origin !== "string" || origin.length === 0 || origin.length > 64) return undefined;
  if (typeof node !== "string" || !known.has(node)) return undefined;
  if (verdict !== "down" && verdict !== "up") return undefined;
  return { origin, node, verdict };
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Starts sharing `health` through Redis: this replica's own verdicts (`onLocalVerdict`) are
 * PUBLISHed on `<namespace>node-health` with this replica's origin id, and every other replica's
 * verdict received there is applied with `applyRemote` — which never produces a verdict itself,
 * so nothing is re-published and replicas cannot echo messages at each other.
 *
 * Two connections: a command connection for PUBLISH (no offline queue, so a publish while
 * disconnected fails at once and is dropped — a verdict is worth something only now) and a
 * subscriber made with `.duplicate()`. With `redis+cluster://` both are ioredis Clusters; classic
 * pub/sub is broadcast to every shard, and the Cluster's own subscriber connection follows
 * failovers. Redis never fails or stalls a caller: verdicts are published in the background,
 * bounded by `commandTimeoutMs`; while Redis is unreachable each replica judges nodes alone (one
 * warning per change of state), and sharing resumes by itself when Redis is back. Verdicts made
 * during an outage are not replayed: the others find out by their own probes, as without Redis.
 *
 * Returns at once (Redis connects in the background). Throws only for an invalid `redisUrl`.
 */
export function createSharedNodeHealth(options: SharedNodeHealthOptions): SharedNodeHealth {
  const { health, log } = options;
  const commandTimeoutMs = options.commandTimeoutMs ?? 250;
  const channel = `${options.namespace ?? "ogw:v1:"}${NODE_HEALTH_CHANNEL}`;
  const known = new Set(options.nodes);
  const origin = randomBytes(8).toString("hex");
  const label = maskRedisUrl(options.redisUrl);
  const hangMs = Math.max(1000, 4 * commandTimeoutMs);

  const pub: SharedRedisClient = createSharedRedisClient({
    target: parseRedisUrl(options.redisUrl),
    connectionName: "ogw-health",
    connectTimeoutMs: hangMs,
    reconnect: RECONNECT,
  });
  // The subscriber (re)subscribes itself on every "ready", so ioredis' own resubscription is off.
  const sub: SharedRedisClient =
    pub instanceof Cluster
      ? pub.duplicate([], { enableAutoPipelining: false })
      : pub.duplicate({ autoResubscribe: false, enableAutoPipelining: false, connectionName: "ogw-health-sub" });

  let state: "starting" | "up" | "down" | "closed" = "starting";
  let subscribed = false;
  let lastError: string | undefined;

  /** Decides the sharing state after any connection event; logs once per change. */
  const evaluate = (failure: boolean): void => {
    if (state === "closed") return;
    const up = pub.status === "ready" && sub.status === "ready" && subscribed;
    if (up && state !== "up") {
      const again = state === "down";
      state = "up";
      lastError = undefined;
      log.info({ redis: label, channel }, again ? HEALTH_SHARED_AGAIN_MSG : HEALTH_SHARED_MSG);
    } else if (!up && (state === "up" || (state === "starting" && failure))) {
      state = "down";
      log.warn({ redis: label, err: lastError }, HEALTH_LOCAL_MSG);
    }
  };

  pub.on("error", (err: unknown) => {
    lastError = errorMessage(err);
    evaluate(true);
  });
  pub.on("ready", () => evaluate(false));
  for (const ev of ["close", "end", "reconnecting"]) pub.on(ev, () => evaluate(true));

  sub.on("error", (err: unknown) => {
    lastError = errorMessage(err);
    evaluate(true);
  });
  sub.on("ready", () => {
    sub.subscribe(channel).then(
      () => {
        subscribed = true;
        evaluate(false);
      },
      (err: unknown) => {
        lastError = errorMessage(err);
        evaluate(true);
      },
    );
  });
  for (const ev of ["close", "end", "reconnecting"]) {
    sub.on(ev, () => {
      subscribed = false;
      evaluate(true);
    });
  }
  sub.on("message", (from: unknown, text: unknown) => {
    if (state === "closed" || from !== channel || typeof text !== "string") return;
    const m = decodeNodeHealthMessage(text, known);
    if (m === undefined || m.origin === origin) return;
    const before = health.state(m.node);
    health.applyRemote(m.node, m.verdict);
    const after = health.state(m.node);
    if (after !== before) log.info({ node: m.node, verdict: m.verdict, from: m.origin, circuit: after }, HEALTH_REMOTE_MSG);
  });

  // A Redis that raises no event at first (a Sentinel that keeps failing over, a server that
  // never answers the handshake) is called down after a grace period.
  const startupTimer = setTimeout(() => evaluate(true), 2 * hangMs);
  startupTimer.unref();

  // Hang detection, as the cache's link does it: a connection whose PING (allowed in subscriber
  // mode) or handshake goes unanswered for hangMs has its socket destroyed, so ioredis redials —
  // otherwise an idle subscriber on a half-open TCP connection would look subscribed for minutes.
  const pinging = new WeakSet<Redis>();
  const handshakeSince = new WeakMap<Redis, number>();
  const hangUp = (c: Redis, why: string): void => {
    lastError = why;
    c.stream.destroy(new Error(why));
  };
  const heartbeat = setInterval(() => {
    for (const c of [pub, sub].flatMap((x) => (x instanceof Cluster ? x.nodes() : [x]))) {
      if (c.status === "connect") {
        const since = handshakeSince.get(c);
        if (since === undefined) handshakeSince.set(c, Date.now());
        else if (Date.now() - since > hangMs) {
          handshakeSince.delete(c);
          hangUp(c, `no answer during the connection handshake within ${hangMs} ms`);
        }
        continue;
      }
      handshakeSince.delete(c);
      if (c.status !== "ready" || pinging.has(c)) continue;
      pinging.add(c);
      const stream = c.stream;
      void withTimeout(() => c.ping(), hangMs).then((out) => {
        pinging.delete(c);
        if (!out.ok && out.error instanceof TimeoutError && c.stream === stream && state !== "closed") {
          hangUp(c, `no answer to PING within ${hangMs} ms`);
        }
      });
    }
  }, HEARTBEAT_MS);
  heartbeat.unref();

  const stopListening = health.onLocalVerdict((node, verdict) => {
    if (state === "closed" || pub.status !== "ready") return;
    const text = encodeNodeHealthMessage({ origin, node, verdict });
    // Called from inside a request's failure or success report: publish in the background,
    // bounded; withTimeout never rejects, and a lost verdict only means the others judge alone.
    void withTimeout(() => pub.publish(channel, text), commandTimeoutMs).then((out) => {
      if (!out.ok) lastError = errorMessage(out.error);
    });
  });

  let closing: Promise<void> | undefined;
  return {
    origin,
    shared: () => state === "up",
    close() {
      closing ??= (async () => {
        state = "closed";
        stopListening();
        clearTimeout(startupTimer);
        clearInterval(heartbeat);
        await Promise.all([closeSharedRedisClient(pub, commandTimeoutMs), closeSharedRedisClient(sub, commandTimeoutMs)]);
      })();
      return closing;
    },
  };
}
