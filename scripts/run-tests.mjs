#!/usr/bin/env node
// Runs every test/**/*.spec.ts with node:test under tsx.
// Node 20's --test takes no globs, so the files are listed here. Extra
// arguments are passed through (e.g. `npm test -- --test-name-pattern=Embed`);
// plain file arguments narrow the run to those files.
import { spawnSync } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";

function specs(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...specs(p));
    else if (name.endsWith(".spec.ts")) out.push(p);
  }
  return out.sort();
}

const args = process.argv.slice(2);
const files = args.filter((a) => a.endsWith(".spec.ts"));
const flags = args.filter((a) => !a.endsWith(".spec.ts"));
const run = files.length > 0 ? files : specs("test");
const concurrency = process.env.TEST_CONCURRENCY ?? "2";
const r = spawnSync(
  process.execPath,
  ["--import", "tsx", "--test", `--test-concurrency=${concurrency}`, "--test-reporter=spec", ...flags, ...run],
  { stdio: "inherit" },
);
process.exit(r.status ?? 1);
