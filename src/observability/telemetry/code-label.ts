import { Code } from "@connectrpc/connect";

/** A status code as a metric label or span attribute value: Go's and Connect's names (`OK`, `ResourceExhausted`, ...). */
export function codeLabel(code: Code | 0): string {
  return code === 0 ? "OK" : (Code[code] ?? String(code));
}
