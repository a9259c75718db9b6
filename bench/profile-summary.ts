// Summarises a V8 .cpuprofile (e.g. from `npm run bench -- --cpu-prof DIR`):
// top functions by self time, and self time by file / package.
//   node --import tsx bench/profile-summary.ts DIR/gateway-relay-....cpuprofile [top=25]
import { readFileSync } from "node:fs";

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

/** One line of the summary. */
export interface SelfTime {
  /** Function or file/package name. */
  name: string;
  /** Self time, ms. */
  ms: number;
  /** Share of all sampled time. */
  share: number;
}

/** Where a script URL lives: a package under node_modules, a project file, or node's internals. */
function place(url: string): string {
  if (url === "") return "(native / V8)";
  if (url.startsWith("node:")) return url;
  const nm = url.lastIndexOf("/node_modules/");
  if (nm >= 0) {
    const rest = url.slice(nm + "/node_modules/".length).split("/");
    return rest[0]!.startsWith("@") ? `${rest[0]}/${rest[1]}` : rest[0]!;
  }
  const src = url.search(/\/(src|dist|\.bench\/dist)\//);
  return src >= 0 ? url.slice(src + 1) : url;
}

/** Self time by function and by file or package, largest first. */
export function summariseProfile(profile: CpuProfile): { total: number; functions: SelfTime[]; places: SelfTime[] } {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  profile.samples.forEach((id, i) => {
    selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0));
  });
  const fn = new Map<string, number>();
  const pl = new Map<string, number>();
  let total = 0;
  for (const [id, us] of selfUs) {
    const node = byId.get(id);
    if (!node) continue;
    const { functionName, url, lineNumber } = node.callFrame;
    if (functionName === "(idle)") continue;
    total += us;
    const where = place(url);
    const key = `${functionName || "(anonymous)"}  ${where}${url ? `:${lineNumber + 1}` : ""}`;
    fn.set(key, (fn.get(key) ?? 0) + us);
    pl.set(where, (pl.get(where) ?? 0) + us);
  }
  const list = (m: Map<string, number>): SelfTime[] =>
    [...m.entries()]
      .map(([name, us]) => ({ name, ms: us / 1000, share: total > 0 ? us / total : 0 }))
      .sort((a, b) => b.ms - a.ms);
  return { total: total / 1000, functions: list(fn), places: list(pl) };
}

const file = process.argv[2];
if (file === undefined) {
  process.stderr.write("usage: node --import tsx bench/profile-summary.ts <file.cpuprofile> [top]\n");
  process.exit(2);
}
const top = Number(process.argv[3] ?? 25);
const s = summariseProfile(JSON.parse(readFileSync(file, "utf8")) as CpuProfile);
const line = (x: SelfTime): string =>
  `${x.ms.toFixed(0).padStart(8)} ms ${(x.share * 100).toFixed(1).padStart(5)}%  ${x.name}`;
process.stdout.write(`${file}: ${s.total.toFixed(0)} ms of non-idle samples\n\nTop functions by self time:\n`);
process.stdout.write(`${s.functions.slice(0, top).map(line).join("\n")}\n\nBy file / package:\n`);
process.stdout.write(`${s.places.slice(0, top).map(line).join("\n")}\n`);
