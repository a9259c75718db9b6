import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";
import { errors as joseErrors } from "jose";
import { compileAuthPolicy } from "../src/auth/auth-policy.js";
import { createAuthenticator } from "../src/auth/authenticator.js";
import { API_KEY_PREFIX, createKeyIndex, hashApiKey, newApiKey } from "../src/auth/api-keys.js";
import { decideIdentity, principalOfCertificate } from "../src/auth/client-certificate.js";
import { presentedCredential } from "../src/auth/credentials.js";
import { compileGrants, effectiveGrants } from "../src/auth/grants.js";
import { mayRefetchForUnknownKid, KeysUnavailableError } from "../src/auth/jwt-keys.js";
import { claimAt, jwtFailure, rolesIn } from "../src/auth/jwt-verifier.js";
import {
  BUILT_IN_DEFAULT_GRANTS,
  EMPTY_AUTH_FILE,
  expandMethodGrant,
  METHOD_GROUPS,
  parseApiKeysEnv,
  parseAuthFile,
} from "../src/config/auth-file.js";
import type { AuthFileConfig } from "../src/config/auth-file.js";
import type { AuthConfig } from "../src/config/config.js";
import { ConfigError, loadConfig } from "../src/config/load-config.js";
import { ErrorInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { Health } from "../src/gen/grpc/health/v1/health_pb.js";
import { ServerReflection } from "../src/gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ServerReflectionV1alpha } from "../src/gen/grpc/reflection/v1alpha/reflection_pb.js";
import { GatewayService } from "../src/gen/ollama/gateway/v1/gateway_pb.js";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { ModelService } from "../src/gen/ollama/gateway/v1/model_pb.js";
import { kRpcInfo } from "../src/observability/rpc-info.js";
import { tempConfig } from "./helpers/auth.js";
import { callValues } from "../src/pipeline/call.js";
import type { Call } from "../src/pipeline/call.js";
import { exemptionsOf } from "../src/pipeline/exemptions.js";
import { createPipeline } from "../src/pipeline/pipeline.js";
import type { CallEnd, WaitingCallHook } from "../src/pipeline/pipeline.js";

/** The ErrorInfo reason of an error, or its message when it has none. */
function reasonOf(e: unknown): string {
  if (!(e instanceof ConnectError)) return `not a ConnectError: ${String(e)}`;
  return e.findDetails(ErrorInfoSchema)[0]?.reason ?? e.message;
}

/** Parses an auth section, failing on any problem. */
function authFile(file: Record<string, unknown>): AuthFileConfig {
  const problems: string[] = [];
  const parsed = parseAuthFile(file, [], problems);
  assert.deepEqual(problems, []);
  return parsed;
}

const HASH = "a".repeat(64);

describe("credentials in the headers", () => {
  it("reads a bearer token or an x-api-key, and tells a JWT by its shape", () => {
    const table: [Record<string, string>, string][] = [
      [{}, "none"],
      [{ authorization: "Bearer ogw_abc" }, "bearer ogw_abc"],
      [{ authorization: "bearer   ogw_abc " }, "bearer ogw_abc"],
      [{ "x-api-key": "ogw_abc" }, "bearer ogw_abc"],
      [{ authorization: "Bearer ogw_a", "x-api-key": "ogw_b" }, "bearer ogw_a"],
      [{ authorization: "Basic dXNlcjpwdw==" }, "malformed"],
      [{ authorization: "Bearer" }, "malformed"],
      [{ authorization: "Bearer  " }, "malformed"],
      [{ "x-api-key": "" }, "malformed"],
      [{ authorization: "Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln" }, "jwt"],
      [{ authorization: "Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0" }, "bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0"],
      [{ authorization: "Bearer eyJ.a.b.c" }, "bearer eyJ.a.b.c"],
    ];
    for (const [headers, want] of table) {
      const c = presentedCredential(new Headers(headers));
      const got = c.kind === "bearer" ? (c.looksLikeJwt ? "jwt" : `bearer ${c.value}`) : c.kind;
      assert.equal(got, want, JSON.stringify(headers));
    }
  });
});

describe("API keys", () => {
  it("makes 256-bit prefixed keys that differ every time, hashed as lowercase SHA-256 hex", () => {
    const a = newApiKey();
    const b = newApiKey();
    assert.ok(a.startsWith(API_KEY_PREFIX) && a.length === API_KEY_PREFIX.length + 43, a);
    assert.notEqual(a, b);
    assert.match(hashApiKey(a), /^[0-9a-f]{64}$/);
    assert.equal(hashApiKey("ogw_x"), "c75d45f6b44990182b9662e45a76fa1f47b109afcaed0378e529456ee8701eb8");
  });

  it("finds a valid key's owner, and tells unknown, disabled and expired keys apart only to the index", () => {
    const index = createKeyIndex([
      { sha256: hashApiKey("good"), owner: "a", expiresAtMs: undefined, disabled: false },
      { sha256: hashApiKey("off"), owner: "b", expiresAtMs: undefined, disabled: true },
      { sha256: hashApiKey("old"), owner: "c", expiresAtMs: 1000, disabled: false },
      { sha256: hashApiKey("later"), owner: "d", expiresAtMs: 5000, disabled: false },
    ]);
    const table: [string, string][] = [
      ["good", "ok a"],
      ["off", "disabled"],
      ["old", "expired"],
      ["later", "ok d"],
      ["Good", "unknown"],
      ["", "unknown"],
      ["x".repeat(10_000), "unknown"],
    ];
    for (const [key, want] of table) {
      const m = index.match(key, 2000);
      assert.equal(m.ok ? `ok ${m.owner}` : m.why, want, key.slice(0, 20));
    }
    assert.equal(index.match("later", 5000).ok, false, "expired at its expiry instant");
  });

  it("reads API_KEYS as name:sha256 pairs and never echoes a bad entry (it may be a pasted key)", () => {
    const problems: string[] = [];
    const ok = parseApiKeysEnv(` svc-a:${HASH.toUpperCase()} , svc-b:${"b".repeat(64)},`, problems);
    assert.deepEqual(problems, []);
    assert.deepEqual(
      ok.map((p) => [p.name, p.keys[0]!.sha256]),
      [
        ["svc-a", HASH],
        ["svc-b", "b".repeat(64)],
      ],
    );
    const bad: string[] = [];
    parseApiKeysEnv("ogw_secretkeyvalue,svc:123", bad);
    assert.equal(bad.length, 2);
    assert.ok(!bad.join(" ").includes("ogw_secretkeyvalue"), bad.join(" "));
  });
});

describe("the config file's principals, roles and default permissions", () => {
  it("reports every problem with its path", () => {
    const problems: string[] = [];
    parseAuthFile(
      {
        principals: [
          { name: "a", keys: [{ sha256: "nothex" }], models: ["bad model"], methods: ["Nope"], maxPriority: 101 },
          { name: "a", keys: [{ sha256: HASH, expiresAt: "tomorrow", disabled: "yes", secret: 1 }], roles: ["ghost"] },
          { keys: [] },
          { name: "b", keys: [{ sha256: HASH }], model: ["typo"] },
        ],
        roles: { ops: { methods: ["*"], extra: true } },
        defaultPermissions: { maxPriority: "high" },
      },
      [],
      problems,
    );
    const expected = [
      /principals\[0\] \(a\)\.keys\[0\]\.sha256/,
      /principals\[0\] \(a\)\.models entry "bad model"/,
      /principals\[0\] \(a\)\.methods entry "Nope"/,
      /principals\[0\] \(a\)\.maxPriority/,
      /principals\[1\] \(a\)\.keys\[0\]\.secret is not a key field/,
      /principals\[1\] \(a\)\.keys\[0\]\.expiresAt/,
      /principals\[1\] \(a\)\.keys\[0\]\.disabled/,
      /principals\[1\] \(a\)\.roles names "ghost"/,
      /principals\[2\]\.name/,
      /principals\[3\] \(b\)\.model is not a permission/,
      /roles\.ops\.extra is not a permission/,
      /defaultPermissions\.maxPriority/,
      /principal "a" is defined twice/,
      /principal "b": a key hash is used twice/,
    ];
    for (const re of expected)
      assert.ok(
        problems.some((p) => re.test(p)),
        `${re} not in\n${problems.join("\n")}`,
      );
    assert.equal(problems.length, expected.length, problems.join("\n"));
  });

  it("names every RPC of the contract in exactly one method group", () => {
    const grouped = Object.values(METHOD_GROUPS).flat();
    const contract = [InferenceService, ModelService, GatewayService].flatMap((s) =>
      s.methods.map((m) => `${s.name}/${m.name}`),
    );
    assert.deepEqual([...grouped].sort(), [...contract].sort());
    assert.equal(new Set(grouped).size, grouped.length);
  });

  it("expands method grants: groups, *, short, service and full names", () => {
    assert.deepEqual(expandMethodGrant("PullModel"), ["ModelService/PullModel"]);
    assert.deepEqual(expandMethodGrant("ModelService/PullModel"), ["ModelService/PullModel"]);
    assert.deepEqual(expandMethodGrant("ollama.gateway.v1.ModelService/PullModel"), ["ModelService/PullModel"]);
    assert.equal(expandMethodGrant("inference")?.length, 3);
    assert.equal(expandMethodGrant("*")?.length, 12);
    assert.equal(expandMethodGrant("Check"), undefined);
  });
});

describe("grants", () => {
  it("match models in every spelling, with globs, case-insensitively", () => {
    const g = compileGrants({
      models: ["llama3.2", "qwen3:*", "nomic*", "Library/Mistral"],
      methods: [],
      maxPriority: 0,
    });
    const table: [string, boolean][] = [
      ["llama3.2", true],
      ["llama3.2:latest", true],
      ["LLAMA3.2", true],
      ["library/llama3.2", true],
      ["registry.ollama.ai/library/llama3.2:latest", true],
      ["llama3.2:1b", false],
      ["qwen3", true],
      ["qwen3:8b", true],
      ["qwen2.5", false],
      ["nomic-embed-text", true],
      ["mistral", true],
      ["someone/llama3.2", false],
      ["all-minilm", false],
    ];
    for (const [model, want] of table) assert.equal(g.modelAllowed(model), want, model);
    assert.equal(compileGrants({ models: ["*"], methods: [], maxPriority: 0 }).modelAllowed("anything"), true);
    assert.equal(compileGrants({ models: [], methods: [], maxPriority: 0 }).modelAllowed("llama3.2"), false);
  });

  it("allow exactly the methods of their groups and names", () => {
    const g = compileGrants({ models: [], methods: ["inference", "PullModel"], maxPriority: 0 });
    const table: [string, boolean][] = [
      ["ollama.gateway.v1.InferenceService/Generate", true],
      ["ollama.gateway.v1.InferenceService/Embed", true],
      ["ollama.gateway.v1.ModelService/PullModel", true],
      ["ollama.gateway.v1.ModelService/DeleteModel", false],
      ["ollama.gateway.v1.ModelService/ListModels", false],
      ["ollama.gateway.v1.GatewayService/GetStatus", false],
    ];
    for (const [path, want] of table) assert.equal(g.methodAllowed(path), want, path);
  });

  it("by default allow inference and model reads on every model, no administration, no status, priority 0", () => {
    const g = compileGrants(BUILT_IN_DEFAULT_GRANTS);
    assert.equal(g.methodAllowed("ollama.gateway.v1.InferenceService/Chat"), true);
    assert.equal(g.methodAllowed("ollama.gateway.v1.ModelService/GetModel"), true);
    for (const m of METHOD_GROUPS["models:admin"]) assert.equal(g.methodAllowed(`ollama.gateway.v1.${m}`), false, m);
    assert.equal(g.methodAllowed("ollama.gateway.v1.GatewayService/GetStatus"), false);
    assert.equal(g.maxPriority, 0);
  });

  it("take a principal's own fields over the defaults and add its roles'", () => {
    const defaults = { models: ["*"], methods: ["inference"], maxPriority: 0 };
    assert.deepEqual(effectiveGrants({ models: ["llama3.2"] }, defaults, []), {
      models: ["llama3.2"],
      methods: ["inference"],
      maxPriority: 0,
    });
    assert.deepEqual(
      effectiveGrants({ models: ["llama3.2"] }, defaults, [
        { methods: ["models:admin"], maxPriority: 50 },
        { models: ["qwen3"] },
      ]),
      { models: ["llama3.2", "qwen3"], methods: ["inference", "models:admin"], maxPriority: 50 },
    );
  });
});

describe("identities of the config file", () => {
  const file = authFile({
    principals: [
      { name: "team-a", keys: [{ sha256: hashApiKey("key-a") }], models: ["llama3.2"], roles: ["ops"] },
      { name: "spiffe://example.org/ns/x/sa/y", models: ["all-minilm"] },
    ],
    roles: { ops: { methods: ["models:admin"], maxPriority: 10 }, readers: { methods: ["status"] } },
    defaultPermissions: { models: ["qwen3"] },
  });
  const policy = compileAuthPolicy(file);

  it("gives a key its principal's grants, roles included, the same object every call", () => {
    const a = policy.matchKey("key-a", 0);
    const b = policy.matchKey("key-a", 0);
    assert.ok(a.ok && b.ok);
    assert.equal(a.owner, b.owner);
    assert.equal(a.owner.name, "team-a");
    assert.equal(a.owner.via, "api-key");
    assert.equal(a.owner.grants.modelAllowed("llama3.2"), true);
    assert.equal(a.owner.grants.modelAllowed("qwen3"), false);
    assert.equal(a.owner.grants.methodAllowed("ollama.gateway.v1.ModelService/PullModel"), true);
    assert.equal(a.owner.grants.maxPriority, 10);
  });

  it("gives a named certificate or token principal its entry, an unnamed one the defaults, and adds token roles", () => {
    const named = policy.identityFor("spiffe://example.org/ns/x/sa/y", "mtls", []);
    assert.equal(named.grants.modelAllowed("all-minilm"), true);
    assert.equal(named.grants.modelAllowed("qwen3"), false);
    const stranger = policy.identityFor("someone", "jwt", []);
    assert.equal(stranger.grants.modelAllowed("qwen3"), true);
    assert.equal(stranger.grants.methodAllowed("ollama.gateway.v1.GatewayService/GetStatus"), false);
    const reader = policy.identityFor("someone", "jwt", ["readers", "unknown-role"]);
    assert.equal(reader.grants.methodAllowed("ollama.gateway.v1.GatewayService/GetStatus"), true);
    assert.equal(policy.identityFor("someone", "jwt", ["readers", "unknown-role"]), reader, "remembered");
  });
});

describe("the exemptions table's auth column", () => {
  it("leaves health open, reflection open unless restricted, and authenticates everything else", () => {
    const table: [string, string][] = [
      [Health.typeName, "open"],
      [ServerReflection.typeName, "open-unless-restricted"],
      [ServerReflectionV1alpha.typeName, "open-unless-restricted"],
      [GatewayService.typeName, "required"],
      [InferenceService.typeName, "required"],
      [ModelService.typeName, "required"],
      ["some.Unknown", "required"],
    ];
    for (const [service, rule] of table) assert.equal(exemptionsOf(service).auth, rule, service);
  });
});

describe("client certificates", () => {
  it("name the caller by SPIFFE ID, else CN, only when verified", () => {
    assert.equal(
      principalOfCertificate({
        subject: { CN: "svc" } as never,
        subjectaltname: "DNS:svc.local, URI:https://x, URI:spiffe://example.org/ns/a/sa/b",
      }),
      "spiffe://example.org/ns/a/sa/b",
    );
    assert.equal(principalOfCertificate({ subject: { CN: "svc-b" } as never, subjectaltname: "DNS:x" }), "svc-b");
    assert.equal(principalOfCertificate({ subject: {} as never, subjectaltname: "" }), undefined);
    const cert = { subject: { CN: "svc" }, subjectaltname: "" } as never;
    assert.deepEqual(decideIdentity(true, cert), { ok: true, name: "svc" });
    assert.deepEqual(decideIdentity(false, cert), { ok: false, why: "unverified" });
    assert.deepEqual(decideIdentity(false, {}), { ok: false, why: "none" });
  });
});

describe("JWT policy", () => {
  it("refetches the JWKS for an unknown kid at most once per cooldown", () => {
    assert.equal(mayRefetchForUnknownKid(undefined, 0, 30_000), true);
    assert.equal(mayRefetchForUnknownKid(1000, 30_999, 30_000), false);
    assert.equal(mayRefetchForUnknownKid(1000, 31_000, 30_000), true);
  });

  it("reads claims by name, else by dotted path, and roles from arrays or space-separated strings", () => {
    const payload = { sub: "u", "https://x.io/roles": ["a"], realm_access: { roles: ["b", 3, "c"] }, scope: "r s  t" };
    assert.equal(claimAt(payload, "sub"), "u");
    assert.deepEqual(claimAt(payload, "https://x.io/roles"), ["a"]);
    assert.deepEqual(rolesIn(claimAt(payload, "realm_access.roles")), ["b", "c"]);
    assert.deepEqual(rolesIn(claimAt(payload, "scope")), ["r", "s", "t"]);
    assert.equal(claimAt(payload, "realm_access.nope.x"), undefined);
    assert.deepEqual(rolesIn(undefined), []);
  });

  it("tells expired and not-yet-valid tokens from invalid ones, and missing keys from both", () => {
    const payload = { exp: 1 };
    const table: [unknown, Code, string][] = [
      [new joseErrors.JWTExpired("x", payload), Code.Unauthenticated, "EXPIRED_CREDENTIALS"],
      [new joseErrors.JWTClaimValidationFailed("x", payload, "nbf"), Code.Unauthenticated, "EXPIRED_CREDENTIALS"],
      [new joseErrors.JWTClaimValidationFailed("x", payload, "iss"), Code.Unauthenticated, "INVALID_CREDENTIALS"],
      [new joseErrors.JWSSignatureVerificationFailed(), Code.Unauthenticated, "INVALID_CREDENTIALS"],
      [new joseErrors.JWKSNoMatchingKey(), Code.Unauthenticated, "INVALID_CREDENTIALS"],
      [new KeysUnavailableError("down"), Code.Unavailable, "AUTH_UNAVAILABLE"],
    ];
    for (const [error, code, reason] of table) {
      const e = jwtFailure(error);
      assert.equal(e.code, code, String(error));
      assert.equal(reasonOf(e), reason, String(error));
    }
  });
});

describe("the authenticator's choice of credential", () => {
  const config = (modes: AuthConfig["modes"]): AuthConfig => ({
    modes,
    restrictReflection: false,
    file: authFile({ principals: [{ name: "a", keys: [{ sha256: hashApiKey("ogw_good") }] }] }),
    envPrincipals: [],
    jwt: undefined,
  });

  it("answers API keys at once and refuses with the right reason", () => {
    const auth = createAuthenticator(config(["api-key"]));
    const identity = auth.authenticate(new Headers({ "x-api-key": "ogw_good" }), undefined);
    assert.ok(!(identity instanceof Promise));
    assert.equal(identity.name, "a");
    const table: [Record<string, string>, string][] = [
      [{}, "MISSING_CREDENTIALS"],
      [{ authorization: "Basic x" }, "INVALID_CREDENTIALS"],
      [{ "x-api-key": "ogw_wrong" }, "INVALID_CREDENTIALS"],
      // A JWT-shaped bearer when JWTs are not accepted is just a wrong key.
      [{ authorization: "Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln" }, "INVALID_CREDENTIALS"],
    ];
    for (const [headers, reason] of table) {
      assert.throws(
        () => auth.authenticate(new Headers(headers), undefined),
        (e) => reasonOf(e) === reason && (e as ConnectError).code === Code.Unauthenticated,
        JSON.stringify(headers),
      );
    }
  });

  it("applies new principals: a removed key fails, a new one works", () => {
    const auth = createAuthenticator(config(["api-key"]));
    auth.apply(authFile({ principals: [{ name: "b", keys: [{ sha256: hashApiKey("ogw_new") }] }] }));
    assert.throws(() => auth.authenticate(new Headers({ "x-api-key": "ogw_good" }), undefined));
    const b = auth.authenticate(new Headers({ "x-api-key": "ogw_new" }), undefined);
    assert.equal((b as { name: string }).name, "b");
    auth.apply(EMPTY_AUTH_FILE);
    assert.throws(() => auth.authenticate(new Headers({ "x-api-key": "ogw_new" }), undefined));
  });
});

describe("configuration of authentication", () => {
  const problemsOf = (env: Record<string, string>): string[] => {
    try {
      loadConfig(env);
      return [];
    } catch (e) {
      assert.ok(e instanceof ConfigError);
      return e.problems;
    }
  };

  it("is off by default and turned on by keys in API_KEYS or the config file", async () => {
    assert.deepEqual(loadConfig({}).auth.modes, []);
    assert.deepEqual(loadConfig({ API_KEYS: `svc:${HASH}` }).auth.modes, ["api-key"]);
    const withKeys = await tempConfig({ principals: [{ name: "a", keys: [{ sha256: HASH }] }] });
    const withoutKeys = await tempConfig({ principals: [{ name: "spiffe://x/y" }] });
    try {
      assert.deepEqual(loadConfig({ GATEWAY_CONFIG_FILE: withKeys.path }).auth.modes, ["api-key"]);
      assert.deepEqual(loadConfig({ GATEWAY_CONFIG_FILE: withKeys.path, AUTH_MODE: "off" }).auth.modes, []);
      assert.deepEqual(loadConfig({ GATEWAY_CONFIG_FILE: withoutKeys.path }).auth.modes, []);
    } finally {
      await withKeys.remove();
      await withoutKeys.remove();
    }
    assert.deepEqual(
      loadConfig({
        AUTH_MODE: "api-key,mtls,api-key",
        TLS_CERT_FILE: "/dev/null",
        TLS_KEY_FILE: "/dev/null",
        TLS_CLIENT_CA_FILE: "/dev/null",
      }).auth.modes,
      ["api-key", "mtls"],
    );
  });

  it("refuses contradictions and missing pieces, all at once", () => {
    const table: [Record<string, string>, RegExp][] = [
      [{ AUTH_MODE: "off", API_KEYS: `svc:${HASH}` }, /API_KEYS is set but AUTH_MODE/],
      [{ AUTH_MODE: "password" }, /AUTH_MODE entry "password"/],
      [{ AUTH_MODE: "jwt" }, /exactly one of JWT_JWKS_URL and JWT_KEY_FILE/],
      [{ AUTH_MODE: "jwt", JWT_JWKS_URL: "https://idp/jwks" }, /needs JWT_ISSUER/],
      [{ AUTH_MODE: "jwt", JWT_JWKS_URL: "https://idp/jwks" }, /needs JWT_AUDIENCE/],
      [{ AUTH_MODE: "jwt", JWT_JWKS_URL: "ftp://idp", JWT_ISSUER: "i", JWT_AUDIENCE: "a" }, /JWT_JWKS_URL/],
      [
        { AUTH_MODE: "jwt", JWT_JWKS_URL: "https://i/j", JWT_ISSUER: "i", JWT_AUDIENCE: "a", JWT_ALGORITHMS: "HS256" },
        /JWT_ALGORITHMS entry "HS256"/,
      ],
      [{ AUTH_MODE: "mtls" }, /AUTH_MODE mtls needs/],
      [{ TLS_CERT_FILE: "/dev/null" }, /both TLS_CERT_FILE and TLS_KEY_FILE/],
      [{ TLS_CERT_FILE: "/no/such", TLS_KEY_FILE: "/dev/null" }, /TLS_CERT_FILE \/no\/such cannot be read/],
      [{ AUTH_REFLECTION: "closed" }, /AUTH_REFLECTION/],
    ];
    for (const [env, re] of table) {
      const problems = problemsOf(env);
      assert.ok(
        problems.some((p) => re.test(p)),
        `${JSON.stringify(env)}: ${re} not in ${JSON.stringify(problems)}`,
      );
    }
  });
});

describe("a pipeline with a hook that waits", () => {
  function call(): Call & { abort(reason?: unknown): void } {
    const values = callValues("10.0.0.1");
    const controller = new AbortController();
    return {
      method: InferenceService.method.generate,
      streaming: true,
      protocolName: "grpc",
      requestHeader: new Headers(),
      responseHeader: new Headers(),
      responseTrailer: new Headers(),
      values,
      info: values.get(kRpcInfo)!,
      signal: controller.signal,
      abort: (reason) => controller.abort(reason),
    };
  }
  function hook(name: string, trace: string[], wait?: Promise<void>, refuse?: ConnectError): WaitingCallHook {
    return {
      begin() {
        trace.push(`begin ${name}`);
        const end: CallEnd = (e) => void trace.push(`end ${name} ${e === undefined ? "ok" : Code[e.code]}`);
        if (wait === undefined) {
          if (refuse) throw refuse;
          return end;
        }
        return wait.then(() => {
          if (refuse) throw refuse;
          return end;
        });
      },
    };
  }

  it("runs the hooks after it once it admits, and ends them all in reverse", async () => {
    const trace: string[] = [];
    const pipeline = createPipeline([hook("a", trace), hook("auth", trace, Promise.resolve()), hook("cap", trace)]);
    const begun = pipeline.begin(call());
    assert.ok(begun instanceof Promise);
    assert.deepEqual(trace, ["begin a", "begin auth"], "nothing after the waiting hook runs before it answers");
    (await begun)(undefined);
    assert.deepEqual(trace, ["begin a", "begin auth", "begin cap", "end cap ok", "end auth ok", "end a ok"]);
  });

  it("ends the hooks before it with its refusal when it rejects", async () => {
    const trace: string[] = [];
    const refusal = new ConnectError("no", Code.Unauthenticated);
    const pipeline = createPipeline([
      hook("a", trace),
      hook("auth", trace, Promise.resolve(), refusal),
      hook("cap", trace),
    ]);
    await assert.rejects(pipeline.begin(call()) as Promise<CallEnd>, (e) => e === refusal);
    assert.deepEqual(trace, ["begin a", "begin auth", "end a Unauthenticated"]);
  });

  it("refuses a call cancelled while it waited, before the hooks after it take anything", async () => {
    const trace: string[] = [];
    let release!: () => void;
    const waiting = new Promise<void>((r) => (release = r));
    const pipeline = createPipeline([hook("a", trace), hook("auth", trace, waiting), hook("cap", trace)]);
    const c = call();
    const begun = pipeline.begin(c) as Promise<CallEnd>;
    c.abort(new ConnectError("deadline", Code.DeadlineExceeded));
    release();
    await assert.rejects(begun, (e) => e instanceof ConnectError && e.code === Code.DeadlineExceeded);
    assert.deepEqual(trace, ["begin a", "begin auth", "end auth DeadlineExceeded", "end a DeadlineExceeded"]);
  });
});
