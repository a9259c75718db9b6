import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorInfoSchema, RetryInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { noHealthyNodeFor } from "../src/errors/domain-errors.js";
import { errorReason } from "../src/errors/gateway-error.js";
import { toConnectError } from "../src/errors/to-connect-error.js";
import { DEFAULT_RETRY_POLICY, nextTryDelayMs } from "../src/routing/retry-policy.js";
import type { RetryPolicy } from "../src/routing/retry-policy.js";
import type { AdmissionRequest, Dispatch } from "../src/routing/scheduler.js";
import { createFailover, healthVerdict } from "../src/services/failover.js";
import type { Attempt, FailoverRequest } from "../src/services/failover.js";
import type { OllamaNode } from "../src/upstream/ollama-node.js";
import { UpstreamError } from "../src/upstream/upstream-error.js";
import { fleet, reason, run } from "./helpers/fleet.js";
import type { Fleet } from "./helpers/fleet.js";

/** Ollama's 503: retryable. */
const busy = (node: string): UpstreamError => new UpstreamError("http", "server busy", node, 503);
/** Ollama's 400: the request's fault, never retried. */
const rejected = (node: string): UpstreamError => new UpstreamError("http", "bad input", node, 400);
/** A refused connection: the node is down. */
const refused = (): Error => Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" });

/** A node that only has a name: the attempts under test never call it. */
function fakeNode(name: string): OllamaNode {
  const unused = (): never => assert.fail(`node ${name} was called`);
  return { name, url: `http://${name}`, stream: unused, open: unused, call: unused, close: unused };
}

/**
 * A scheduler over `nodes` that hands out the first node not excluded (or throws "no healthy
 * node", as the real one does), records every admission and counts the releases of each slot.
 */
function fakeScheduler(nodes: readonly string[]) {
  const admissions: (AdmissionRequest & { excluded: string[] })[] = [];
  const slots: { node: string; releases: { loadMs?: number }[] }[] = [];
  return {
    admissions,
    slots,
    acquire(req: AdmissionRequest): Promise<Dispatch> {
      admissions.push({ ...req, excluded: [...(req.exclude ?? [])].sort() });
      const node = nodes.find((n) => !req.exclude?.has(n));
      if (node === undefined) return Promise.reject(noHealthyNodeFor(req.model));
      const slot = { node, releases: [] as { loadMs?: number }[] };
      slots.push(slot);
      return Promise.resolve({
        node: fakeNode(node),
        queueMs: 7,
        release: (observed) => void slot.releases.push({ ...observed }),
      });
    },
  };
}

/** Node health that records what it is told. */
function fakeHealth() {
  const reports: string[] = [];
  return {
    reports,
    reportSuccess: (node: string) => void reports.push(`${node} ok`),
    reportFailure: (node: string, kind?: string) => void reports.push(`${node} ${kind}`),
  };
}

/** Five tries; with the setup's default jitter of 0 every backoff is 0 ms, so retries are immediate. */
const NO_WAIT: RetryPolicy = { ...DEFAULT_RETRY_POLICY, maxAttempts: 5 };

function setup(nodes: readonly string[], policy: RetryPolicy = NO_WAIT, random: () => number = () => 0) {
  const scheduler = fakeScheduler(nodes);
  const health = fakeHealth();
  const failover = createFailover({ scheduler, health, policy, random });
  return { scheduler, health, failover };
}

function request(over: Partial<FailoverRequest> = {}): FailoverRequest {
  return {
    model: "m",
    signal: new AbortController().signal,
    priority: () => 0,
    remainingMs: () => 60_000,
    ...over,
  };
}

/** An attempt that fails on the nodes listed with the error given, and answers its node's name elsewhere. */
function failingOn(errors: Record<string, (node: string) => unknown>) {
  return (a: Attempt): Promise<string> => {
    const make = errors[a.node.name];
    return make ? Promise.reject(make(a.node.name)) : Promise.resolve(a.node.name);
  };
}

/** The error `p` rejects with, as a ConnectError. */
async function failure(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof ConnectError, `not a ConnectError: ${String(e)}`);
    return e;
  }
  return assert.fail("it did not fail");
}

const everySlotReleasedOnce = (slots: { releases: unknown[] }[]): boolean =>
  slots.every((s) => s.releases.length === 1);

describe("failover of one upstream call", () => {
  it("tries another node after a retryable failure before anything was sent, excluding the node that failed", async () => {
    const { scheduler, health, failover } = setup(["n0", "n1"]);
    const served = await failover.run(request(), failingOn({ n0: busy }));
    assert.equal(served, "n1");
    assert.deepEqual(
      scheduler.admissions.map((a) => a.excluded),
      [[], ["n0"]],
    );
    assert.deepEqual(health.reports, ["n0 error", "n1 ok"]);
    assert.ok(everySlotReleasedOnce(scheduler.slots));
  });

  it("does not retry an error that belongs to the request", async () => {
    const { scheduler, health, failover } = setup(["n0", "n1"]);
    const err = await failure(failover.run(request(), failingOn({ n0: rejected })));
    assert.equal(err.code, Code.InvalidArgument);
    assert.equal(scheduler.admissions.length, 1);
    assert.deepEqual(health.reports, [], "a rejected request says nothing about the node");
  });

  it("never retries once something was sent to the client", async () => {
    const { scheduler, failover } = setup(["n0", "n1"]);
    const err = await failure(
      failover.run(request(), async (a) => {
        a.sent();
        throw busy(a.node.name);
      }),
    );
    assert.equal(errorReason(err), "UPSTREAM_BUSY");
    assert.equal(scheduler.admissions.length, 1);
    assert.ok(everySlotReleasedOnce(scheduler.slots));
  });

  it("stops when the backoff would not end before the deadline", async () => {
    // Full jitter at its top: the first backoff is the policy's initial 50 ms.
    const { scheduler, failover } = setup(["n0", "n1"], NO_WAIT, () => 1);
    const err = await failure(failover.run(request({ remainingMs: () => 40 }), failingOn({ n0: busy })));
    assert.equal(errorReason(err), "UPSTREAM_BUSY");
    assert.equal(err.findDetails(ErrorInfoSchema)[0]?.metadata["node"], "n0");
    assert.equal(scheduler.admissions.length, 1);
  });

  it("stops after the policy's number of tries", async () => {
    const { scheduler, failover } = setup(["n0", "n1", "n2"], { ...NO_WAIT, maxAttempts: 2 });
    const err = await failure(failover.run(request(), failingOn({ n0: busy, n1: busy })));
    assert.equal(errorReason(err), "UPSTREAM_BUSY");
    assert.deepEqual(
      scheduler.slots.map((s) => s.node),
      ["n0", "n1"],
    );
  });

  it("surfaces the last node's error, not 'no node', when every node that has the model failed", async () => {
    const { scheduler, failover } = setup(["n0", "n1"]);
    const err = await failure(failover.run(request(), failingOn({ n0: busy, n1: refused })));
    assert.equal(err.code, Code.Unavailable);
    assert.equal(err.findDetails(ErrorInfoSchema)[0]?.metadata["node"], "n1");
    assert.match(err.rawMessage, /unreachable/);
    assert.equal(scheduler.admissions.length, 3, "the third admission found no node left");
    assert.ok(everySlotReleasedOnce(scheduler.slots));
  });

  it("passes the scheduler's own refusal through when nothing was tried yet", async () => {
    const { failover } = setup([]);
    const err = await failure(failover.run(request(), failingOn({})));
    assert.equal(err.rawMessage, "no healthy Ollama node has this model");
  });

  it("tells node health a refused connection is a node down, and a success a success", async () => {
    const { health, failover } = setup(["n0", "n1"]);
    await failover.run(request(), failingOn({ n0: refused }));
    assert.deepEqual(health.reports, ["n0 unreachable", "n1 ok"]);
  });

  it("blames no node and tries no other when the caller went away", async () => {
    const { scheduler, health, failover } = setup(["n0", "n1"]);
    const caller = new AbortController();
    const gone = new ConnectError("cancelled by the client", Code.Canceled);
    const err = await failure(
      failover.run(request({ signal: caller.signal }), async () => {
        caller.abort(gone);
        throw refused();
      }),
    );
    assert.equal(err, gone);
    assert.deepEqual(health.reports, []);
    assert.equal(scheduler.admissions.length, 1);
    assert.ok(everySlotReleasedOnce(scheduler.slots));
  });

  it("stops waiting out a backoff when the caller goes away", async () => {
    const { scheduler, failover } = setup(
      ["n0", "n1"],
      { ...NO_WAIT, initialBackoffMs: 60_000, maxBackoffMs: 60_000 },
      () => 1,
    );
    const caller = new AbortController();
    const gone = new ConnectError("deadline exceeded", Code.DeadlineExceeded);
    const run = failover.run(request({ signal: caller.signal, remainingMs: () => 120_000 }), (a) => {
      // The first try fails; the abort comes while the 60 s backoff runs.
      setImmediate(() => caller.abort(gone));
      return Promise.reject(busy(a.node.name));
    });
    assert.equal(await failure(run), gone);
    assert.equal(scheduler.admissions.length, 1);
  });

  it("releases every slot exactly once, with the load time the try observed", async () => {
    const { scheduler, failover } = setup(["n0", "n1"]);
    await failover.run(request(), async (a) => {
      a.loaded(a.node.name === "n0" ? undefined : 1234);
      if (a.node.name === "n0") throw busy("n0");
      return "ok";
    });
    assert.deepEqual(
      scheduler.slots.map((s) => [s.node, s.releases]),
      [
        ["n0", [{ loadMs: undefined }]],
        ["n1", [{ loadMs: 1234 }]],
      ],
    );
  });

  it("asks the scheduler with the caller's priority, affinity and time left, read afresh for every try", async () => {
    const { scheduler, failover } = setup(["n0", "n1"]);
    // A clock the tries move on, and a priority that changes between tries (as a batch's may).
    let clock = 0;
    let priority = 3;
    await failover.run(
      request({ affinity: "session-1", priority: () => priority, remainingMs: () => 5_000 - clock }),
      (a) => {
        clock += 1_000;
        priority = 8;
        return failingOn({ n0: busy })(a);
      },
    );
    assert.deepEqual(
      scheduler.admissions.map((a) => [a.priority, a.affinity, a.remainingMs]),
      [
        [3, "session-1", 5_000],
        [8, "session-1", 4_000],
      ],
    );
  });

  it("gives the attempt its node, its queue time and its number", async () => {
    const { failover } = setup(["n0", "n1"]);
    const seen: string[] = [];
    await failover.run(request(), async (a) => {
      seen.push(`${a.number} ${a.node.name} ${a.queueMs}`);
      if (a.number === 1) throw busy(a.node.name);
    });
    assert.deepEqual(seen, ["1 n0 7", "2 n1 7"]);
  });
});

describe("the retry policy's decision after a failed try", () => {
  const busyErr = toConnectError(busy("n0"));
  const policy: RetryPolicy = { maxAttempts: 3, initialBackoffMs: 50, maxBackoffMs: 1000, multiplier: 2 };
  const cases: {
    name: string;
    error?: ConnectError;
    attempt?: number;
    sent?: boolean;
    left?: number;
    want?: number;
  }[] = [
    { name: "retryable, first try, time left: the first backoff", want: 50 },
    { name: "the second retry backs off twice as long", attempt: 2, want: 100 },
    { name: "tries used up: final", attempt: 3, want: undefined },
    { name: "something was sent: final", sent: true, want: undefined },
    { name: "not retryable: final", error: toConnectError(rejected("n0")), want: undefined },
    {
      name: "a stream error that is not the runner dying: final",
      error: toConnectError(new UpstreamError("stream", "boom", "n0")),
      want: undefined,
    },
    { name: "backoff as long as the time left: final", left: 50, want: undefined },
    { name: "backoff shorter than the time left: retry", left: 51, want: 50 },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const got = nextTryDelayMs(
        { error: c.error ?? busyErr, attempt: c.attempt ?? 1, sent: c.sent ?? false, remainingMs: c.left ?? 10_000 },
        policy,
        () => 1,
      );
      assert.equal(got, c.want);
    });
  }
});

describe("what a failed try tells node health", () => {
  const cases: { name: string; e: unknown; want: "unreachable" | "error" | undefined }[] = [
    { name: "connection refused: the node is down", e: refused(), want: "unreachable" },
    { name: "busy: an error", e: busy("n0"), want: "error" },
    { name: "a broken stream: an error", e: new UpstreamError("protocol", "bad line", "n0"), want: "error" },
    { name: "a rejected request: nothing", e: rejected("n0"), want: undefined },
    { name: "model not found: nothing", e: new UpstreamError("http", "not found", "n0", 404), want: undefined },
  ];
  for (const c of cases) {
    it(c.name, () => assert.equal(healthVerdict(c.e, toConnectError(c.e)), c.want));
  }
});

describe("failover through the gateway: Embed as Generate", { timeout: 60_000 }, () => {
  /** One call of each kind: the node that served it, or the error it ended with. */
  const kinds: {
    name: string;
    path: string;
    call(f: Fleet, text: string): Promise<{ node?: string; error?: ConnectError }>;
  }[] = [
    {
      name: "Generate",
      path: "/api/generate",
      call: async (f, text) => {
        const r = await run(f.client, { model: "llama3.2", prompt: text, options: { numPredict: 2 } });
        return { node: r.node, error: r.error };
      },
    },
    {
      name: "Embed",
      path: "/api/embed",
      call: (f, text) =>
        f.client.embed({ model: "all-minilm", inputs: [text] }).then(
          (r) => ({ node: r.usage?.node }),
          (e: unknown) => ({ error: ConnectError.from(e) }),
        ),
    },
  ];
  /** Two nodes with room for both models, one slot each, no embedding cache. */
  const twoNodes = (): Promise<Fleet> => fleet(2, {}, { EMBED_CACHE: "off" }, 1, 2);
  const index = (node: string | undefined): number => Number(node?.slice(1));

  for (const kind of kinds) {
    it(`${kind.name}: a node that answers busy before anything was sent is left for the other node`, async () => {
      const f = await twoNodes();
      try {
        const warm = await kind.call(f, "warm");
        assert.equal(warm.error, undefined);
        const loadedOn = index(warm.node);
        f.sims[loadedOn]!.faults.add({ kind: "busy", path: kind.path, times: 1 });
        const r = await kind.call(f, "retry me");
        assert.equal(r.error, undefined);
        assert.equal(f.sims[loadedOn]!.stats.faultsTriggered, 1, "the node where the model was loaded refused first");
        assert.equal(r.node, `n${1 - loadedOn}`, "and the other node served it");
      } finally {
        await f.close();
      }
    });

    it(`${kind.name}: a node that is down is left for the other node`, async () => {
      const f = await twoNodes();
      try {
        const warm = await kind.call(f, "warm");
        const loadedOn = index(warm.node);
        await f.sims[loadedOn]!.close();
        const r = await kind.call(f, "elsewhere");
        assert.equal(r.error, undefined);
        assert.equal(r.node, `n${1 - loadedOn}`);
      } finally {
        await f.close();
      }
    });

    it(`${kind.name}: when every node is busy the client gets the last node's UPSTREAM_BUSY, not "no node"`, async () => {
      const f = await twoNodes();
      try {
        for (const sim of f.sims) sim.faults.add({ kind: "busy", path: kind.path, times: Number.POSITIVE_INFINITY });
        const r = await kind.call(f, "nobody");
        assert.equal(r.error?.code, Code.Unavailable, r.error?.message);
        assert.equal(reason(r.error), "UPSTREAM_BUSY");
        assert.match(r.error?.findDetails(ErrorInfoSchema)[0]?.metadata["node"] ?? "", /^n[01]$/);
        assert.equal(r.error?.findDetails(RetryInfoSchema).length, 1);
        assert.deepEqual(
          f.sims.map((s) => s.stats.faultsTriggered),
          [1, 1],
          "each node was tried once",
        );
      } finally {
        await f.close();
      }
    });
  }
});
