import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { coalesceChunks } from "../src/services/coalesce-chunks.js";

describe("coalescing pending chunks for a slow reader", () => {
  it("leaves a batch of one chunk untouched", () => {
    const one = [{ response: "a", done: false }];
    assert.equal(coalesceChunks(one), one);
  });

  it("joins generate deltas and keeps the final chunk separate", () => {
    const out = coalesceChunks([
      { response: "The", thinking: "", done: false },
      { response: " quick", done: false },
      { response: "", done: true, done_reason: "stop", eval_count: 2 },
    ]);
    assert.deepEqual(out, [
      { response: "The quick", thinking: "", done: false },
      { response: "", done: true, done_reason: "stop", eval_count: 2 },
    ]);
  });

  it("joins chat content, thinking and tool calls in order without changing the inputs", () => {
    const first = { message: { role: "assistant", content: "", thinking: "hmm" }, done: false };
    const out = coalesceChunks([
      first,
      { message: { role: "assistant", content: "", thinking: " ok" }, done: false },
      { message: { role: "assistant", content: "Hi", tool_calls: [{ function: { name: "a" } }] }, done: false },
      { message: { role: "assistant", content: "!", tool_calls: [{ function: { name: "b" } }] }, done: false },
    ]);
    assert.deepEqual(out, [
      {
        message: {
          role: "assistant",
          content: "Hi!",
          thinking: "hmm ok",
          tool_calls: [{ function: { name: "a" } }, { function: { name: "b" } }],
        },
        done: false,
      },
    ]);
    assert.equal(first.message.thinking, "hmm", "the first chunk was copied, not mutated");
  });
});
