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

  it("defaults the connection limits and timeouts to the documented values", () => {
    const c = loadConfig({});
    assert.deepEqual(
      {
        httpHeadersTimeoutMs: c.httpHeadersTimeoutMs,
        httpRequestTimeoutMs: c.httpRequestTimeoutMs,
        http2IdleTimeoutMs: c.http2IdleTimeoutMs,
        http2PingIntervalMs: c.http2PingIntervalMs,
        http2PingTimeoutMs: c.http2PingTimeoutMs,
        maxConnections: c.maxConnections,
        maxConnectionsPerIp: c.maxConnectionsPerIp,
        healthMaxWatchers: c.healthMaxWatchers,
      },
      {
        httpHeadersTimeoutMs: 10_000,
        httpRequestTimeoutMs: 60_000,
        http2IdleTimeoutMs: 300_000,
        http2PingIntervalMs: 5_000,
        http2PingTimeoutMs: 5_000,
        maxConnections: 10_000,
        maxConnectionsPerIp: 0,
        healthMaxWatchers: 1000,
      },
    );
  });

  it("reads the connection limits and timeouts, and reports every bad one at once", () => {
    const c = loadConfig({
      HTTP_HEADERS_TIMEOUT_MS: "500",
      HTTP_REQUEST_TIMEOUT_MS: "1500",
      HTTP2_IDLE_TIMEOUT_MS: "2000",
      HTTP2_PING_INTERVAL_MS: "1000",
      HTTP2_PING_TIMEOUT_MS: "3000",
      MAX_CONNECTIONS: "12",
      MAX_CONNECTIONS_PER_IP: "5",
      HEALTH_MAX_WATCHERS: "0",
    });
    assert.deepEqual(
      [
        c.httpHeadersTimeoutMs,
        c.httpRequestTimeoutMs,
        c.http2IdleTimeoutMs,
        c.http2PingIntervalMs,
        c.http2PingTimeoutMs,
        c.maxConnections,
        c.maxConnectionsPerIp,
        c.healthMaxWatchers,
      ],
      [500, 1500, 2000, 1000, 3000, 12, 5, 0],
    );
    assert.throws(
      () =>
        loadConfig({
          HTTP_HEADERS_TIMEOUT_MS: "10",
          HTTP2_IDLE_TIMEOUT_MS: "soon",
          HTTP2_PING_INTERVAL_MS: "-1",
          HTTP2_PING_TIMEOUT_MS: "0",
          MAX_CONNECTIONS: "0",
          MAX_CONNECTIONS_PER_IP: "1.5",
          HEALTH_MAX_WATCHERS: "-3",
        }),
      (e: unknown) => {
        assert.ok(e instanceof ConfigError);
        assert.equal(e.problems.length, 7, e.message);
        return true;
      },
    );
  });

  it("refuses a request timeout shorter than the headers timeout, since a request includes its headers", () => {
    assert.throws(
      () => loadConfig({ HTTP_HEADERS_TIMEOUT_MS: "20000", HTTP_REQUEST_TIMEOUT_MS: "15000" }),
      (e: unknown) => e instanceof ConfigError && e.problems.length === 1 && /HTTP_REQUEST_TIMEOUT_MS/.test(e.message),
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
