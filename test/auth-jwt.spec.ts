import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import type { CryptoKey, JWK, JWTPayload } from "jose";
import { compileAuthPolicy } from "../src/auth/auth-policy.js";
import type { JwtKeySource } from "../src/auth/jwt-keys.js";
import { createJwtVerifier } from "../src/auth/jwt-verifier.js";
import { DEFAULTS } from "../src/config/config.js";
import type { JwtConfig } from "../src/config/config.js";
import { EMPTY_AUTH_FILE } from "../src/config/auth-file.js";
import { GatewayService } from "../src/gen/ollama/gateway/v1/gateway_pb.js";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { startSimulator } from "../src/simulator/simulator.js";
import type { Simulator } from "../src/simulator/simulator.js";
import { drain, outcome, tempConfig } from "./helpers/auth.js";
import type { TempConfig } from "./helpers/auth.js";
import { delay, eventually } from "./helpers/sim-http.js";
import { startTestGateway } from "./helpers/test-gateway.js";
import type { TestGateway } from "./helpers/test-gateway.js";
import { TRANSPORTS } from "./helpers/transports.js";

const ISSUER = "https://idp.test/realms/main";
const AUDIENCE = "ollama-gateway";
const GENERATE = { model: "llama3.2", prompt: "Tell me about llamas", options: { numPredict: 2 } };

/** A signing key with its public JWK (kid and alg set). */
interface SigningKey {
  kid: string;
  privateKey: CryptoKey;
  jwk: JWK;
}

async function signingKey(kid: string): Promise<SigningKey> {
  const { privateKey, publicKey } = await generateKeyPair("ES256", { extractable: true });
  return { kid, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg: "ES256", use: "sig" } };
}

/** Signs a token: valid for our issuer and audience for 10 minutes unless `claims` and `times` say otherwise. */
function token(
  key: SigningKey,
  claims: JWTPayload = {},
  times: { exp?: number | null; nbf?: number } = {},
  kid: string = key.kid,
): Promise<string> {
  const nowS = Math.floor(Date.now() / 1000);
  const jwt = new SignJWT({ iss: ISSUER, aud: AUDIENCE, sub: "alice", iat: nowS, ...claims }).setProtectedHeader({
    alg: "ES256",
    kid,
  });
  if (times.exp !== null) jwt.setExpirationTime(nowS + (times.exp ?? 600));
  if (times.nbf !== undefined) jwt.setNotBefore(nowS + times.nbf);
  return jwt.sign(key.privateKey);
}

/** A JWKS endpoint on a free port, serving whatever keys the test sets, counting its requests. */
interface JwksServer {
  url: string;
  keys: JWK[];
  fetches: number;
  close(): Promise<void>;
}

async function jwksServer(keys: JWK[]): Promise<JwksServer> {
  const state = { keys, fetches: 0 };
  const server: Server = createServer((_req, res) => {
    state.fetches++;
    res.setHeader("content-type", "application/json");
    res.end(JSON.stringify({ keys: state.keys }));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  return Object.assign(state, {
    url: `http://127.0.0.1:${port}/realms/main/protocol/openid-connect/certs`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  });
}

describe("JWT bearer tokens verified against a JWKS", () => {
  let sim: Simulator;
  let gw: TestGateway;
  let jwks: JwksServer;
  let file: TempConfig;
  let k1: SigningKey;
  let k2: SigningKey;
  let attacker: SigningKey;

  before(async () => {
    [k1, k2, attacker] = await Promise.all([signingKey("k1"), signingKey("k2"), signingKey("k1")]);
    sim = await startSimulator();
    jwks = await jwksServer([k1.jwk]);
    file = await tempConfig({
      principals: [{ name: "alice", models: ["llama3.2", "all-minilm"] }],
      roles: { operators: { methods: ["status"] } },
    });
    gw = await startTestGateway({
      OLLAMA_URL: sim.url,
      GATEWAY_CONFIG_FILE: file.path,
      AUTH_MODE: "jwt",
      JWT_JWKS_URL: jwks.url,
      JWT_ISSUER: ISSUER,
      JWT_AUDIENCE: `other-service,${AUDIENCE}`,
      JWT_ROLES_CLAIM: "realm_access.roles",
      JWT_JWKS_COOLDOWN_MS: "1000",
    });
  });
  after(async () => {
    await gw.close();
    await sim.close();
    await jwks.close();
    await file.remove();
  });

  const cases: [string, () => Promise<string>, string][] = [
    ["a valid token", () => token(k1), "ok"],
    ["a token expired 10 s ago (within the clock skew)", () => token(k1, {}, { exp: -10 }), "ok"],
    ["a wrong signature", () => token(attacker), "Unauthenticated INVALID_CREDENTIALS"],
    ["a wrong issuer", () => token(k1, { iss: "https://evil.test" }), "Unauthenticated INVALID_CREDENTIALS"],
    ["a wrong audience", () => token(k1, { aud: "someone-else" }), "Unauthenticated INVALID_CREDENTIALS"],
    ["no expiry", () => token(k1, {}, { exp: null }), "Unauthenticated INVALID_CREDENTIALS"],
    ["no principal claim", () => token(k1, { sub: undefined }), "Unauthenticated INVALID_CREDENTIALS"],
    ["an expired token", () => token(k1, {}, { exp: -120 }), "Unauthenticated EXPIRED_CREDENTIALS"],
    ["a token not valid yet", () => token(k1, {}, { nbf: 120 }), "Unauthenticated EXPIRED_CREDENTIALS"],
  ];
  for (const t of TRANSPORTS) {
    for (const [what, make, want] of cases) {
      it(`${t.name}: ${what} ends ${want}`, async () => {
        const client = createClient(InferenceService, t.make(gw.url));
        const headers = { authorization: `Bearer ${await make()}` };
        // Twice: the second call is answered from the verified-token cache (or fails the same way).
        for (const round of [1, 2]) {
          assert.equal(await outcome(() => drain(client.generate(GENERATE, { headers }))), want, `Generate ${round}`);
          assert.equal(await outcome(() => client.embed({ model: "all-minilm", inputs: ["x"] }, { headers })), want);
        }
      });
    }
  }

  it("names the principal by its claim, applies its file entry and its token's roles, and logs no token", async () => {
    const client = createClient(InferenceService, createGrpcTransport({ baseUrl: gw.url }));
    const status = createClient(GatewayService, createGrpcTransport({ baseUrl: gw.url }));
    const plain = { authorization: `Bearer ${await token(k1)}` };
    assert.equal(
      await outcome(() => drain(client.generate({ ...GENERATE, model: "qwen3" }, { headers: plain }))),
      "PermissionDenied MODEL_NOT_ALLOWED",
    );
    assert.equal(await outcome(() => status.getStatus({}, { headers: plain })), "PermissionDenied METHOD_NOT_ALLOWED");
    const operator = { authorization: `Bearer ${await token(k1, { realm_access: { roles: ["operators"] } })}` };
    assert.equal(await outcome(() => status.getStatus({}, { headers: operator })), "ok");
    // Someone the file does not name gets the default permissions: every model, no status.
    const bob = { authorization: `Bearer ${await token(k1, { sub: "bob" })}`, "x-request-id": "bob-1" };
    assert.equal(await outcome(() => drain(client.generate({ ...GENERATE, model: "qwen3" }, { headers: bob }))), "ok");
    assert.equal(gw.logs.find("rpc").find((l) => l["requestId"] === "bob-1")?.["principal"], "bob");
    const everything = JSON.stringify(gw.logs.lines);
    for (const h of [plain, operator, bob]) {
      const signature = h.authorization.split(".")[2]!;
      assert.ok(!everything.includes(signature.slice(0, 16)), "a token was logged");
    }
  });

  it("fetches the JWKS again for an unknown kid (key rotation), at most once per cooldown however many arrive", async () => {
    const client = createClient(InferenceService, createGrpcTransport({ baseUrl: gw.url }));
    // A flood of tokens with kids nobody published: refused, and they cost the issuer at most one fetch.
    const before = jwks.fetches;
    const flood = await Promise.all(
      Array.from({ length: 40 }, async (_, i) => {
        const headers = { authorization: `Bearer ${await token(k2, {}, {}, `random-${i}`)}` };
        return outcome(() => drain(client.generate(GENERATE, { headers })));
      }),
    );
    assert.deepEqual(new Set(flood), new Set(["Unauthenticated INVALID_CREDENTIALS"]));
    assert.ok(jwks.fetches - before <= 1, `${jwks.fetches - before} JWKS fetches for 40 unknown kids`);
    // The issuer rotates to k2: a k2 token works once the gateway may fetch again (after the cooldown).
    jwks.keys = [k1.jwk, k2.jwk];
    const rotated = { authorization: `Bearer ${await token(k2)}` };
    let last = "";
    const until = Date.now() + 15_000;
    while (Date.now() < until) {
      last = await outcome(() => drain(client.generate(GENERATE, { headers: rotated })));
      if (last === "ok") break;
      await delay(100);
    }
    const accepted = last === "ok";
    assert.ok(accepted, `a token of the rotated key ended ${last}`);
    assert.ok(jwks.fetches - before <= 4, `${jwks.fetches - before} JWKS fetches in all`);
    // Tokens of the old key still work while the issuer still publishes it.
    const old = { authorization: `Bearer ${await token(k1)}` };
    assert.equal(await outcome(() => drain(client.generate(GENERATE, { headers: old }))), "ok");
  });
});

describe("a JWKS that cannot be fetched", () => {
  it("answers UNAVAILABLE with AUTH_UNAVAILABLE (not the caller's fault), and logs the failure", async () => {
    const key = await signingKey("k1");
    const dead = await jwksServer([]);
    await dead.close(); // a port nobody listens on
    const sim = await startSimulator();
    const gw = await startTestGateway({
      OLLAMA_URL: sim.url,
      AUTH_MODE: "jwt",
      JWT_JWKS_URL: dead.url,
      JWT_ISSUER: ISSUER,
      JWT_AUDIENCE: AUDIENCE,
    });
    try {
      const client = createClient(InferenceService, createGrpcTransport({ baseUrl: gw.url }));
      const headers = { authorization: `Bearer ${await token(key)}` };
      assert.equal(await outcome(() => drain(client.generate(GENERATE, { headers }))), "Unavailable AUTH_UNAVAILABLE");
      assert.ok(
        await eventually(() =>
          gw.logs.lines.some((l) => l["msg"] === "JWKS fetch failed: tokens are checked with the keys held"),
        ),
      );
    } finally {
      await gw.close();
      await sim.close();
    }
  });
});

describe("the verified-token cache", () => {
  const config: JwtConfig = {
    jwksUrl: undefined,
    keyFile: "unused",
    issuers: [ISSUER],
    audiences: [AUDIENCE],
    algorithms: DEFAULTS.jwt.algorithms,
    clockSkewS: 30,
    principalClaim: "sub",
    rolesClaim: "roles",
    jwksCooldownMs: 1000,
    jwksMaxAgeMs: 60_000,
    cacheEntries: 2,
  };

  /** A key source that counts how often a key is asked for (one per signature verification). */
  function countingKeys(key: SigningKey): JwtKeySource & { asked: number } {
    const source = {
      asked: 0,
      getKey: async () => {
        source.asked++;
        return key.jwk;
      },
      start() {},
      async reload() {},
      close() {},
    };
    return source;
  }

  it("answers a token seen before without verifying it again, until it expires, and stays bounded", async () => {
    const key = await signingKey("k1");
    const keys = countingKeys(key);
    let nowMs = Date.now();
    const verifier = createJwtVerifier({
      config,
      keys,
      policy: () => compileAuthPolicy(EMPTY_AUTH_FILE),
      now: () => nowMs,
    });
    const t = await token(key, {}, { exp: 60 });
    const first = verifier.verify(t);
    assert.ok(first instanceof Promise, "a new token is verified");
    assert.equal((await first).name, "alice");
    const second = verifier.verify(t);
    assert.ok(!(second instanceof Promise), "a known token is answered at once");
    assert.equal(keys.asked, 1);
    // Past its exp plus the skew, the cached answer is dropped and the token verified (and refused) again.
    nowMs += 91_000;
    await assert.rejects(async () => verifier.verify(t), /expired/);
    assert.equal(keys.asked, 2);
    nowMs = Date.now();
    for (let i = 0; i < 5; i++) await verifier.verify(await token(key, { sub: `u${i}` }));
    assert.equal(verifier.cached, 2, "never more than JWT_CACHE_ENTRIES");
    verifier.clear();
    assert.equal(verifier.cached, 0);
  });
});
