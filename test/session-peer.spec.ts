import assert from "node:assert/strict";
import type { Http2Session } from "node:http2";
import { describe, it } from "node:test";
import { sessionPeer } from "../src/transport/session-peer.js";

/** A session whose `socket` counts how often it is read (node:http2's is a Proxy: each read costs). */
function fakeSession(remoteAddress: string | undefined) {
  let reads = 0;
  const session = {
    get socket() {
      reads++;
      return { remoteAddress };
    },
  } as unknown as Http2Session;
  return { session, reads: () => reads };
}

describe("the peer of an HTTP/2 session", () => {
  it("is read from the socket once per connection and remembered", () => {
    const s = fakeSession("10.0.0.7");
    for (let i = 0; i < 5; i++) assert.deepEqual(sessionPeer(s.session), { address: "10.0.0.7", tls: undefined });
    assert.equal(s.reads(), 1);
  });

  it("is asked again while the socket has no address yet", () => {
    const s = fakeSession(undefined);
    sessionPeer(s.session);
    sessionPeer(s.session);
    assert.equal(s.reads(), 2);
  });

  it("is nobody without a session", () => {
    assert.deepEqual(sessionPeer(undefined), { address: undefined, tls: undefined });
  });
});
