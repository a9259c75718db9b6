import { Code } from "@connectrpc/connect";
import type { ConnectError } from "@connectrpc/connect";
import { toConnectError } from "../errors/to-connect-error.js";
import { fallbackReason } from "../routing/model-aliases.js";
import type { FallbackReason } from "../routing/model-aliases.js";
import { DEFAULT_RETRY_POLICY, nextTryDelayMs } from "../routing/retry-policy.js";
import { sleep } from "../util/sleep.js";
import type { RetryPolicy } from "../routing/retry-policy.js";
import type { Dispatch, Scheduler } from "../routing/scheduler.js";
import type { OllamaTimings } from "../routing/slot-learning.js";
import { isNodeDown } from "../upstream/network-errors.js";
import type { NodeHealth } from "../upstream/node-health.js";
import type { OllamaNode } from "../upstream/ollama-node.js";

/**
 * How urgent a call is to the scheduler. Read again before every admission: a call's time left
 * shrinks, and a batch serving several calls changes as its members leave.
 */
export interface Urgency {
  /** Queue priority (the `x-priority` header, -100..100): higher goes first. */
  priority(): number;
  /** Time left before the call's deadline, ms. */
  remainingMs(): number;
}

/** One call (or one Embed batch) to run on some node that has its model. */
export interface FailoverRequest extends Urgency {
  /** Model name as the client wrote it. */
  model: string;
  /** Session or conversation key for node affinity. */
  affinity?: string;
  /**
   * Models tried in this order when `model` cannot be admitted (an alias's fallbacks, README
   * "Model aliases"); each is a new admission, and only before a message was sent. @default none
   */
  fallbacks?: readonly string[];
  /** The affinity key of a fallback model. @default none (no affinity for fallbacks) */
  affinityOf?: (model: string) => string | undefined;
  /** Aborts when the call is cancelled, expires or the gateway shuts down. */
  signal: AbortSignal;
}

/** One try on one node, holding one of its slots. */
export interface Attempt {
  /** The node the scheduler chose. */
  readonly node: OllamaNode;
  /** The model this try serves: the request's, or one of its fallbacks. */
  readonly model: string;
  /** Why a fallback serves this try; undefined while the request's own model does. */
  readonly fallback: FallbackReason | undefined;
  /** Time this try waited in the admission queue, ms. */
  readonly queueMs: number;
  /** Which try this is: 1 = the first. */
  readonly number: number;
  /** A message reached the client: from now on a failure is final (a stream is never replayed). */
  sent(): void;
  /**
   * The model load time Ollama reported (`load_duration`, ms), and its other timings when known
   * (they show a wait for a slot inside Ollama), given to the scheduler with the slot.
   */
  loaded(ms: number | undefined, timings?: OllamaTimings): void;
}

/**
 * What the failover reports as a call goes, for metrics and traces (README, "Operating it"). Each
 * method is called synchronously from the call's own async flow, must return quickly and never
 * throw. Nothing is reported for a call its caller gave up on (cancelled, deadline passed).
 * `req` is the call's request (its model, and its signal: `watcherOf(req.signal)` finds the call's).
 */
export interface FailoverObserver {
  /**
   * Try `number` (1 = the first) got a slot on `node`. `startedAt` is `performance.now()` when it
   * asked the scheduler (locating the model included); `queueMs` its wait in the scheduler's queue.
   */
  admitted(req: FailoverRequest, node: string, number: number, startedAt: number, queueMs: number): void;
  /** Admission failed with `error`, the call's error (queue full, wait too long, no healthy node, ...). */
  refused(req: FailoverRequest, error: ConnectError, startedAt: number): void;
  /** The call's first message reached the client `ms` after the failover started (admission and earlier tries included). */
  firstMessage(req: FailoverRequest, node: string, ms: number): void;
  /** The try on `node` failed with `error`; `retried` = another node is tried next. */
  failed(req: FailoverRequest, node: string, error: ConnectError, retried: boolean): void;
  /** A call that needed more than one try ended: `recovered` = a later try succeeded. */
  failedOver(req: FailoverRequest, recovered: boolean): void;
}

/** What the failover needs from the rest of the gateway. */
export interface FailoverDeps {
  /** Admission and node choice. */
  scheduler: Pick<Scheduler, "acquire">;
  /** Told about every try's outcome (passive health, circuit breakers). */
  health: Pick<NodeHealth, "reportSuccess" | "reportFailure">;
  /** Which failures are tried again, how often, with what backoff. @default DEFAULT_RETRY_POLICY */
  policy?: RetryPolicy;
  /** Jitter of the backoff, in [0, 1). @default Math.random */
  random?: () => number;
  /** Told how each call goes (metrics, traces). @default none: nothing is measured */
  observer?: FailoverObserver;
}

/**
 * Runs one upstream call with failover; the one loop Generate, Chat and Embed share, so they
 * follow the same rules (README, "Failures").
 */
export interface Failover {
  /**
   * Takes a slot on a node (with the request's priority, affinity and time left), runs `attempt`
   * there and gives the slot back, exactly once per try. A try that fails retryably before it
   * sent anything is reported to node health and tried again on another node after a backoff,
   * while the policy and the deadline allow. When no node is left to try, the last try's error
   * is what the caller gets, not the scheduler's "no node". A request with fallbacks moves to
   * the next model, at once, when its model cannot be admitted or every node failed it before it
   * sent anything (`fallbackReason`); never after a message was sent. Every error is a ConnectError.
   */
  run<T>(req: FailoverRequest, attempt: (a: Attempt) => Promise<T>): Promise<T>;
}

/** Creates the failover loop. */
export function createFailover(deps: FailoverDeps): Failover {
  const policy = deps.policy ?? DEFAULT_RETRY_POLICY;
  const random = deps.random ?? Math.random;
  const observer = deps.observer;

  return {
    async run(req, attempt) {
      const { signal } = req;
      const fallbacks = req.fallbacks;
      /** How many of `fallbacks` are used up: 0 = serving `req.model`. */
      let index = 0;
      let model = req.model;
      let affinity = req.affinity;
      let fallback: FallbackReason | undefined;
      let modelTry = 0;
      // Made on the first failure: most calls never fail, and this runs for every call.
      let tried: Set<string> | undefined;
      let last: ConnectError | undefined;
      /** Moves to the next model when `err` allows it; false when there is none or it does not. */
      const fallBack = (err: ConnectError): boolean => {
        const reason = fallbackReason(err);
        if (reason === undefined || fallbacks === undefined || index >= fallbacks.length || signal.aborted)
          return false;
        model = fallbacks[index++]!;
        affinity = req.affinityOf?.(model);
        fallback = reason;
        modelTry = 0;
        tried?.clear();
        last = undefined;
        return true;
      };
      const started = observer === undefined ? 0 : performance.now();
      for (let number = 1; ; number++) {
        modelTry++;
        let dispatch: Dispatch;
        const asked = observer === undefined ? 0 : performance.now();
        try {
          dispatch = await deps.scheduler.acquire({
            model,
            priority: req.priority(),
            affinity,
            exclude: tried,
            signal,
            remainingMs: Math.max(0, req.remainingMs()),
          });
        } catch (e) {
          const err = toConnectError(e, signal, { model });
          if (fallBack(err)) continue;
          // Every node that has the model failed this call: say why.
          if (last !== undefined && !signal.aborted) {
            observer?.failedOver(req, false);
            throw last;
          }
          if (!signal.aborted) observer?.refused(req, err, asked);
          throw err;
        }
        const node = dispatch.node.name;
        observer?.admitted(req, node, number, asked, dispatch.queueMs);
        let sent = false;
        let loadMs: number | undefined;
        let timings: OllamaTimings | undefined;
        let wait = 0;
        try {
          const value = await attempt({
            node: dispatch.node,
            model,
            fallback,
            queueMs: dispatch.queueMs,
            number,
            sent: () => {
              if (!sent && observer !== undefined) observer.firstMessage(req, node, performance.now() - started);
              sent = true;
            },
            loaded: (ms, t) => {
              loadMs = ms;
              timings = t;
            },
          });
          deps.health.reportSuccess(node);
          if (number > 1) observer?.failedOver(req, true);
          return value;
        } catch (e) {
          const err = toConnectError(e, signal, { model, node });
          if (signal.aborted) throw err; // the caller's doing, not the node's
          const verdict = healthVerdict(e, err);
          if (verdict !== undefined) deps.health.reportFailure(node, verdict);
          const delay = nextTryDelayMs(
            { error: err, attempt: modelTry, sent, remainingMs: req.remainingMs() },
            policy,
            random,
          );
          observer?.failed(req, node, err, delay !== undefined);
          if (delay === undefined) {
            // The node said the model is not there (or the tries ran out) before anything was sent.
            if (!sent && fallBack(err)) continue;
            if (number > 1) observer?.failedOver(req, false);
            throw err;
          }
          (tried ??= new Set()).add(node);
          last = err;
          wait = delay;
        } finally {
          dispatch.release({ ...timings, loadMs });
        }
        await sleep(wait, signal).catch((e: unknown) => {
          throw toConnectError(e, signal, { model });
        });
      }
    },
  };
}

/**
 * What a failed try tells the node's circuit breaker: a node that could not be connected to is
 * down; other UNAVAILABLE and INTERNAL failures count as errors; the rest (a rejected request,
 * a model not found) say nothing about the node.
 */
export function healthVerdict(e: unknown, err: ConnectError): "unreachable" | "error" | undefined {
  if (isNodeDown(e)) return "unreachable";
  return err.code === Code.Unavailable || err.code === Code.Internal ? "error" : undefined;
}
