/**
 * Go duration strings and Ollama's `keep_alive` decoding, reproduced exactly because clients
 * send values like "5m", "1h30m", "300ms", -1 or 0 and expect Ollama's semantics and errors.
 */
import { ApiError } from "./errors.js";

const UNIT_NS: Readonly<Record<string, number>> = {
  ns: 1,
  us: 1e3,
  "\u00b5s": 1e3, // micro sign
  "\u03bcs": 1e3, // Greek mu
  ms: 1e6,
  s: 1e9,
  m: 60e9,
  h: 3600e9,
};

/** Parses a Go `time.ParseDuration` string into milliseconds; throws Go's error text. */
export function parseGoDuration(text: string): number {
  const quoted = JSON.stringify(text);
  let s = text;
  let negative = false;
  if (s.startsWith("-") || s.startsWith("+")) {
    negative = s.startsWith("-");
    s = s.slice(1);
  }
  if (s === "0") return 0;
  if (s === "") throw new Error(`time: invalid duration ${quoted}`);
  let totalNs = 0;
  while (s !== "") {
    const number = /^(\d*)(?:\.(\d*))?/.exec(s);
    const whole = number?.[1] ?? "";
    const fraction = number?.[2];
    if (!number || (whole === "" && (fraction === undefined || fraction === ""))) {
      throw new Error(`time: invalid duration ${quoted}`);
    }
    s = s.slice(number[0].length);
    const unitMatch = /^[^\d.]*/.exec(s);
    const unit = unitMatch?.[0] ?? "";
    if (unit === "") throw new Error(`time: missing unit in duration ${quoted}`);
    const scale = UNIT_NS[unit];
    if (scale === undefined) throw new Error(`time: unknown unit ${JSON.stringify(unit)} in duration ${quoted}`);
    s = s.slice(unit.length);
    totalNs += Number(`${whole === "" ? "0" : whole}.${fraction ?? ""}0`) * scale;
  }
  const ms = totalNs / 1e6;
  return negative ? -ms : ms;
}

/**
 * Decodes a request's `keep_alive` like Ollama's `api.Duration`: number = seconds, string = Go
 * duration, negative = forever (Infinity), null/absent = undefined (keep the runner's value).
 * Throws a 400 ApiError with Ollama's message for anything else.
 */
export function parseKeepAlive(value: unknown): number | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === "number") {
    return value < 0 ? Number.POSITIVE_INFINITY : value * 1000;
  }
  if (typeof value === "string") {
    let ms: number;
    try {
      ms = parseGoDuration(value);
    } catch (error) {
      throw new ApiError(400, error instanceof Error ? error.message : String(error));
    }
    return ms < 0 ? Number.POSITIVE_INFINITY : ms;
  }
  throw new ApiError(400, `Unsupported type: '${goTypeName(value)}'`);
}

/** The `reflect.TypeOf` name Go prints for a decoded JSON value. */
export function goTypeName(value: unknown): string {
  if (typeof value === "boolean") return "bool";
  if (typeof value === "number") return "float64";
  if (typeof value === "string") return "string";
  if (Array.isArray(value)) return "[]interface {}";
  return "map[string]interface {}";
}
