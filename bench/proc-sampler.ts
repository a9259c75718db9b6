// Reads a process's resource use from /proc (Linux): RSS from
// /proc/<pid>/status, CPU time from /proc/<pid>/stat, open descriptors from
// /proc/<pid>/fd. Node descendants are included, so a gateway that forks
// workers (WORKERS=n) is measured as a whole.
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";

/** Clock ticks per second of the stat times (USER_HZ); 100 on practically every Linux. */
export const CLK_TCK = ((): number => {
  try {
    const n = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8", timeout: 2000 }).trim());
    return Number.isInteger(n) && n > 0 ? n : 100;
  } catch {
    return 100;
  }
})();

/** Resource use of a process and its Node descendants at one moment. */
export interface ProcUsage {
  /** Resident set size, bytes (summed over the processes; shared pages count once per process). */
  rssBytes: number;
  /** Kernel high-water mark of RSS of the root process (VmHWM), bytes. */
  hwmBytes: number;
  /** User + system CPU time, seconds (the root's also includes children it has reaped). */
  cpuSeconds: number;
  /** Open file descriptors (sockets, pipes, files). */
  fds: number;
  /** Processes measured. */
  processes: number;
}

/** One sample of a sampler. */
export interface ProcSample extends ProcUsage {
  /** Ms since the sampler started. */
  atMs: number;
}

interface StatLine {
  pid: number;
  ppid: number;
  comm: string;
  cpuTicks: number;
  childTicks: number;
}

function readStat(pid: number): StatLine | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined;
  }
  // comm is in parentheses and may contain spaces: split after the last ")".
  const open = text.indexOf("(");
  const close = text.lastIndexOf(")");
  const f = text.slice(close + 2).split(" ");
  // f[0] is field 3 (state); utime, stime, cutime, cstime are fields 14..17.
  return {
    pid,
    ppid: Number(f[1]),
    comm: text.slice(open + 1, close),
    cpuTicks: Number(f[11]) + Number(f[12]),
    childTicks: Number(f[13]) + Number(f[14]),
  };
}

function statusKiB(pid: number, field: string): number {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

function fdCount(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return 0;
  }
}

/** The root and its descendants whose command is `node` (e.g. gateway workers; not esbuild). */
export function nodeTree(rootPid: number): number[] {
  const children = new Map<number, StatLine[]>();
  let entries: string[];
  try {
    entries = readdirSync("/proc");
  } catch {
    return [rootPid]; // no /proc (not Linux): measurements read as zero
  }
  for (const name of entries) {
    if (!/^\d+$/.test(name)) continue;
    const s = readStat(Number(name));
    if (!s) continue;
    const list = children.get(s.ppid);
    if (list) list.push(s);
    else children.set(s.ppid, [s]);
  }
  const out = [rootPid];
  const queue = [rootPid];
  for (let guard = 0; queue.length > 0 && guard < 10_000; guard++) {
    for (const c of children.get(queue.shift()!) ?? []) {
      queue.push(c.pid);
      if (c.comm === "node" || c.comm.startsWith("node")) out.push(c.pid);
    }
  }
  return out;
}

/** Resource use of the given processes (the first is the root). */
export function readUsage(pids: readonly number[]): ProcUsage {
  let rssKiB = 0;
  let ticks = 0;
  let fds = 0;
  let processes = 0;
  pids.forEach((pid, i) => {
    const s = readStat(pid);
    if (!s) return;
    processes++;
    ticks += s.cpuTicks + (i === 0 ? s.childTicks : 0);
    rssKiB += statusKiB(pid, "VmRSS");
    fds += fdCount(pid);
  });
  return {
    rssBytes: rssKiB * 1024,
    hwmBytes: pids.length > 0 ? statusKiB(pids[0]!, "VmHWM") * 1024 : 0,
    cpuSeconds: ticks / CLK_TCK,
    fds,
    processes,
  };
}

/** Samples a process tree every `intervalMs` until stopped (and at most `maxSamples` times). */
export class ProcSampler {
  readonly samples: ProcSample[] = [];
  private timer: NodeJS.Timeout | undefined;
  private pids: number[];
  private readonly t0 = performance.now();
  private ticks = 0;

  constructor(
    private readonly rootPid: number,
    private readonly intervalMs: number,
    private readonly maxSamples = 100_000,
  ) {
    this.pids = nodeTree(rootPid);
  }

  /** Takes a sample now and then every interval. */
  start(): this {
    this.sample();
    this.timer = setInterval(() => this.sample(), this.intervalMs);
    return this;
  }

  /** Takes a last sample and stops. */
  stop(): ProcSample[] {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.sample();
    return this.samples;
  }

  /** The largest RSS seen. */
  peakRssBytes(): number {
    return this.samples.reduce((m, s) => Math.max(m, s.rssBytes), 0);
  }

  private sample(): void {
    if (this.samples.length >= this.maxSamples) return;
    // Workers may come and go: look for descendants again now and then.
    if (++this.ticks % 20 === 0) this.pids = nodeTree(this.rootPid);
    this.samples.push({ atMs: performance.now() - this.t0, ...readUsage(this.pids) });
  }
}

/** Busy and total CPU time of the whole machine so far, seconds (from /proc/stat). */
export function machineCpu(): { busySeconds: number; totalSeconds: number } {
  try {
    const line = readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "";
    const v = line.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal (guest is already in user)
    const idle = (v[3] ?? 0) + (v[4] ?? 0);
    const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
    return { busySeconds: (total - idle) / CLK_TCK, totalSeconds: total / CLK_TCK };
  } catch {
    return { busySeconds: NaN, totalSeconds: NaN };
  }
}
