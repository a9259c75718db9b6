// Model names as Ollama matches them: one key for every spelling of one model.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { canonicalModelName } from "../src/upstream/model-name.js";

describe("a model's canonical name", () => {
  const cases: [string, string][] = [
    ["llama3.2", "llama3.2:latest"],
    ["llama3.2:latest", "llama3.2:latest"],
    ["  Llama3.2:3B ", "llama3.2:3b"],
    ["registry.ollama.ai/library/qwen3", "qwen3:latest"],
    ["registry.ollama.ai/someone/model:q4", "someone/model:q4"],
    ["library/mistral:7b", "mistral:7b"],
    ["host:5000/ns/model", "host:5000/ns/model:latest"],
    ["hf.co/org/repo:Q4_K_M", "hf.co/org/repo:q4_k_m"],
  ];
  for (const [given, canonical] of cases) {
    it(`${JSON.stringify(given)} is ${canonical}`, () => {
      assert.equal(canonicalModelName(given), canonical);
      assert.equal(canonicalModelName(given), canonical, "the same when asked again (remembered)");
    });
  }

  it("stays right past the bound on remembered spellings, and for a spelling too long to remember", () => {
    for (let round = 0; round < 2; round++) {
      for (let i = 0; i < 2_500; i++) assert.equal(canonicalModelName(`Model${i}`), `model${i}:latest`);
    }
    const long = `${"a".repeat(300)}:TAG`;
    assert.equal(canonicalModelName(long), `${"a".repeat(300)}:tag`);
    assert.equal(canonicalModelName(long), `${"a".repeat(300)}:tag`);
  });
});
