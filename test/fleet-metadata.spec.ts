// Where a model is installed (`locate`), read through the cache: the same answer while no node's
// tags changed, a fresh look when they did or when no node lists the model.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { createCache } from "../src/cache/create-cache.js";
import { createFleetMetadata } from "../src/routing/fleet-metadata.js";
import type { OllamaNode } from "../src/upstream/ollama-node.js";
import { captureLogs } from "./helpers/log-capture.js";

const ttl = { tagsMs: 60_000, psMs: 2_000, showMs: 60_000, upstreamTimeoutMs: 1_000 };

/** A node answering /api/tags with `models` (changeable), counting the requests. */
function fakeNode(name: string, models: string[]): OllamaNode & { models: string[]; asked: number } {
  const node = {
    name,
    url: `http://${name}.invalid`,
    models,
    asked: 0,
    call(method: string, path: string): Promise<unknown> {
      assert.equal(`${method} ${path}`, "GET /api/tags");
      node.asked++;
      return Promise.resolve({
        models: node.models.map((m) => ({
          name: m,
          digest: `sha256:${m}-${name}`,
          size: 1,
          capabilities: ["completion"],
        })),
      });
    },
    stream: () => {
      throw new Error("not used");
    },
    open: () => Promise.reject(new Error("not used")),
    close: () => Promise.resolve(),
  };
  return node;
}

async function withMetadata(
  nodes: ReturnType<typeof fakeNode>[],
  body: (m: ReturnType<typeof createFleetMetadata>, cache: ReturnType<typeof createCache>) => Promise<void>,
): Promise<void> {
  const cache = createCache({ log: captureLogs().log });
  try {
    await body(createFleetMetadata(nodes, cache, ttl), cache);
  } finally {
    await cache.close();
  }
}

const signal = new AbortController().signal;
const names = (l: { located: readonly { node: OllamaNode }[] }): string[] => l.located.map((x) => x.node.name);

describe("locating a model in the fleet", () => {
  it("answers the nodes that have it, in configuration order, with their names as a set", () => {
    const a = fakeNode("a", ["llama3.2:latest"]);
    const b = fakeNode("b", ["qwen3:8b"]);
    const c = fakeNode("c", ["llama3.2:latest", "qwen3:8b"]);
    return withMetadata([a, b, c], async (m) => {
      const where = await m.locate("llama3.2", signal);
      assert.deepEqual(names(where), ["a", "c"]);
      assert.deepEqual([...where.names], ["a", "c"]);
      assert.deepEqual(where.unavailable, []);
      assert.equal(where.located[1]?.tag.digest, "llama3.2:latest-c");
    });
  });

  it("gives the same answer again without asking the nodes while their tags are cached", () => {
    const a = fakeNode("a", ["llama3.2:latest"]);
    const b = fakeNode("b", ["llama3.2:latest"]);
    return withMetadata([a, b], async (m, cache) => {
      await m.locate("llama3.2:latest", signal);
      const cached = await m.locate("llama3.2", signal);
      const again = await m.locate("llama3.2", signal);
      assert.equal(again, cached, "the same object: nothing rebuilt per call");
      assert.deepEqual(names(again), ["a", "b"]);
      assert.deepEqual([a.asked, b.asked], [1, 1]);
      assert.equal(
        cache.stats().kinds["tags"]?.memoryHits,
        4,
        "after the first call, each node's entry read from memory once per call",
      );
    });
  });

  it("looks again once a node's tags were invalidated, and sees what changed there", () => {
    const a = fakeNode("a", ["llama3.2:latest"]);
    const b = fakeNode("b", ["llama3.2:latest"]);
    return withMetadata([a, b], async (m) => {
      const first = await m.locate("llama3.2", signal);
      b.models = [];
      await m.invalidate("b", ["tags"]);
      const after = await m.locate("llama3.2", signal);
      assert.notEqual(after, first);
      assert.deepEqual(names(after), ["a"]);
      assert.deepEqual([...after.names], ["a"]);
      assert.deepEqual([a.asked, b.asked], [1, 2]);
    });
  });

  it("asks the nodes afresh when none lists the model, so one installed a moment ago is found", () => {
    const a = fakeNode("a", ["llama3.2:latest"]);
    return withMetadata([a], async (m) => {
      await m.locate("llama3.2", signal);
      a.models = ["llama3.2:latest", "qwen3:8b"];
      const where = await m.locate("qwen3:8b", signal);
      assert.deepEqual(names(where), ["a"]);
      assert.equal(a.asked, 2);
      const unknown = await m.locate("nothing-like-it", signal);
      assert.deepEqual(names(unknown), []);
      assert.equal(unknown.names.size, 0);
      assert.equal(a.asked, 3, "a lookup of an unknown model asks the node once more");
    });
  });

  it("stays right past the bound on remembered answers (many models installed)", () => {
    const models = Array.from({ length: 1_100 }, (_, i) => `m${i}:latest`);
    const a = fakeNode("a", models);
    return withMetadata([a], async (m) => {
      for (const model of models) assert.deepEqual(names(await m.locate(model, signal)), ["a"]);
      for (const model of models.slice(0, 50)) assert.deepEqual(names(await m.locate(model, signal)), ["a"]);
      assert.equal(a.asked, 1);
    });
  });
});
