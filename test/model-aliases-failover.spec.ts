import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { ConnectError } from "@connectrpc/connect";
import { gatewayOverloaded, modelNotFound, queueFull } from "../src/errors/domain-errors.js";
import { errorReason } from "../src/errors/gateway-error.js";
import { DEFAULT_RETRY_POLICY } from "../src/routing/retry-policy.js";
import type { AdmissionRequest, Dispatch } from "../src/routing/scheduler.js";
import { createFailover } from "../src/services/failover.js";
import type { FailoverRequest } from "../src/services/failover.js";
import type { OllamaNode } from "../src/upstream/ollama-node.js";
import { UpstreamError } from "../src/upstream/upstream-error.js";

// The failover loop's use of an alias's fallbacks (README, "Model aliases"): each case is what
// the scheduler answers per model and what the loop then does.

function fakeNode(name: string): OllamaNode {
  const unused = (): never => assert.fail(`node ${name} was called`);
  return { name, url: `http://${name}`, stream: unused, open: unused, call: unused, close: unused };
}

/** A scheduler over one node `n0`: `refuse` says which models' admissions fail, with what. */
function setup(refuse: Record<string, () => Error>) {
  const admissions: { model: string; affinity: string | undefined }[] = [];
  let releases = 0;
  const scheduler = {
    acquire(req: AdmissionRequest): Promise<Dispatch> {
      admissions.push({ model: req.model, affinity: req.affinity });
      const error = refuse[req.model];
      if (error !== undefined) return Promise.reject(error());
      if (req.exclude?.has("n0")) return Promise.reject(modelNotFound(req.model));
      return Promise.resolve({ node: fakeNode("n0"), queueMs: 0, release: () => void releases++ });
    },
  };
  const health = { reportSuccess: () => undefined, reportFailure: () => undefined };
  const failover = createFailover({ scheduler, health, policy: DEFAULT_RETRY_POLICY, random: () => 0 });
  return { failover, admissions, releases: () => releases };
}

function request(over: Partial<FailoverRequest> = {}): FailoverRequest {
  return {
    model: "a",
    fallbacks: ["b", "c"],
    affinity: "aff:a",
    affinityOf: (m) => `aff:${m}`,
    signal: new AbortController().signal,
    priority: () => 0,
    remainingMs: () => 60_000,
    ...over,
  };
}

describe("failover with an alias's fallbacks", () => {
  it("serves the request's own model when it is admitted, saying no fallback was used", async () => {
    const { failover, admissions } = setup({});
    const served = await failover.run(request(), async (a) => [a.model, a.fallback]);
    assert.deepEqual(served, ["a", undefined]);
    assert.deepEqual(admissions, [{ model: "a", affinity: "aff:a" }]);
  });

  it("moves on to the next model, with its own affinity, when the model cannot be admitted", async () => {
    const { failover, admissions } = setup({ a: () => queueFull("a", 1, 10), b: () => modelNotFound("b") });
    const served = await failover.run(request(), async (a) => [a.model, a.fallback]);
    assert.deepEqual(served, ["c", "model-not-found"], "the reason is the last refusal's");
    assert.deepEqual(
      admissions.map((x) => [x.model, x.affinity]),
      [
        ["a", "aff:a"],
        ["b", "aff:b"],
        ["c", "aff:c"],
      ],
    );
  });

  it("answers with the last refusal when no model is left", async () => {
    const { failover } = setup({
      a: () => queueFull("a", 1, 10),
      b: () => queueFull("b", 1, 10),
      c: () => queueFull("c", 1, 10),
    });
    const err = await failover.run(request(), async () => "never").catch((e: unknown) => e);
    assert.ok(err instanceof ConnectError);
    assert.equal(errorReason(err), "QUEUE_FULL");
    assert.match(err.message, /queue for c/);
  });

  it("does not fall back on an error that is no admission refusal", async () => {
    const { failover, admissions } = setup({ a: () => gatewayOverloaded(5) });
    const err = await failover.run(request(), async () => "never").catch((e: unknown) => e);
    assert.equal(errorReason(err as ConnectError), "GATEWAY_OVERLOADED");
    assert.deepEqual(
      admissions.map((x) => x.model),
      ["a"],
    );
  });

  it("falls back when the node says the model is not there before anything was sent", async () => {
    const { failover, releases } = setup({});
    const served = await failover.run(request(), async (a) => {
      if (a.model === "a") throw new UpstreamError("http", 'model "a" not found, try pulling it first', "n0", 404);
      return [a.model, a.fallback];
    });
    assert.deepEqual(served, ["b", "model-not-found"]);
    assert.equal(releases(), 2, "each try's slot was given back once");
  });

  it("never falls back once a message was sent", async () => {
    const { failover, admissions } = setup({});
    const err = await failover
      .run(request(), async (a) => {
        a.sent();
        throw new UpstreamError("http", 'model "a" not found', "n0", 404);
      })
      .catch((e: unknown) => e);
    assert.ok(err instanceof ConnectError);
    assert.deepEqual(
      admissions.map((x) => x.model),
      ["a"],
    );
  });

  it("a request without fallbacks fails as before", async () => {
    const { failover } = setup({ a: () => queueFull("a", 1, 10) });
    const err = await failover.run(request({ fallbacks: undefined }), async () => "never").catch((e: unknown) => e);
    assert.equal(errorReason(err as ConnectError), "QUEUE_FULL");
  });
});
