import type { FailoverObserver } from "../../services/failover.js";
import type { UpstreamExchange, UpstreamObserver } from "../../upstream/ollama-node.js";

/**
 * Metrics and tracing each observe upstream requests and the failover; the gateway hands the
 * layers below one observer of each kind. These combine zero, one or two into one: with one,
 * that one itself (no indirection per call); with none, undefined (nothing is observed at all).
 */

/** One upstream observer telling both `a` and `b` (either may be absent). */
export function bothUpstream(
  a: UpstreamObserver | undefined,
  b: UpstreamObserver | undefined,
): UpstreamObserver | undefined {
  if (a === undefined || b === undefined) return a ?? b;
  return {
    start(node, method, path, body, signal) {
      const x = a.start(node, method, path, body, signal);
      const y = b.start(node, method, path, body, signal);
      if (x === undefined || y === undefined) return x ?? y;
      const both: UpstreamExchange = {
        headers:
          x.headers === undefined || y.headers === undefined
            ? (x.headers ?? y.headers)
            : { ...x.headers, ...y.headers },
        responded: either(x.responded, y.responded),
        answered: either(x.answered, y.answered),
        ended: either(x.ended, y.ended),
      };
      return both;
    },
  };
}

/** One callback calling `f` and `g` (either may be absent; both absent: absent). */
function either<T>(f: ((v: T) => void) | undefined, g: ((v: T) => void) | undefined): ((v: T) => void) | undefined {
  if (f === undefined || g === undefined) return f ?? g;
  return (v) => {
    f(v);
    g(v);
  };
}

/** One failover observer telling both `a` and `b` (either may be absent). */
export function bothFailover(
  a: FailoverObserver | undefined,
  b: FailoverObserver | undefined,
): FailoverObserver | undefined {
  if (a === undefined || b === undefined) return a ?? b;
  return {
    admitted(req, node, number, startedAt, queueMs) {
      a.admitted(req, node, number, startedAt, queueMs);
      b.admitted(req, node, number, startedAt, queueMs);
    },
    refused(req, error, startedAt) {
      a.refused(req, error, startedAt);
      b.refused(req, error, startedAt);
    },
    firstMessage(req, node, ms) {
      a.firstMessage(req, node, ms);
      b.firstMessage(req, node, ms);
    },
    failed(req, node, error, retried) {
      a.failed(req, node, error, retried);
      b.failed(req, node, error, retried);
    },
    failedOver(req, recovered) {
      a.failedOver(req, recovered);
      b.failedOver(req, recovered);
    },
  };
}
