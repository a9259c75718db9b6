import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { ConfigError, loadConfig, redactConfig } from "../src/config/load-config.js";
import { DEFAULTS } from "../src/config/config.js";

describe("configuration from the environment", () => {
  it("uses the documented defaults when nothing is set", () => {
    const c = loadConfig({});
    assert.equal(c.port, 50051);
    assert.equal(c.host, "0.0.0.0");
    assert.equal(c.maxMessageBytes, 4 * 1024 * 1024);
    assert.deepEqual(
      c.nodes.map((n) => [n.name, n.url, n.parallel]),
      [["127.0.0.1:11434", DEFAULTS.ollamaUrl, 1]],
    );
  });

  it("reads a single OLLAMA_URL and a named list in OLLAMA_URLS", () => {
    const c = loadConfig({ OLLAMA_URL: "http://a:1", OLLAMA_URLS: "gpu1=http://b:2, http://c:3/" });
    assert.deepEqual(
      c.nodes.map((n) => [n.name, n.url]),
      [
        ["a:1", "http://a:1"],
        ["gpu1", "http://b:2"],
        ["c:3", "http://c:3"],
      ],
    );
  });

  it("reports every invalid value at once, naming the variable", () => {
    assert.throws(
      () => loadConfig({ PORT: "http", LOG_LEVEL: "loud", OLLAMA_URL: "ftp://x", MAX_MESSAGE_BYTES: "-1" }),
      (e: unknown) => {
        assert.ok(e instanceof ConfigError);
        assert.equal(e.problems.length, 4, e.message);
        for (const key of ["PORT", "LOG_LEVEL", "ftp://x", "MAX_MESSAGE_BYTES"]) {
          assert.ok(e.message.includes(key), `${key} missing from: ${e.message}`);
        }
        return true;
      },
    );
  });

  it("refuses a REDIS_URL ioredis could not use, without printing its password", () => {
    assert.throws(
      () => loadConfig({ REDIS_URL: "memcached://:pw123@x:11211" }),
      (e: unknown) => e instanceof ConfigError && /REDIS_URL/.test(e.message) && !e.message.includes("pw123"),
    );
    assert.equal(
      loadConfig({ REDIS_URL: "redis+sentinel://s1:26379,s2:26379/mymaster" }).cache.redisUrl,
      "redis+sentinel://s1:26379,s2:26379/mymaster",
    );
  });

  it("refuses two nodes with the same name", () => {
    assert.throws(() => loadConfig({ OLLAMA_URLS: "http://a:1,http://a:1" }), /used twice/);
  });

  it("masks passwords in node URLs when the config is logged", () => {
    const c = loadConfig({ OLLAMA_URL: "https://user:secret@ollama.example:443" });
    const shown = JSON.stringify(redactConfig(c));
    assert.ok(!shown.includes("secret"), shown);
    assert.ok(shown.includes("***"));
  });
});
