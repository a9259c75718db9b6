import type { IncomingHttpHeaders, OutgoingHttpHeaders } from "node:http2";

/**
 * `Headers` for the gRPC fast path's calls, made for its hot path: the web-standard `Headers`
 * (undici's) validates, lower-cases and sorts on every use, and the fast path made three of them
 * per call (request, response headers, trailers) only to copy them from and to node:http2's plain
 * objects — about 2 kB of garbage and a few µs per call in `npm run bench` (a). These keep
 * `Headers`' behaviour where handlers and hooks can see it (names are case-insensitive, values
 * trimmed, invalid names or values throw a TypeError, `append` joins with ", ", iteration is
 * sorted by name) on two short arrays, and read node:http2's request headers in place.
 */
export class LiteHeaders implements Headers {
  /** Lower-case names, and their values at the same index; a handful per call, so searched in turn. */
  private names: string[] | undefined;
  private vals: string[] | undefined;
  /** node:http2's request headers, read in place until someone changes them. */
  private incoming: IncomingHttpHeaders | undefined;

  /** Empty, or a view of node:http2's request headers (pseudo-headers left out), copied only when changed. */
  constructor(incoming?: IncomingHttpHeaders) {
    this.incoming = incoming;
  }

  append(name: string, value: string): void {
    const key = checkedName(name);
    const v = checkedValue(value);
    const i = this.index(key);
    if (i < 0) this.add(key, v);
    else this.vals![i] = `${this.vals![i]}, ${v}`;
  }

  delete(name: string): void {
    const i = this.index(checkedName(name));
    if (i < 0) return;
    this.names!.splice(i, 1);
    this.vals!.splice(i, 1);
  }

  get(name: string): string | null {
    const key = checkedName(name);
    const incoming = this.incoming;
    if (incoming !== undefined) return joined(Object.hasOwn(incoming, key) ? incoming[key] : undefined) ?? null;
    const i = this.index(key);
    return i < 0 ? null : this.vals![i]!;
  }

  getSetCookie(): string[] {
    const v = this.get("set-cookie");
    return v === null ? [] : [v];
  }

  has(name: string): boolean {
    return this.get(name) !== null;
  }

  set(name: string, value: string): void {
    const key = checkedName(name);
    const v = checkedValue(value);
    const i = this.index(key);
    if (i < 0) this.add(key, v);
    else this.vals![i] = v;
  }

  forEach(callbackfn: (value: string, key: string, parent: Headers) => void, thisArg?: unknown): void {
    for (const [k, v] of this.entries()) callbackfn.call(thisArg, v, k, this);
  }

  *entries(): HeadersIterator<[string, string]> {
    this.own();
    const order = this.names!.map((_, i) => i).sort((a, b) => (this.names![a]! < this.names![b]! ? -1 : 1));
    for (const i of order) yield [this.names![i]!, this.vals![i]!];
  }

  *keys(): HeadersIterator<string> {
    for (const [k] of this.entries()) yield k;
  }

  *values(): HeadersIterator<string> {
    for (const [, v] of this.entries()) yield v;
  }

  [Symbol.iterator](): HeadersIterator<[string, string]> {
    return this.entries();
  }

  /** The headers as node:http2 takes them, written into `out` (HTTP/2 does not care about order, so no sorting). */
  outgoing(out: OutgoingHttpHeaders = {}): OutgoingHttpHeaders {
    this.own();
    const names = this.names!;
    for (let i = 0; i < names.length; i++) out[names[i]!] = this.vals![i];
    return out;
  }

  /** Where `key` (lower-case) is, or -1; copies the request headers in first. */
  private index(key: string): number {
    this.own();
    return this.names!.indexOf(key);
  }

  private add(key: string, value: string): void {
    this.names!.push(key);
    this.vals!.push(value);
  }

  /** Makes the entries this object's own: copies node:http2's headers (once), or starts empty. */
  private own(): void {
    if (this.names !== undefined) return;
    const names: string[] = [];
    const vals: string[] = [];
    const incoming = this.incoming;
    this.incoming = undefined;
    if (incoming !== undefined) {
      for (const name of Object.keys(incoming)) {
        if (name.charCodeAt(0) === 58 /* ":" */) continue;
        const v = joined(incoming[name]);
        if (v !== undefined) {
          names.push(name);
          vals.push(v);
        }
      }
    }
    this.names = names;
    this.vals = vals;
  }
}

/** node:http2 gives lower-case names and joins repeated ones itself, except set-cookie (an array). */
function joined(v: string | string[] | undefined): string | undefined {
  return typeof v === "string" ? v : Array.isArray(v) ? v.join(", ") : undefined;
}

/** What a generator method of this class returns; `Headers` declares its own iterator type, which it satisfies. */
type HeadersIterator<T> = Generator<T, undefined, unknown>;

/** RFC 9110 token characters, as `Headers` accepts in a name. */
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

function checkedName(name: string): string {
  if (!TOKEN.test(name)) throw new TypeError(`invalid header name: ${JSON.stringify(name.slice(0, 64))}`);
  return name.toLowerCase();
}

/** HTTP whitespace, which `Headers` trims from values. */
const isHttpSpace = (c: number): boolean => c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d;

function checkedValue(value: string): string {
  // `Headers` trims HTTP whitespace and refuses NUL, CR and LF. Nearly every value (ids, model
  // names) has nothing to trim: one scan, no regular expression, no new string.
  const v = String(value);
  if (v.length === 0 || (!isHttpSpace(v.charCodeAt(0)) && !isHttpSpace(v.charCodeAt(v.length - 1)))) {
    for (let i = 0; i < v.length; i++) {
      const c = v.charCodeAt(i);
      if (c === 0 || c === 0x0a || c === 0x0d) throw new TypeError("invalid header value");
    }
    return v;
  }
  const trimmed = v.replace(/^[\t\n\r ]+|[\t\n\r ]+$/g, "");
  if (/[\0\r\n]/.test(trimmed)) throw new TypeError("invalid header value");
  return trimmed;
}
