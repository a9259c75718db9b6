import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { maskRedisUrl, parseRedisUrl } from "../src/cache/cache.js";

describe("Redis URL parsing", () => {
  it("reads redis:// with credentials, port and database", () => {
    assert.deepEqual(parseRedisUrl("redis://u%40x:p%3Ass@cache.internal:6380/2"), {
      mode: "standalone",
      host: "cache.internal",
      port: 6380,
      db: 2,
      tls: false,
      username: "u@x",
      password: "p:ss",
    });
  });

  it("defaults the port and database, and turns rediss:// into TLS", () => {
    assert.deepEqual(parseRedisUrl("rediss://:secret@redis"), {
      mode: "standalone",
      host: "redis",
      port: 6379,
      db: 0,
      tls: true,
      password: "secret",
    });
    assert.deepEqual(parseRedisUrl("redis://[::1]:7000"), {
      mode: "standalone",
      host: "::1",
      port: 7000,
      db: 0,
      tls: false,
    });
  });

  it("reads redis+sentinel:// into sentinels, master name, database and passwords", () => {
    assert.deepEqual(
      parseRedisUrl("redis+sentinel://:pw@s1:26379,s2,[fd00::2]:26380/mymaster/3?sentinelPassword=spw"),
      {
        mode: "sentinel",
        sentinels: [
          { host: "s1", port: 26379 },
          { host: "s2", port: 26379 },
          { host: "fd00::2", port: 26380 },
        ],
        name: "mymaster",
        db: 3,
        password: "pw",
        sentinelPassword: "spw",
      },
    );
    assert.deepEqual(parseRedisUrl("redis+sentinel://s1/cache"), {
      mode: "sentinel",
      sentinels: [{ host: "s1", port: 26379 }],
      name: "cache",
      db: 0,
    });
  });

  it("reads redis+cluster:// into seed nodes and credentials", () => {
    assert.deepEqual(parseRedisUrl("redis+cluster://admin:pw@n1:7000,n2:7001,n3"), {
      mode: "cluster",
      nodes: [
        { host: "n1", port: 7000 },
        { host: "n2", port: 7001 },
        { host: "n3", port: 6379 },
      ],
      username: "admin",
      password: "pw",
    });
  });

  it("rejects malformed URLs with a message that names the problem but not the password", () => {
    const cases: [string, RegExp][] = [
      ["http://h", /unsupported scheme/],
      ["redis://:hunter2@h:99999", /port 99999 out of range/],
      ["redis://:hunter2@h1,h2", /one host only/],
      ["redis+sentinel://:hunter2@s1:26379", /master name is missing/],
      ["redis+cluster://:hunter2@n1/1", /only database 0/],
      ["redis://:hunter2@h/x", /bad database number/],
      ["redis://:hunter2@h?family=6", /unsupported query parameter "family"/],
      ["redis://:hunter2@", /no host/],
      ["localhost:6379", /expected scheme/],
    ];
    for (const [url, reason] of cases) {
      assert.throws(
        () => parseRedisUrl(url),
        (err: unknown) => err instanceof Error && reason.test(err.message) && !err.message.includes("hunter2"),
        url,
      );
    }
  });

  it("masks passwords for logs", () => {
    assert.equal(maskRedisUrl("redis://user:pw@h:1/0"), "redis://user:***@h:1/0");
    assert.equal(maskRedisUrl("redis+sentinel://:pw@s1,s2/m"), "redis+sentinel://:***@s1,s2/m");
    assert.equal(maskRedisUrl("redis://h:1"), "redis://h:1");
  });
});
