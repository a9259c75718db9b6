/**
 * Raw-HTTP helpers for the simulator tests: they look at bytes, status codes and headers the
 * way a gateway's upstream client would, without any Ollama client library in between.
 */
import { request } from "undici";

/** A fully read HTTP response. */
export interface RawResponse {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly text: string;
}

/** Sends a request with an optional JSON (or raw string) body and reads the whole answer. */
export async function send(
  method: string,
  url: string,
  body?: unknown,
  options: { signal?: AbortSignal; raw?: boolean } = {},
): Promise<RawResponse> {
  const payload = body === undefined ? undefined : options.raw ? String(body) : JSON.stringify(body);
  const res = await request(url, {
    method: method as "GET",
    ...(payload === undefined ? {} : { body: payload }),
    ...(options.signal ? { signal: options.signal } : {}),
  });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, text };
}

/** POSTs JSON and reads the whole answer. */
export function post(url: string, body: unknown, options: { signal?: AbortSignal } = {}): Promise<RawResponse> {
  return send("POST", url, body, options);
}

/** Parses a JSON body, failing with the text when it is not JSON. */
export function json<T = Record<string, unknown>>(res: RawResponse): T {
  try {
    return JSON.parse(res.text) as T;
  } catch {
    throw new Error(`not JSON (status ${res.status}): ${res.text.slice(0, 200)}`);
  }
}

/** Splits an NDJSON body into objects, asserting every object is terminated by exactly one `\n`. */
export function ndjson<T = Record<string, unknown>>(res: RawResponse): T[] {
  if (res.text === "") return [];
  if (!res.text.endsWith("\n")) throw new Error(`NDJSON body does not end with a newline: ${res.text.slice(-80)}`);
  const lines = res.text.slice(0, -1).split("\n");
  return lines.map((line) => {
    if (line === "") throw new Error("blank line in NDJSON body");
    return JSON.parse(line) as T;
  });
}

/**
 * Opens a streaming POST and yields each raw line as it arrives (without the `\n`), so tests can
 * stop reading (and abort) in the middle of a stream.
 */
export async function* streamLines(url: string, body: unknown, signal?: AbortSignal): AsyncGenerator<string> {
  const res = await request(url, { method: "POST", body: JSON.stringify(body), ...(signal ? { signal } : {}) });
  if (res.statusCode !== 200) throw new Error(`status ${res.statusCode}: ${await res.body.text()}`);
  let buffer = "";
  for await (const chunk of res.body) {
    buffer += Buffer.isBuffer(chunk) ? chunk.toString("utf8") : String(chunk);
    let newline = buffer.indexOf("\n");
    while (newline >= 0) {
      yield buffer.slice(0, newline);
      buffer = buffer.slice(newline + 1);
      newline = buffer.indexOf("\n");
    }
  }
  if (buffer !== "") yield buffer;
}

/** Resolves after `ms` milliseconds. */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `check` every 10 ms until it is true or `ms` elapse; returns the last result. */
export async function eventually(check: () => boolean, ms = 2000): Promise<boolean> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (check()) return true;
    await delay(10);
  }
  return check();
}
