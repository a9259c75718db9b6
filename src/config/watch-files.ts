import { statSync } from "node:fs";
import { stat } from "node:fs/promises";

/** Watches files for changes by polling their metadata. */
export interface FileWatch {
  /** Stops polling (an in-flight check finishes without reporting). */
  close(): void;
}

/**
 * What identifies a version of a file: modification time, size, inode (a replaced file has a new
 * inode even with the same size and time). "missing" for a file that cannot be stat'ed.
 */
export function fileVersion(s: { mtimeMs: number; size: number; ino: number } | undefined): string {
  return s === undefined ? "missing" : `${s.mtimeMs}:${s.size}:${s.ino}`;
}

/**
 * Calls `onChange` with the files among `paths` whose version (`fileVersion`) changed, checking
 * every `intervalMs`. Polling rather than `fs.watch`: it sees every way files get replaced —
 * editors writing a new file and renaming it, Kubernetes swapping a ConfigMap's or Secret's
 * symlink (stat follows it) — on every filesystem, for the cost of one stat per file per
 * interval. The timer does not keep the process alive. A file that disappears is reported when
 * it comes back (a missing file is never applied).
 */
export function watchFiles(
  paths: readonly string[],
  intervalMs: number,
  onChange: (changed: string[]) => void,
): FileWatch {
  // The versions the gateway started with, taken now so a change right after start is not missed.
  const versions = new Map<string, string>(paths.map((p) => [p, fileVersion(statSync(p, { throwIfNoEntry: false }))]));
  let closed = false;
  let checking = false;
  const check = async (): Promise<void> => {
    if (checking) return;
    checking = true;
    try {
      const changed: string[] = [];
      for (const path of paths) {
        const version = fileVersion(await stat(path).catch(() => undefined));
        const before = versions.get(path);
        versions.set(path, version);
        if (before !== version && version !== "missing") changed.push(path);
      }
      if (changed.length > 0 && !closed) onChange(changed);
    } finally {
      checking = false;
    }
  };
  const timer = setInterval(() => void check(), intervalMs);
  timer.unref();
  return {
    close() {
      closed = true;
      clearInterval(timer);
    },
  };
}
