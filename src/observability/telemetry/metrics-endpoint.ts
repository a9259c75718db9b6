import { createServer } from "node:http";
import type { AddressInfo } from "node:net";

/** What `/metrics` answers: the Prometheus text and its content type. */
export interface MetricsPage {
  contentType: string;
  body: string;
}

/** Where the endpoint listens and what it serves. */
export interface MetricsEndpointOptions {
  /** Interface (METRICS_HOST). */
  host: string;
  /** Port (METRICS_PORT); 0 = any free port. */
  port: number;
  /** Renders the page for one scrape (one registry, or every worker's aggregated). */
  render(): Promise<MetricsPage>;
  /** Where a failed render is reported (once per scrape that failed). */
  onError(error: unknown): void;
}

/** A listening metrics endpoint. */
export interface MetricsEndpoint {
  /** The bound port. */
  readonly port: number;
  /** `http://host:port/metrics`. */
  readonly url: string;
  /** Stops listening and closes idle connections. */
  close(): Promise<void>;
}

/**
 * The plain-HTTP `/metrics` endpoint, on its own port so it can be kept off the network clients
 * use (README, "Operating it"). GET or HEAD `/metrics` only; anything else is 404 or 405. A
 * render that fails answers 500 (Prometheus marks the scrape failed) and is reported.
 */
export async function listenMetrics(options: MetricsEndpointOptions): Promise<MetricsEndpoint> {
  const server = createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (path !== "/metrics") {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found: scrape /metrics\n");
      return;
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD" }).end();
      return;
    }
    options.render().then(
      (page) => {
        res.writeHead(200, { "content-type": page.contentType });
        res.end(req.method === "HEAD" ? undefined : page.body);
      },
      (e: unknown) => {
        options.onError(e);
        res.writeHead(500, { "content-type": "text/plain" }).end("metrics could not be collected\n");
      },
    );
  });
  // Scrapes are short: do not keep idle keep-alive connections for long.
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port, options.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const host = options.host === "0.0.0.0" || options.host === "::" ? "127.0.0.1" : options.host;
  return {
    port,
    url: `http://${host.includes(":") ? `[${host}]` : host}:${port}/metrics`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
      }),
  };
}
