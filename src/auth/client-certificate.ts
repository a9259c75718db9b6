import { createContextKey } from "@connectrpc/connect";
import { TLSSocket } from "node:tls";
import type { PeerCertificate } from "node:tls";

/**
 * Context key of the TLS connection a call came on (undefined on plaintext), set by the
 * transport when it makes the call's values, so mTLS can name the client from its certificate.
 */
export const kTlsSocket = createContextKey<TLSSocket | undefined>(undefined, { description: "tls socket" });

/** The socket as a TLS socket, or undefined (plaintext). */
export function tlsSocketOf(socket: unknown): TLSSocket | undefined {
  return socket instanceof TLSSocket ? socket : undefined;
}

/** What a connection's client certificate says about the caller. */
export type CertificateIdentity =
  | { readonly ok: true; readonly name: string }
  /** none: no certificate sent; unverified: not signed by TLS_CLIENT_CA_FILE (or expired); unnamed: no SPIFFE ID, no CN. */
  | { readonly ok: false; readonly why: "none" | "unverified" | "unnamed" };

const identities = new WeakMap<TLSSocket, CertificateIdentity>();

/**
 * The identity a connection's client certificate proves, decided once per connection (the
 * certificate cannot change on it) and remembered with the socket.
 */
export function certificateIdentity(socket: TLSSocket): CertificateIdentity {
  let identity = identities.get(socket);
  if (identity === undefined) {
    identity = decideIdentity(socket.authorized, socket.getPeerCertificate());
    identities.set(socket, identity);
  }
  return identity;
}

/**
 * The policy: a verified certificate's SPIFFE ID (its first `spiffe://` URI SAN: the service-mesh
 * identity), else its subject's CN; nothing for a missing or unverified certificate.
 */
export function decideIdentity(
  authorized: boolean,
  cert: PeerCertificate | Record<string, never>,
): CertificateIdentity {
  if (cert === null || cert === undefined || Object.keys(cert).length === 0) return { ok: false, why: "none" };
  if (!authorized) return { ok: false, why: "unverified" };
  const name = principalOfCertificate(cert as PeerCertificate);
  return name === undefined ? { ok: false, why: "unnamed" } : { ok: true, name };
}

/** A certificate's principal name: SPIFFE ID (URI SAN), else subject CN; undefined when it has neither. */
export function principalOfCertificate(cert: Pick<PeerCertificate, "subject" | "subjectaltname">): string | undefined {
  for (const entry of (cert.subjectaltname ?? "").split(",")) {
    const san = entry.trim();
    if (san.startsWith("URI:spiffe://")) return san.slice("URI:".length).replace(/^"|"$/g, "");
  }
  const cn: unknown = cert.subject?.CN;
  const first = Array.isArray(cn) ? cn[0] : cn;
  return typeof first === "string" && /^[\x20-\x7e]{1,256}$/.test(first) ? first : undefined;
}
