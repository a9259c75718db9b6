/**
 * API keys for the gateway (README "Authentication"):
 *
 *   npm run keys -- create NAME [--expires 2027-01-31|90d] [--models a,b*] [--methods inference,PullModel]
 *                              [--max-priority N] [--roles r1,r2] [--json]
 *   npm run keys -- hash < key.txt
 *
 * `create` makes a new key, prints it once (it is never stored: only its SHA-256 is) and the
 * entry to add to the config file's `principals` (or, with the default permissions, to
 * API_KEYS). `hash` prints the SHA-256 of a key read from stdin, to find its entry.
 */
import { parseAuthFile } from "../src/config/auth-file.js";
import { hashApiKey, newApiKey } from "../src/auth/api-keys.js";

const USAGE = `usage:
  npm run keys -- create NAME [--expires DATE|NUMBERd] [--models m1,m2] [--methods g1,m1] [--max-priority N] [--roles r1,r2] [--json]
  npm run keys -- hash < file-with-the-key`;

function fail(message: string): never {
  process.stderr.write(`keys: ${message}\n${USAGE}\n`);
  process.exit(2);
}

/** `--name value` options after the positional arguments. */
function options(args: string[]): { positional: string[]; flags: Map<string, string> } {
  const positional: string[] = [];
  const flags = new Map<string, string>();
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === "--json") flags.set("json", "true");
    else if (a.startsWith("--")) {
      const value = args[++i];
      if (value === undefined) fail(`${a} needs a value`);
      flags.set(a.slice(2), value);
    } else positional.push(a);
  }
  return { positional, flags };
}

/** An expiry: an ISO date, or a number of days from now (`90d`). */
function expiry(raw: string): string {
  const days = /^(\d+)d$/.exec(raw);
  const ms = days ? Date.now() + Number(days[1]) * 24 * 3600 * 1000 : Date.parse(raw);
  if (!Number.isFinite(ms)) fail(`--expires ${raw} is not a date or a number of days (90d)`);
  return new Date(ms).toISOString();
}

function list(raw: string | undefined): string[] | undefined {
  return raw
    ?.split(",")
    .map((x) => x.trim())
    .filter((x) => x !== "");
}

function create(args: string[]): void {
  const { positional, flags } = options(args);
  const name = positional[0];
  if (name === undefined || positional.length > 1) fail("create takes one NAME");
  const key = newApiKey();
  const sha256 = hashApiKey(key);
  const keyEntry: Record<string, unknown> = { sha256, created: new Date().toISOString() };
  const expires = flags.get("expires");
  if (expires !== undefined) keyEntry["expiresAt"] = expiry(expires);
  const entry: Record<string, unknown> = { name, keys: [keyEntry] };
  const models = list(flags.get("models"));
  if (models !== undefined) entry["models"] = models;
  const methods = list(flags.get("methods"));
  if (methods !== undefined) entry["methods"] = methods;
  const maxPriority = flags.get("max-priority");
  if (maxPriority !== undefined) entry["maxPriority"] = Number(maxPriority);
  const roles = list(flags.get("roles"));
  // Checked with the gateway's own parser (roles are checked against the file by the gateway).
  const problems: string[] = [];
  parseAuthFile({ principals: [entry] }, [], problems);
  if (problems.length > 0) fail(problems.join("; "));
  if (roles !== undefined) entry["roles"] = roles;
  const apiKeys = `${name}:${sha256}`;
  if (flags.has("json")) {
    process.stdout.write(`${JSON.stringify({ key, entry, apiKeys })}\n`);
    return;
  }
  process.stdout.write(
    `API key for ${name} (shown once: store it now, the gateway keeps only its hash):\n\n  ${key}\n\n` +
      `Add this to "principals" in the config file (GATEWAY_CONFIG_FILE); it applies without a restart:\n\n` +
      `${JSON.stringify(entry, null, 2)}\n\n` +
      `Or, for inference on every model and no model administration, add this to API_KEYS:\n\n  ${apiKeys}\n`,
  );
}

async function hash(): Promise<void> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  const key = Buffer.concat(chunks).toString("utf8").trim();
  if (key === "") fail("hash reads the key from stdin");
  process.stdout.write(`${hashApiKey(key)}\n`);
}

const [command, ...rest] = process.argv.slice(2);
if (command === "create") create(rest);
else if (command === "hash") await hash();
else fail(command === undefined ? "no command" : `unknown command ${command}`);
