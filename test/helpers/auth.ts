import { mkdtemp, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorInfoSchema } from "../../src/gen/google/rpc/error_details_pb.js";

/** How a call ended: "ok", or the status code and ErrorInfo reason ("Unauthenticated MISSING_CREDENTIALS"). */
export async function outcome(call: () => Promise<unknown>): Promise<string> {
  try {
    await call();
    return "ok";
  } catch (e) {
    const err = ConnectError.from(e);
    const reason = err.findDetails(ErrorInfoSchema)[0]?.reason;
    return reason === undefined ? Code[err.code] : `${Code[err.code]} ${reason}`;
  }
}

/** Reads a whole server stream; resolves with the messages. */
export async function drain<T>(stream: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const m of stream) out.push(m);
  return out;
}

/** A config file in a fresh temporary directory, rewritten the way editors and Kubernetes do (a new file renamed over). */
export interface TempConfig {
  readonly path: string;
  readonly dir: string;
  write(content: unknown): Promise<void>;
  remove(): Promise<void>;
}

/** Creates a temporary config file holding `content` (JSON). */
export async function tempConfig(content: unknown): Promise<TempConfig> {
  const dir = await mkdtemp(join(tmpdir(), "gateway-auth-"));
  const path = join(dir, "gateway.json");
  let version = 0;
  const write = async (c: unknown): Promise<void> => {
    const next = join(dir, `.gateway.json.${++version}`);
    await writeFile(next, typeof c === "string" ? c : JSON.stringify(c, null, 2));
    await rename(next, path);
  };
  await write(content);
  return { path, dir, write, remove: () => rm(dir, { recursive: true, force: true }) };
}
