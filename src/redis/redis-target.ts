/** A host and port of a Redis server, Sentinel or cluster node. */
export interface RedisAddress {
  host: string;
  port: number;
}

/** Credentials and database shared by every form of Redis URL. */
export interface RedisAuth {
  username?: string;
  password?: string;
}

/**
 * Where the cache's Redis is, parsed from a URL into the pieces ioredis takes, so a bad URL is
 * rejected at start with a clear message and the produced options can be checked in tests.
 */
export type RedisTarget =
  | ({ mode: "standalone"; host: string; port: number; db: number; tls: boolean } & RedisAuth)
  | ({
      mode: "sentinel";
      sentinels: RedisAddress[];
      /** Master group name, as in `sentinel monitor <name> …`. */
      name: string;
      db: number;
      sentinelUsername?: string;
      sentinelPassword?: string;
    } & RedisAuth)
  | ({ mode: "cluster"; nodes: RedisAddress[] } & RedisAuth);

const SCHEMES = ["redis:", "rediss:", "redis+sentinel:", "redis+cluster:"] as const;

function fail(url: string, reason: string): never {
  throw new Error(`invalid Redis URL ${maskRedisUrl(url)}: ${reason}`);
}

/** The URL with its password replaced by `***`, for logs and error messages. */
export function maskRedisUrl(url: string): string {
  return url.replace(/^([a-z+]+:\/\/)([^@/]*)@/i, (_m, scheme: string, userinfo: string) => {
    const colon = userinfo.indexOf(":");
    // "user:pass" → "user:***"; a bare "pass" (ioredis accepts it) → "***".
    return `${scheme}${colon >= 0 ? userinfo.slice(0, colon + 1) : ""}***@`;
  });
}

function decode(url: string, part: string): string {
  try {
    return decodeURIComponent(part);
  } catch {
    return fail(url, "bad percent-encoding in credentials");
  }
}

function parsePort(url: string, text: string): number {
  if (!/^\d{1,5}$/.test(text)) return fail(url, `bad port "${text}"`);
  const port = Number(text);
  if (port < 1 || port > 65535) return fail(url, `port ${port} out of range`);
  return port;
}

function parseDb(url: string, text: string): number {
  if (!/^\d{1,5}$/.test(text)) return fail(url, `bad database number "${text}"`);
  return Number(text);
}

/** "h1:26379,[::1]:26380,h3" → addresses, with `defaultPort` where none is given. */
function parseHosts(url: string, text: string, defaultPort: number): RedisAddress[] {
  if (text === "") return fail(url, "no host");
  return text.split(",").map((item) => {
    const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+))(?::(\d*))?$/.exec(item);
    if (m === null) return fail(url, `bad host "${item}"`);
    const host = m[1] ?? m[2] ?? "";
    if (host === "") return fail(url, `bad host "${item}"`);
    return { host, port: m[3] === undefined ? defaultPort : parsePort(url, m[3]) };
  });
}

function parseUserinfo(url: string, userinfo: string | undefined): RedisAuth {
  if (userinfo === undefined || userinfo === "") return {};
  const colon = userinfo.indexOf(":");
  // Like ioredis: "user:pass", ":pass", or a bare "pass".
  const user = colon >= 0 ? decode(url, userinfo.slice(0, colon)) : "";
  const pass = decode(url, colon >= 0 ? userinfo.slice(colon + 1) : userinfo);
  const auth: RedisAuth = {};
  if (user !== "") auth.username = user;
  if (pass !== "") auth.password = pass;
  return auth;
}

/**
 * Parses `redis://`, `rediss://`, `redis+sentinel://[auth@]h1:26379,h2/<master>[/<db>]` and
 * `redis+cluster://[auth@]h1:6379,h2:6379`. Throws an Error (password masked) when malformed.
 */
export function parseRedisUrl(url: string): RedisTarget {
  const m = /^([a-z+]+:)\/\/(?:([^@/?#]*)@)?([^/?#]*)(\/[^?#]*)?(\?[^#]*)?$/i.exec(url.trim());
  if (m === null) return fail(url, "expected scheme://[user:password@]host[:port][/…]");
  const scheme = (m[1] ?? "").toLowerCase();
  if (!SCHEMES.some((s) => s === scheme)) {
    return fail(url, `unsupported scheme "${scheme}" (use ${SCHEMES.map((s) => `${s}//`).join(", ")})`);
  }
  const auth = parseUserinfo(url, m[2]);
  const path = (m[4] ?? "").split("/").filter((s) => s !== "");
  const query = new URLSearchParams(m[5] ?? "");
  const allowed = scheme === "redis+sentinel:" ? ["sentinelUsername", "sentinelPassword"] : [];
  for (const name of query.keys()) {
    if (!allowed.includes(name)) {
      return fail(
        url,
        `unsupported query parameter "${name}"${allowed.length > 0 ? ` (supported: ${allowed.join(", ")})` : ""}`,
      );
    }
  }

  if (scheme === "redis+sentinel:") {
    const sentinels = parseHosts(url, m[3] ?? "", 26379);
    const [name, db, ...rest] = path;
    if (name === undefined) return fail(url, "the master name is missing (redis+sentinel://hosts/<masterName>[/<db>])");
    if (rest.length > 0) return fail(url, "too many path segments");
    const target: RedisTarget = {
      mode: "sentinel",
      sentinels,
      name: decode(url, name),
      db: db === undefined ? 0 : parseDb(url, db),
      ...auth,
    };
    const sUser = query.get("sentinelUsername");
    const sPass = query.get("sentinelPassword");
    if (sUser !== null && sUser !== "") target.sentinelUsername = sUser;
    if (sPass !== null && sPass !== "") target.sentinelPassword = sPass;
    return target;
  }
  if (scheme === "redis+cluster:") {
    if (path.length > 0) return fail(url, "a cluster has only database 0; remove the path");
    return { mode: "cluster", nodes: parseHosts(url, m[3] ?? "", 6379), ...auth };
  }
  const hosts = parseHosts(url, m[3] ?? "", 6379);
  const [only] = hosts;
  if (only === undefined || hosts.length > 1)
    return fail(url, "one host only (use redis+sentinel:// or redis+cluster:// for several)");
  if (path.length > 1) return fail(url, "too many path segments");
  const db = path[0] === undefined ? 0 : parseDb(url, path[0]);
  return { mode: "standalone", host: only.host, port: only.port, db, tls: scheme === "rediss:", ...auth };
}
