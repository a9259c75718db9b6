import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, it } from "node:test";
import { affinityKey } from "../src/routing/affinity.js";

describe("a request's affinity key", () => {
  it("is the session key when the client sent one, cut to 256 characters", () => {
    assert.equal(affinityKey("llama3.2:latest", "user-7", "ignored"), "s:llama3.2:latest:user-7");
    assert.equal(affinityKey("m", "x".repeat(300), "")!.length, "s:m:".length + 256);
  });

  it("is the SHA-1 (base64url) of the conversation's first 512 characters otherwise", () => {
    const prefix = "Why is the sky blue? ".repeat(40);
    const digest = createHash("sha1").update(prefix.slice(0, 512)).digest("base64url");
    assert.equal(affinityKey("m", undefined, prefix), `p:m:${digest}`);
    // A conversation that grows past the prefix keeps its key.
    assert.equal(affinityKey("m", undefined, `${prefix} and more`), `p:m:${digest}`);
  });

  it("is none without a session and without a conversation", () => {
    assert.equal(affinityKey("m", undefined, ""), undefined);
  });
});
