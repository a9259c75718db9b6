/**
 * The parts of the config file (`GATEWAY_CONFIG_FILE`) that say who may call and what they may
 * call: `principals`, `roles` and `defaultPermissions`, plus the `API_KEYS` environment variable.
 * Parsed into plain, validated data here (every problem reported at once, as `loadConfig` does);
 * `src/auth/` compiles it into lookups. The same parser runs at start and on every reload, so a
 * file that would be refused at start is refused on reload too (and the old one kept).
 */

/**
 * The method vocabulary of permissions: groups, and the methods each holds (`Service/Method`).
 * Every RPC of our services is in exactly one group; a test checks it against the contract, so a
 * new RPC needs a decision here. Health and reflection are not here: they are never checked
 * (see the exemptions table, `pipeline/exemptions.ts`).
 */
export const METHOD_GROUPS = {
  /** Generate, Chat, Embed. */
  inference: ["InferenceService/Generate", "InferenceService/Chat", "InferenceService/Embed"],
  /** Listing and describing models (answers show only the models the caller may use). */
  "models:read": ["ModelService/ListModels", "ModelService/GetModel", "ModelService/ListRunningModels"],
  /** Changing what the fleet holds or runs: never granted unless named. */
  "models:admin": [
    "ModelService/PullModel",
    "ModelService/DeleteModel",
    "ModelService/CopyModel",
    "ModelService/LoadModel",
    "ModelService/UnloadModel",
  ],
  /** The gateway's own view of the fleet (nodes, loaded models, queues): for operators. */
  status: ["GatewayService/GetStatus"],
} as const satisfies Record<string, readonly string[]>;

/** A name in `methods`: a group, `*` (every method), or one method. */
export type MethodGroup = keyof typeof METHOD_GROUPS;

/** The package of our services; method grants may name a method with or without it. */
export const SERVICE_PACKAGE = "ollama.gateway.v1";

/** What a principal may do. Every field is optional in the file; see `Grants` for the filled form. */
export interface PartialGrants {
  /** Model names and globs (`*` any run of characters), matched against every spelling of a model. */
  models?: readonly string[];
  /** Method groups, `*`, or method names (`PullModel`, `ModelService/PullModel`, or fully qualified). */
  methods?: readonly string[];
  /** Highest `x-priority` (-100..100) the principal may send. */
  maxPriority?: number;
}

/** Grants with every field filled. */
export interface Grants {
  readonly models: readonly string[];
  readonly methods: readonly string[];
  readonly maxPriority: number;
}

/**
 * What a principal gets when nothing more is said (and what each `API_KEYS` key gets): inference
 * and model reads on every model, no model administration, no GetStatus, no priority above 0.
 * The config file's `defaultPermissions` replaces any of these fields.
 */
export const BUILT_IN_DEFAULT_GRANTS: Grants = {
  models: ["*"],
  methods: ["inference", "models:read"],
  maxPriority: 0,
};

/** One API key: only its SHA-256 is stored. */
export interface ApiKeyEntry {
  /** Lowercase hex SHA-256 of the key (64 characters). */
  readonly sha256: string;
  /** When the key stops working (ms since the epoch); undefined = never. */
  readonly expiresAtMs: number | undefined;
  /** A disabled key fails like an unknown one. */
  readonly disabled: boolean;
}

/** One principal of the config file (a team, a service, a SPIFFE ID, a JWT subject). */
export interface PrincipalEntry {
  /** The name in logs and rate-limit keys; for mTLS and JWT, the certificate's or token's identity. */
  readonly name: string;
  /** Its API keys (none for principals that authenticate with a certificate or a token). */
  readonly keys: readonly ApiKeyEntry[];
  /** Its own grants; missing fields come from `defaultPermissions`. */
  readonly grants: PartialGrants;
  /** Roles whose grants add to its own. */
  readonly roles: readonly string[];
}

/** Everything about principals the config file and `API_KEYS` say. */
export interface AuthFileConfig {
  readonly principals: readonly PrincipalEntry[];
  /** Named sets of grants, given to principals (`roles`) and to JWTs (their roles claim). */
  readonly roles: ReadonlyMap<string, PartialGrants>;
  /** Replaces fields of `BUILT_IN_DEFAULT_GRANTS` for everyone. */
  readonly defaultGrants: Grants;
}

/** An empty section: nobody named, built-in defaults. */
export const EMPTY_AUTH_FILE: AuthFileConfig = {
  principals: [],
  roles: new Map(),
  defaultGrants: BUILT_IN_DEFAULT_GRANTS,
};

const NAME = /^[\x21-\x7e]{1,256}$/;
const HEX64 = /^[0-9a-f]{64}$/;
const MODEL_PATTERN = /^[A-Za-z0-9._\-/:@+*]{1,256}$/;

/** Every method name a grant may use without its package (`Service/Method`). */
const KNOWN_METHODS: ReadonlySet<string> = new Set(Object.values(METHOD_GROUPS).flat());

/**
 * The methods a `methods` entry stands for, as `Service/Method`; undefined when it names none.
 * `*` is every method of every group.
 */
export function expandMethodGrant(entry: string): readonly string[] | undefined {
  if (entry === "*") return [...KNOWN_METHODS];
  if (entry in METHOD_GROUPS) return METHOD_GROUPS[entry as MethodGroup];
  const bare = entry.startsWith(`${SERVICE_PACKAGE}.`) ? entry.slice(SERVICE_PACKAGE.length + 1) : entry;
  if (KNOWN_METHODS.has(bare)) return [bare];
  const matches = [...KNOWN_METHODS].filter((m) => m.endsWith(`/${bare}`));
  return matches.length === 1 ? matches : undefined;
}

/**
 * Parses `API_KEYS`: a comma list of `name:sha256-hex-of-the-key`. Each becomes a principal with
 * one key and the default grants.
 */
export function parseApiKeysEnv(raw: string | undefined, problems: string[]): PrincipalEntry[] {
  const out: PrincipalEntry[] = [];
  for (const part of (raw ?? "").split(",")) {
    const item = part.trim();
    if (item === "") continue;
    const colon = item.lastIndexOf(":");
    const name = item.slice(0, colon).trim();
    const hash = item
      .slice(colon + 1)
      .trim()
      .toLowerCase();
    // Never echo the entry: it might be a key pasted by mistake instead of its hash.
    if (colon <= 0 || !NAME.test(name) || !HEX64.test(hash)) {
      problems.push(`API_KEYS entry ${out.length + 1} must be name:<64 hex digits of the key's SHA-256>`);
      continue;
    }
    out.push({ name, keys: [{ sha256: hash, expiresAtMs: undefined, disabled: false }], grants: {}, roles: [] });
  }
  return out;
}

/**
 * Parses the `principals`, `roles` and `defaultPermissions` of a config file's object (any of them
 * may be absent), with `envPrincipals` (from `API_KEYS`) added. Problems are pushed with the path
 * of the offending field; the result is usable only when none were pushed.
 */
export function parseAuthFile(
  file: Record<string, unknown>,
  envPrincipals: readonly PrincipalEntry[],
  problems: string[],
): AuthFileConfig {
  const roles = new Map<string, PartialGrants>();
  const rawRoles = file["roles"];
  if (rawRoles !== undefined) {
    if (!isObject(rawRoles)) problems.push("config file: roles must be an object of role name to permissions");
    else {
      for (const [name, value] of Object.entries(rawRoles)) {
        if (!NAME.test(name)) problems.push(`config file: role name ${JSON.stringify(name)} is not valid`);
        roles.set(name, parseGrants(value, `roles.${name}`, problems));
      }
    }
  }
  let defaultGrants = BUILT_IN_DEFAULT_GRANTS;
  if (file["defaultPermissions"] !== undefined) {
    defaultGrants = {
      ...BUILT_IN_DEFAULT_GRANTS,
      ...parseGrants(file["defaultPermissions"], "defaultPermissions", problems),
    };
  }
  const principals: PrincipalEntry[] = [...envPrincipals];
  const rawPrincipals = file["principals"];
  if (rawPrincipals !== undefined) {
    if (!Array.isArray(rawPrincipals)) problems.push("config file: principals must be an array");
    else
      rawPrincipals.forEach((raw: unknown, i) => {
        const p = parsePrincipal(raw, `principals[${i}]`, roles, problems);
        if (p !== undefined) principals.push(p);
      });
  }
  const names = new Set<string>();
  const hashes = new Set<string>();
  for (const p of principals) {
    if (names.has(p.name)) problems.push(`principal ${JSON.stringify(p.name)} is defined twice`);
    names.add(p.name);
    for (const k of p.keys) {
      if (hashes.has(k.sha256)) problems.push(`principal ${JSON.stringify(p.name)}: a key hash is used twice`);
      hashes.add(k.sha256);
    }
  }
  return { principals, roles, defaultGrants };
}

function parsePrincipal(
  raw: unknown,
  path: string,
  roles: ReadonlyMap<string, PartialGrants>,
  problems: string[],
): PrincipalEntry | undefined {
  if (!isObject(raw)) {
    problems.push(`config file: ${path} must be an object`);
    return undefined;
  }
  const name = raw["name"];
  if (typeof name !== "string" || !NAME.test(name)) {
    problems.push(`config file: ${path}.name must be 1 to 256 visible ASCII characters`);
    return undefined;
  }
  const at = `${path} (${name})`;
  const keys: ApiKeyEntry[] = [];
  if (raw["keys"] !== undefined) {
    if (!Array.isArray(raw["keys"])) problems.push(`config file: ${at}.keys must be an array`);
    else
      raw["keys"].forEach((k: unknown, j) => {
        const key = parseKey(k, `${at}.keys[${j}]`, problems);
        if (key !== undefined) keys.push(key);
      });
  }
  const principalRoles: string[] = [];
  if (raw["roles"] !== undefined) {
    const list = stringList(raw["roles"], `${at}.roles`, problems);
    for (const r of list) {
      if (!roles.has(r)) problems.push(`config file: ${at}.roles names ${JSON.stringify(r)}, which is not in roles`);
      else principalRoles.push(r);
    }
  }
  const { name: _name, keys: _keys, roles: _roles, ...rest } = raw;
  return { name, keys, grants: parseGrants(rest, at, problems), roles: principalRoles };
}

function parseKey(raw: unknown, path: string, problems: string[]): ApiKeyEntry | undefined {
  if (!isObject(raw)) {
    problems.push(`config file: ${path} must be an object with sha256`);
    return undefined;
  }
  for (const field of Object.keys(raw)) {
    if (!["sha256", "expiresAt", "disabled", "id", "created"].includes(field))
      problems.push(`config file: ${path}.${field} is not a key field (sha256, expiresAt, disabled, id, created)`);
  }
  const hash = raw["sha256"];
  if (typeof hash !== "string" || !HEX64.test(hash.toLowerCase())) {
    problems.push(`config file: ${path}.sha256 must be the 64 hex digits of the key's SHA-256`);
    return undefined;
  }
  let expiresAtMs: number | undefined;
  if (raw["expiresAt"] !== undefined) {
    expiresAtMs = typeof raw["expiresAt"] === "string" ? Date.parse(raw["expiresAt"]) : Number.NaN;
    if (!Number.isFinite(expiresAtMs)) {
      problems.push(`config file: ${path}.expiresAt must be a date, e.g. "2027-01-31T00:00:00Z"`);
      expiresAtMs = undefined;
    }
  }
  const disabled = raw["disabled"] ?? false;
  if (typeof disabled !== "boolean") problems.push(`config file: ${path}.disabled must be true or false`);
  return { sha256: hash.toLowerCase(), expiresAtMs, disabled: disabled === true };
}

/** Parses `{models, methods, maxPriority}`; unknown fields are problems (a typo must not widen or narrow silently). */
function parseGrants(raw: unknown, path: string, problems: string[]): PartialGrants {
  if (!isObject(raw)) {
    problems.push(`config file: ${path} must be an object with models, methods, maxPriority`);
    return {};
  }
  const out: { models?: string[]; methods?: string[]; maxPriority?: number } = {};
  for (const [field, value] of Object.entries(raw)) {
    if (field === "models") {
      out.models = stringList(value, `${path}.models`, problems).filter((m) => {
        if (MODEL_PATTERN.test(m)) return true;
        problems.push(`config file: ${path}.models entry ${JSON.stringify(m)} is not a model name or glob`);
        return false;
      });
    } else if (field === "methods") {
      out.methods = stringList(value, `${path}.methods`, problems).filter((m) => {
        if (expandMethodGrant(m) !== undefined) return true;
        problems.push(
          `config file: ${path}.methods entry ${JSON.stringify(m)} is not a method or a group (${Object.keys(METHOD_GROUPS).join(", ")}, *)`,
        );
        return false;
      });
    } else if (field === "maxPriority") {
      if (typeof value !== "number" || !Number.isInteger(value) || value < -100 || value > 100)
        problems.push(`config file: ${path}.maxPriority must be a whole number from -100 to 100`);
      else out.maxPriority = value;
    } else {
      problems.push(`config file: ${path}.${field} is not a permission (models, methods, maxPriority)`);
    }
  }
  return out;
}

function stringList(raw: unknown, path: string, problems: string[]): string[] {
  if (!Array.isArray(raw) || !raw.every((x) => typeof x === "string")) {
    problems.push(`config file: ${path} must be an array of strings`);
    return [];
  }
  return raw as string[];
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
