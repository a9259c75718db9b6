import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { ConnectError, createClient } from "@connectrpc/connect";
import type { Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Redis } from "ioredis";
import { ErrorInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { ModelService } from "../src/gen/ollama/gateway/v1/model_pb.js";
import { LIMITS_LOCAL_MSG, LIMITS_SHARED_MSG } from "../src/limits/limiter.js";
import { startSimulator } from "../src/simulator/simulator.js";
import type { Simulator } from "../src/simulator/simulator.js";
import { spawnGateway } from "./helpers/gateway-process.js";
import type { GatewayProcess } from "./helpers/gateway-process.js";
import { startRedis } from "./helpers/redis-server.js";
import type { RedisServer } from "./helpers/redis-server.js";

const RPS = 10;
const BURST = 5;

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await sleep(25);
  }
}

const logged = (g: GatewayProcess, msg: string): number => g.lines().filter((l) => l["msg"] === msg).length;

/** Calls ListModels on `client` back to back from `loops` loops for `ms`; counts the admitted and the refusals by reason. */
async function hammer(
  client: Client<typeof ModelService>,
  ms: number,
  loops = 2,
): Promise<{ ok: number; refused: Map<string, number> }> {
  const refused = new Map<string, number>();
  let ok = 0;
  const end = performance.now() + ms;
  const loop = async (): Promise<void> => {
    while (performance.now() < end) {
      try {
        await client.listModels({}, { timeoutMs: 5000 });
        ok++;
      } catch (e) {
        const err = ConnectError.from(e);
        const reason = err.findDetails(ErrorInfoSchema)[0]?.reason ?? `code ${err.code}: ${err.rawMessage}`;
        refused.set(reason, (refused.get(reason) ?? 0) + 1);
      }
    }
  };
  await Promise.all(Array.from({ length: loops }, loop));
  return { ok, refused };
}

/*
 * Two gateway *processes* (the production entry point) share one real redis-server and one
 * simulator, with the quick setup RATE_LIMIT_RPS / RATE_LIMIT_BURST. Authentication is off, so
 * the principal is the client address, the same (127.0.0.1) on both: one bucket for both.
 */
describe("the request limit held by two gateway processes sharing a real Redis", { timeout: 90_000 }, () => {
  let redis: RedisServer | undefined;
  let raw: Redis | undefined;
  let sim: Simulator | undefined;
  const gateways: GatewayProcess[] = [];
  let clients: Client<typeof ModelService>[] = [];

  before(async () => {
    redis = await startRedis();
    raw = new Redis(redis.url);
    raw.on("error", () => undefined); // stopped on purpose below
    sim = await startSimulator({});
    const env = {
      OLLAMA_URL: sim.url,
      REDIS_URL: redis.url,
      RATE_LIMIT_RPS: String(RPS),
      RATE_LIMIT_BURST: String(BURST),
      // Generous: a command timing out on a loaded machine would switch to local shares mid-count.
      REDIS_COMMAND_TIMEOUT_MS: "1000",
    };
    const started = await Promise.allSettled([spawnGateway(env), spawnGateway(env)]);
    for (const s of started) if (s.status === "fulfilled") gateways.push(s.value);
    const failed = started.find((s): s is PromiseRejectedResult => s.status === "rejected");
    if (failed !== undefined) throw failed.reason;
    clients = gateways.map((g) => createClient(ModelService, createGrpcTransport({ baseUrl: g.url })));
    await waitFor("both share the limits", () => gateways.every((g) => logged(g, LIMITS_SHARED_MSG) === 1));
    await waitFor("each counts the other", async () => (await raw!.zcard("ogw:v1:rl:replicas")) === 2);
  });

  after(async () => {
    await Promise.all(gateways.map((g) => g.stop()));
    raw?.disconnect();
    await sim?.close();
    await redis?.stop();
  });

  it("together admit at most the rate times the time plus the burst, not twice that", async () => {
    const start = performance.now();
    const [a, b] = await Promise.all(clients.map((c) => hammer(c, 3000)));
    const seconds = (performance.now() - start) / 1000;
    const ok = a!.ok + b!.ok;
    // One call of credit per replica may run ahead of the shared bucket (README, "Rate limits and quotas").
    const bound = RPS * seconds + BURST + 2;
    assert.ok(ok <= bound, `admitted ${ok} in ${seconds.toFixed(2)} s, more than ${bound.toFixed(1)}`);
    assert.ok(ok >= RPS * seconds * 0.6, `admitted only ${ok} in ${seconds.toFixed(2)} s`);
    assert.ok(a!.ok > 0 && b!.ok > 0, "both admitted calls");
    for (const r of [a!, b!]) assert.deepEqual([...r.refused.keys()], ["RATE_LIMITED"]);
  });

  it("with Redis stopped, each enforces its share and no call fails because of Redis", async () => {
    await redis!.kill();
    await waitFor("both noticed", () => gateways.every((g) => logged(g, LIMITS_LOCAL_MSG) === 1));
    const start = performance.now();
    const [a, b] = await Promise.all(clients.map((c) => hammer(c, 2500)));
    const seconds = (performance.now() - start) / 1000;
    const ok = a!.ok + b!.ok;
    // Each alone: its share (rate / 2, burst / 2), plus what it had leased before (at most its share of the burst).
    const bound = RPS * seconds + BURST + 2 * Math.ceil(BURST / 2) + 2;
    assert.ok(ok <= bound, `admitted ${ok} in ${seconds.toFixed(2)} s alone, more than ${bound.toFixed(1)}`);
    for (const r of [a!, b!]) {
      assert.ok(r.ok >= (RPS / 2) * seconds * 0.6, `each keeps serving its share: ${a!.ok}, ${b!.ok}`);
      assert.deepEqual([...r.refused.keys()], ["RATE_LIMITED"], "only the limit refuses");
    }
  });
});
