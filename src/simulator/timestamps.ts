/**
 * Go `time.Time` JSON formatting (RFC3339Nano): Ollama prints `created_at` in UTC with trailing
 * zeros trimmed and `modified_at`/`expires_at` with the server's local offset.
 */

/** Current wall-clock time in epoch nanoseconds (microsecond precision). */
export function epochNowNs(): bigint {
  return BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000)) * 1000n;
}

/** Converts epoch milliseconds (may be fractional) to epoch nanoseconds. */
export function msToNs(ms: number): bigint {
  return BigInt(Math.round(ms * 1000)) * 1000n;
}

/** Formats like Go's RFC3339Nano in UTC, e.g. `2023-08-04T19:22:45.499127Z`. */
export function formatUtc(epochNs: bigint = epochNowNs()): string {
  return format(epochNs, 0, "Z");
}

/** Formats like Go's RFC3339Nano in the process's local zone (`Z` when the offset is zero). */
export function formatLocal(epochNs: bigint): string {
  const ms = Number(epochNs / 1_000_000n);
  const offsetMinutes = -new Date(ms).getTimezoneOffset();
  if (offsetMinutes === 0) return format(epochNs, 0, "Z");
  const sign = offsetMinutes < 0 ? "-" : "+";
  const abs = Math.abs(offsetMinutes);
  return format(epochNs, offsetMinutes, `${sign}${pad(Math.floor(abs / 60), 2)}:${pad(abs % 60, 2)}`);
}

function format(epochNs: bigint, offsetMinutes: number, zone: string): string {
  let seconds = epochNs / 1_000_000_000n;
  let nanos = epochNs % 1_000_000_000n;
  if (nanos < 0n) {
    nanos += 1_000_000_000n;
    seconds -= 1n;
  }
  const date = new Date(Number(seconds) * 1000 + offsetMinutes * 60_000);
  const base =
    `${pad(date.getUTCFullYear(), 4)}-${pad(date.getUTCMonth() + 1, 2)}-${pad(date.getUTCDate(), 2)}` +
    `T${pad(date.getUTCHours(), 2)}:${pad(date.getUTCMinutes(), 2)}:${pad(date.getUTCSeconds(), 2)}`;
  const fraction = nanos === 0n ? "" : `.${nanos.toString().padStart(9, "0").replace(/0+$/, "")}`;
  return `${base}${fraction}${zone}`;
}

function pad(value: number, width: number): string {
  return String(value).padStart(width, "0");
}
