import type { Http2Session } from "node:http2";
import type { TLSSocket } from "node:tls";
import { tlsSocketOf } from "../auth/client-certificate.js";

/** Who is at the other end of an HTTP/2 connection: its address, and its TLS socket (undefined on plaintext). */
export interface SessionPeer {
  /** The client's address, as the socket reports it. */
  readonly address: string | undefined;
  /** The TLS socket (mTLS reads the client certificate from it), or undefined. */
  readonly tls: TLSSocket | undefined;
}

const peers = new WeakMap<Http2Session, SessionPeer>();
const NO_PEER: SessionPeer = { address: undefined, tls: undefined };

/**
 * The peer of a session, read once per connection. `session.socket` is a Proxy in node:http2, so
 * every property read and `instanceof` on it goes through traps; per call that cost more than
 * the rest of naming the call (docs/architecture.md, "Cost per call"). Neither can change on a
 * connection.
 */
export function sessionPeer(session: Http2Session | undefined): SessionPeer {
  if (session === undefined) return NO_PEER;
  let peer = peers.get(session);
  if (peer === undefined) {
    const socket = session.socket;
    peer = { address: socket?.remoteAddress, tls: tlsSocketOf(socket) };
    // A socket not connected yet has no address: ask again next time rather than remember none.
    if (peer.address !== undefined) peers.set(session, peer);
  }
  return peer;
}
