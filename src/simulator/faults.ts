/**
 * Fault injection: make the simulated Ollama misbehave on purpose (errors, 503s, broken streams,
 * dropped sockets, endless lines, stalls) so gateway tests can prove their error handling.
 */
import { keyOf } from "./model-name.js";

/** Narrows a fault to some requests and limits how often it fires. */
export interface FaultScope {
  /** Only requests to this exact path (e.g. `/api/chat`). */
  path?: string;
  /** Only requests naming this model (case-insensitive, `:latest` implied). */
  model?: string;
  /** How many requests it hits; default 1, `Infinity` for all. */
  times?: number;
}

/** One fault kind (see README of each variant). */
export type FaultKind =
  /** Answer `status` with `{"error": message}` before any streaming. */
  | { kind: "error-before-stream"; status: number; message: string }
  /** Answer 503 with Ollama's exact server-busy text. */
  | { kind: "busy" }
  /** Stream `afterTokens` chunks, then one `{"error": message}` line (HTTP 200, no done line), then end. */
  | { kind: "error-mid-stream"; afterTokens: number; message: string }
  /** Destroy the socket after `afterTokens` chunks (0 = before any response headers). */
  | { kind: "drop-connection"; afterTokens: number }
  /** After `afterTokens` chunks write one line that is not JSON, then continue (default) or end. */
  | { kind: "malformed-line"; afterTokens: number; then?: "continue" | "end" }
  /** After 200 headers, write an unterminated line forever (64 KiB writes) until the client leaves. */
  | { kind: "endless-line" }
  /** Wait `ms` before handling the request normally. */
  | { kind: "stall"; ms: number };

/** A fault as added by a test or the admin API. */
export type Fault = FaultScope & FaultKind;

/** A fault that is still armed, with its id and remaining uses. */
export type ActiveFault = Fault & { readonly id: string; remaining: number };

/** Run-time control over faults. */
export interface FaultInjector {
  /** Arms a fault; returns its id. Throws on an invalid fault. */
  add(fault: Fault): string;
  /** Disarms one fault by id; false if unknown. */
  remove(id: string): boolean;
  /** Disarms every fault. */
  clear(): void;
  /** Armed faults in the order they were added. */
  list(): ActiveFault[];
  /** Consumes and returns the first fault matching a request, if any. */
  take(path: string, model: string | undefined): Fault | undefined;
}

/** Creates an empty injector; `onFire` is told whenever a fault is consumed. */
export function createFaultInjector(onFire: (fault: Fault) => void = () => {}): FaultInjector {
  let faults: ActiveFault[] = [];
  let seq = 0;
  return {
    add(fault) {
      const valid = parseFault(fault);
      const id = `fault-${++seq}`;
      faults.push({ ...valid, id, remaining: valid.times ?? 1 });
      return id;
    },
    remove(id) {
      const before = faults.length;
      faults = faults.filter((f) => f.id !== id);
      return faults.length !== before;
    },
    clear() {
      faults = [];
    },
    list() {
      return faults.map((f) => ({ ...f }));
    },
    take(path, model) {
      const requestKey = model === undefined ? undefined : (keyOf(model) ?? model.toLowerCase());
      for (const fault of faults) {
        if (fault.path !== undefined && fault.path !== path) continue;
        if (fault.model !== undefined) {
          const faultKey = keyOf(fault.model) ?? fault.model.toLowerCase();
          if (faultKey !== requestKey) continue;
        }
        fault.remaining -= 1;
        if (fault.remaining <= 0) faults = faults.filter((f) => f !== fault);
        const { id: _id, remaining: _remaining, ...plain } = fault;
        onFire(plain);
        return plain;
      }
      return undefined;
    },
  };
}

/**
 * Validates an untrusted fault (e.g. JSON from `POST /_sim/faults`). `times` may be a number,
 * `null`, `"Infinity"` or `-1` (the last three mean forever, since JSON has no Infinity).
 */
export function parseFault(input: unknown): Fault {
  if (typeof input !== "object" || input === null || Array.isArray(input))
    throw new Error("fault must be a JSON object");
  const o = input as Record<string, unknown>;
  const scope: FaultScope = {};
  if (o.path !== undefined) scope.path = requireString(o.path, "path");
  if (o.model !== undefined) scope.model = requireString(o.model, "model");
  if (o.times !== undefined) {
    if (o.times === null || o.times === "Infinity" || o.times === -1 || o.times === Number.POSITIVE_INFINITY) {
      scope.times = Number.POSITIVE_INFINITY;
    } else {
      scope.times = requireCount(o.times, "times", 1);
    }
  }
  switch (o.kind) {
    case "error-before-stream": {
      const status = requireCount(o.status ?? 500, "status", 100);
      if (status > 599) throw new Error("status must be an HTTP status code");
      return {
        ...scope,
        kind: "error-before-stream",
        status,
        message: requireString(o.message ?? "internal error", "message"),
      };
    }
    case "busy":
      return { ...scope, kind: "busy" };
    case "error-mid-stream":
      return {
        ...scope,
        kind: "error-mid-stream",
        afterTokens: requireCount(o.afterTokens ?? 0, "afterTokens", 0),
        message: requireString(o.message ?? "an error was encountered while running the model", "message"),
      };
    case "drop-connection":
      return { ...scope, kind: "drop-connection", afterTokens: requireCount(o.afterTokens ?? 0, "afterTokens", 0) };
    case "malformed-line": {
      const then = o.then ?? "continue";
      if (then !== "continue" && then !== "end") throw new Error(`then must be "continue" or "end"`);
      return {
        ...scope,
        kind: "malformed-line",
        afterTokens: requireCount(o.afterTokens ?? 0, "afterTokens", 0),
        then,
      };
    }
    case "endless-line":
      return { ...scope, kind: "endless-line" };
    case "stall":
      return { ...scope, kind: "stall", ms: requireCount(o.ms, "ms", 0) };
    default:
      throw new Error(
        `unknown fault kind ${JSON.stringify(o.kind)} (expected error-before-stream, busy, error-mid-stream, drop-connection, malformed-line, endless-line or stall)`,
      );
  }
}

// Fields whose compact-syntax values are read as integers (everything else stays a string).
const INTEGER_FIELDS = new Set(["status", "afterTokens", "ms", "times"]);

/**
 * Parses faults written for the command line or environment (`--fault`, `SIM_FAULTS`) and
 * validates each with `parseFault`, the same checks the admin API applies. Accepts a JSON object,
 * a JSON array of objects, or the compact form `kind[,field=value...]`, several separated by `;`:
 * `busy,path=/api/chat,times=-1; error-mid-stream,afterTokens=3,message=boom`. In the compact form
 * `status`, `afterTokens`, `ms` and `times` are integers; use JSON for values containing `,` or `;`.
 */
export function parseFaultSpecs(text: string): Fault[] {
  const trimmed = text.trim();
  if (trimmed.startsWith("{") || trimmed.startsWith("[")) {
    let input: unknown;
    try {
      input = JSON.parse(trimmed);
    } catch (error) {
      throw new Error(`fault is not valid JSON (${error instanceof Error ? error.message : String(error)})`);
    }
    return (Array.isArray(input) ? input : [input]).map(parseFault);
  }
  const specs = trimmed
    .split(";")
    .map((spec) => spec.trim())
    .filter((spec) => spec !== "");
  if (specs.length === 0) throw new Error("no fault given");
  return specs.map((spec) => {
    const [kind = "", ...fields] = spec.split(",").map((part) => part.trim());
    const input: Record<string, unknown> = { kind };
    for (const field of fields) {
      const eq = field.indexOf("=");
      if (eq <= 0) throw new Error(`fault field ${JSON.stringify(field)} must be name=value`);
      const name = field.slice(0, eq).trim();
      const value = field.slice(eq + 1).trim();
      input[name] = INTEGER_FIELDS.has(name) && /^-?\d+$/.test(value) ? Number(value) : value;
    }
    return parseFault(input);
  });
}

function requireString(value: unknown, field: string): string {
  if (typeof value !== "string") throw new Error(`${field} must be a string`);
  return value;
}

function requireCount(value: unknown, field: string, min: number): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < min) {
    throw new Error(`${field} must be an integer >= ${min}`);
  }
  return value;
}
