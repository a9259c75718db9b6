import { readFileSync } from "node:fs";
import type * as net from "node:net";
import * as tls from "node:tls";

/** The PEM contents TLS is served with. */
export interface TlsCredentials {
  /** Certificate chain. */
  readonly cert: Buffer;
  /** Private key. */
  readonly key: Buffer;
  /** CA bundle client certificates are verified against; undefined = no client certificate asked. */
  readonly ca: Buffer | undefined;
}

/** Where the credentials are read from (TLS_CERT_FILE, TLS_KEY_FILE, TLS_CLIENT_CA_FILE). */
export interface TlsFiles {
  readonly certFile: string;
  readonly keyFile: string;
  readonly clientCaFile: string | undefined;
}

/**
 * Reads the credential files and checks that they make a usable context (the key matches the
 * certificate, the PEM parses): throws otherwise, so a bad file is refused at start and, on a
 * reload, the credentials in use are kept.
 */
export function readTlsCredentials(files: TlsFiles): TlsCredentials {
  const credentials: TlsCredentials = {
    cert: readFileSync(files.certFile),
    key: readFileSync(files.keyFile),
    ca: files.clientCaFile === undefined ? undefined : readFileSync(files.clientCaFile),
  };
  tls.createSecureContext(contextOptions(credentials));
  return credentials;
}

/** TLS in front of the gateway's HTTP/1.1 and HTTP/2 servers. */
export interface TlsFront {
  /** Starts the TLS handshake on an accepted TCP connection. */
  accept(socket: net.Socket): void;
  /** New connections use these credentials; open connections keep theirs (nothing is dropped). */
  setCredentials(credentials: TlsCredentials): void;
}

/** The ALPN protocols offered, in the server's order of preference: gRPC needs h2. */
export const ALPN_PROTOCOLS = ["h2", "http/1.1"];

/**
 * A TLS server that never listens: the gateway's own TCP listener (with its connection limits)
 * hands it connections, and gets each back as a TLS socket once the handshake is done, to be
 * given by its ALPN protocol to the same HTTP/2 (h2) and HTTP/1.1 servers as plaintext
 * connections (no ALPN: told apart by their first bytes, as in plaintext). Node's
 * `http2.createSecureServer({ allowHTTP1: true })` would do the ALPN part, but it turns every
 * HTTP/2 stream into compatibility request objects, which the gRPC fast path exists to avoid.
 *
 * With a client CA, a client certificate is asked for but not required at the handshake: a call
 * without one is refused by authentication (UNAUTHENTICATED, readable by every client) and
 * health probes, which carry none, still answer. `authorized` on the socket says whether the
 * certificate was signed by the CA.
 */
export function createTlsFront(
  credentials: TlsCredentials,
  options: { handshakeTimeoutMs: number },
  onSecure: (socket: tls.TLSSocket) => void,
): TlsFront {
  const server = tls.createServer({
    ...contextOptions(credentials),
    ALPNProtocols: ALPN_PROTOCOLS,
    requestCert: credentials.ca !== undefined,
    rejectUnauthorized: false,
    handshakeTimeout: options.handshakeTimeoutMs,
  });
  server.on("secureConnection", onSecure);
  // A failed handshake (bad client, wrong protocol, timeout): the connection is closed, nothing else.
  server.on("tlsClientError", (_error, socket) => socket.destroy());
  return {
    accept: (socket) => server.emit("connection", socket),
    setCredentials: (c) => server.setSecureContext(contextOptions(c)),
  };
}

function contextOptions(c: TlsCredentials): tls.SecureContextOptions {
  return c.ca === undefined ? { cert: c.cert, key: c.key } : { cert: c.cert, key: c.key, ca: c.ca };
}
