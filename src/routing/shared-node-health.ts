import { randomBytes } from "node:crypto";
import { logHealthChanges } from "../redis/health-state.js";
import type { RedisLink } from "../redis/redis-link.js";
import type { RedisLogger } from "../redis/redis-logger.js";
import type { NodeHealth, NodeVerdict } from "../upstream/node-health.js";

/**
 * Node health shared between gateway replicas: when one replica's circuit for a node opens (a
 * refused connection, the failure threshold) or closes after a real success, it tells the others
 * through Redis pub/sub, so they stop routing to a dead node — or try a revived one — at once
 * instead of each paying for the discovery with its own failed requests or waiting for its own
 * probe (README, "Routing across a fleet"; the channel is listed in docs/architecture.md, "Redis
 * keys and channels"). Best effort by design: a lost message only means a replica judges alone,
 * as it does without Redis.
 */
export interface SharedNodeHealth {
  /** This replica's id in the messages, so it recognises (and ignores) its own. */
  readonly origin: string;
  /** True while verdicts are published and received (the command connection ready, the channel subscribed). */
  shared(): boolean;
  /** Stops sharing and detaches from the link, which stays open for its other users (never throws). */
  close(): Promise<void>;
}

/** How node health is shared. */
export interface SharedNodeHealthOptions {
  /** The replica's Redis link (src/redis/redis-link.ts), shared with the cache and slot leases. */
  redis: RedisLink;
  /** This replica's circuit breakers: its verdicts are published, the others' applied to it. */
  health: NodeHealth;
  /** Names of the configured nodes; messages about any other node are ignored. */
  nodes: readonly string[];
  /** Prefix of the channel name. @default "ogw:v1:" */
  namespace?: string;
  /** Where changes of the sharing state (one line each) and applied verdicts are reported. */
  log: RedisLogger;
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

/**
 * Starts sharing `health` through Redis: this replica's own verdicts (`onLocalVerdict`) are
 * PUBLISHed on `<namespace>node-health` with this replica's origin id, and every other replica's
 * verdict received there is applied with `applyRemote` — which never produces a verdict itself,
 * so nothing is re-published and replicas cannot echo messages at each other.
 *
 * It is one user of the replica's Redis link, as the cache's invalidations are: PUBLISH goes on
 * the command connection, which fails at once while disconnected (the verdict is dropped — it is
 * worth something only now); verdicts arrive on the link's one subscriber. Sharing counts as on
 * while the command connection is ready and the channel subscribed. With `redis+cluster://`
 * classic pub/sub is broadcast to every shard. Redis never fails or stalls a caller: verdicts are
 * published in the background, bounded by the link's command timeout; while Redis is unreachable
 * each replica judges nodes alone (one warning per change of state), and sharing resumes by
 * itself when Redis is back. Verdicts made during an outage are not replayed: the others find out
 * by their own probes, as without Redis.
 *
 * Returns at once (Redis connects in the background).
 */
export function createSharedNodeHealth(options: SharedNodeHealthOptions): SharedNodeHealth {
  const { health, log } = options;
  const channel = `${options.namespace ?? "ogw:v1:"}${NODE_HEALTH_CHANNEL}`;
  const known = new Set(options.nodes);
  const origin = randomBytes(8).toString("hex");
  let closed = false;

  const link = options.redis.attach({
    subscription: {
      channel,
      onMessage(text) {
        if (closed) return;
        const m = decodeNodeHealthMessage(text, known);
        if (m === undefined || m.origin === origin) return;
        const before = health.state(m.node);
        health.applyRemote(m.node, m.verdict);
        const after = health.state(m.node);
        if (after !== before)
          log.info({ node: m.node, verdict: m.verdict, from: m.origin, circuit: after }, HEALTH_REMOTE_MSG);
      },
    },
    onChange: logHealthChanges(log, options.redis.label, {
      up: HEALTH_SHARED_MSG,
      upAgain: HEALTH_SHARED_AGAIN_MSG,
      down: HEALTH_LOCAL_MSG,
    }),
  });

  // Called from inside a request's failure or success report: publish in the background, bounded
  // by the link; a lost verdict only means the others judge alone.
  const stopListening = health.onLocalVerdict((node, verdict) => {
    if (closed) return;
    const text = encodeNodeHealthMessage({ origin, node, verdict });
    void link.run((r) => r.publish(channel, text));
  });

  return {
    origin,
    shared: () => link.healthy(),
    close() {
      closed = true;
      stopListening();
      link.detach();
      return Promise.resolve();
    },
  };
}
