// Which new connections the gateway refuses at accept, and how refusals are
// reported without flooding the log. The counting itself (sockets opening and
// closing) lives in the dual-protocol server; these are its rules.

/** Limits on open client connections (see the README, "Operating it"). */
export interface ConnectionLimits {
  /** Open connections in all. */
  readonly maxConnections: number;
  /** Open connections from one client address; 0 = no limit. */
  readonly maxConnectionsPerIp: number;
}

/** Why a new connection is refused. */
export type Refusal = "max-connections" | "max-connections-per-ip";

/**
 * Whether one more connection may open, given how many are open in all and
 * from its address (both counts without the new one). Returns the limit it
 * would break, or undefined to accept it.
 */
export function refusalFor(open: number, openFromAddress: number, limits: ConnectionLimits): Refusal | undefined {
  if (open >= limits.maxConnections) return "max-connections";
  if (limits.maxConnectionsPerIp > 0 && openFromAddress >= limits.maxConnectionsPerIp) return "max-connections-per-ip";
  return undefined;
}

/**
 * The key a connection is counted under for the per-address limit: its remote
 * address, with IPv4 addresses seen through an IPv6 socket (`::ffff:1.2.3.4`)
 * counted as the IPv4 address they are, so one client cannot double its share.
 */
export function addressKey(remoteAddress: string | undefined): string {
  if (remoteAddress === undefined) return "";
  return remoteAddress.startsWith("::ffff:") && remoteAddress.includes(".") ? remoteAddress.slice(7) : remoteAddress;
}

/** Counts events and reports them at most once per interval. */
export interface ThrottledReport {
  /** Counts one event; reports at once if the last report is older than the interval. */
  add(): void;
  /** Reports what is still counted and stops the pending timer. */
  flush(): void;
}

/**
 * Reports counted events (refused connections, failed accepts) at most once
 * per `intervalMs`: the first at once, the ones after it in one report when
 * the interval is over, so a flood of refusals writes a few log lines, not
 * one per connection, and a short burst is still reported in full.
 */
export function createThrottledReport(
  intervalMs: number,
  report: (count: number) => void,
  clock: () => number = Date.now,
): ThrottledReport {
  let pending = 0;
  let lastAt = Number.NEGATIVE_INFINITY;
  let timer: NodeJS.Timeout | undefined;
  const flush = (): void => {
    clearTimeout(timer);
    timer = undefined;
    if (pending === 0) return;
    const count = pending;
    pending = 0;
    lastAt = clock();
    report(count);
  };
  return {
    add() {
      pending++;
      const wait = lastAt + intervalMs - clock();
      if (wait <= 0) flush();
      else timer ??= setTimeout(flush, wait).unref();
    },
    flush,
  };
}
