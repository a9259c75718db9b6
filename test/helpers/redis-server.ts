import { spawn, spawnSync } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import type { Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** A real `redis-server` child process on a loopback port, for tests that must not mock Redis. */
export interface RedisServer {
  /** `redis://127.0.0.1:<port>` */
  url: string;
  port: number;
  /** Stops the server (SIGTERM, SIGKILL after a grace period) and waits until it has exited. */
  stop(): Promise<void>;
  /**
   * Kills the server with SIGKILL — a crash: no shutdown, clients see their connections drop —
   * and waits until it has exited. Its directory stays, so restart() can bring it back.
   */
  kill(): Promise<void>;
  /** Starts the server again on the same port (stopping it first if it runs). Data is not kept. */
  restart(): Promise<void>;
  /** Freezes the process (SIGSTOP): it keeps its sockets open but answers nothing — a hung Redis. */
  pause(): void;
  /** Thaws a paused process (SIGCONT). */
  resume(): void;
}

/** A real Redis Sentinel (`redis-server --sentinel`) watching one master. */
export interface RedisSentinel {
  port: number;
  stop(): Promise<void>;
}

const running = new Set<ChildProcess>();
process.once("exit", () => {
  // Last resort if a test forgot its after hook: never leave a redis-server behind.
  for (const child of running) child.kill("SIGKILL");
});

let binaryChecked = false;
function requireBinary(): void {
  if (binaryChecked) return;
  const r = spawnSync("redis-server", ["--version"], { stdio: "ignore" });
  if (r.error !== undefined || r.status !== 0) {
    throw new Error(
      "redis-server is not installed (not on PATH); run scripts/install-system-deps.sh to install it — the cache tests need a real Redis",
    );
  }
  binaryChecked = true;
}

/** A TCP port that was free on 127.0.0.1 a moment ago. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * A free port for something started later (e.g. a Redis that "comes back"): picked below the
 * kernel's ephemeral range, so no server listening on port 0 in a parallel test can take it in
 * the meantime (freePort's ports come from that range and can be handed out again at once).
 */
export async function laterPort(): Promise<number> {
  let low = 32768;
  try {
    low = Number(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0]) || low;
  } catch {
    // not Linux: keep the usual default
  }
  const floor = Math.max(1024, Math.min(20000, low - 4000));
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = floor + Math.floor(Math.random() * Math.max(1, low - floor));
    const free = await new Promise<boolean>((resolve) => {
      const srv = createServer();
      srv.once("error", () => resolve(false));
      srv.listen(port, "127.0.0.1", () => srv.close(() => resolve(true)));
    });
    if (free) return port;
  }
  throw new Error("no free port below the ephemeral range");
}

/** Sends PING over a raw socket and resolves true if the answer is +PONG. */
function pingOnce(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = createConnection({ host: "127.0.0.1", port });
    let data = "";
    const done = (ok: boolean): void => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(300, () => done(false));
    sock.once("error", () => done(false));
    sock.once("connect", () => sock.write("PING\r\n"));
    sock.on("data", (chunk: Buffer) => {
      data += chunk.toString("latin1");
      if (data.includes("\r\n")) done(data.startsWith("+PONG"));
    });
  });
}

async function waitForPing(port: number, child: ChildProcess, stderr: () => string): Promise<void> {
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`redis-server on port ${port} exited early: ${stderr().trim()}`);
    }
    if (await pingOnce(port)) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`redis-server on port ${port} did not answer PING within 5 s: ${stderr().trim()}`);
}

function spawnRedis(args: string[]): { child: ChildProcess; stderr: () => string } {
  const child = spawn("redis-server", args, { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  const keep = (chunk: Buffer): void => {
    out = (out + chunk.toString("utf8")).slice(-4000);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  running.add(child);
  child.once("exit", () => running.delete(child));
  return { child, stderr: () => out };
}

/** SIGKILLs the child and waits until it has exited (bounded: a SIGKILLed process cannot linger). */
async function killChild(child: ChildProcess | undefined): Promise<void> {
  if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGKILL");
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`redis-server pid ${child.pid ?? "?"} did not exit within 5 s of SIGKILL`)),
      5000,
    );
  });
  try {
    await Promise.race([exited, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function stopChild(child: ChildProcess | undefined): Promise<void> {
  if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGCONT"); // a paused server cannot handle SIGTERM
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 2000);
  await exited;
  clearTimeout(timer);
}

/**
 * Starts the Debian `redis-server` on a free loopback port (or `options.port`), without
 * persistence, plus any extra `options.args` (relative file names land in the server's own
 * temporary directory), and waits until it answers PING. Throws (never skips) when the binary
 * is missing.
 */
export async function startRedis(options: { port?: number; args?: readonly string[] } = {}): Promise<RedisServer> {
  requireBinary();
  const dir = mkdtempSync(join(tmpdir(), "ogw-redis-"));
  let port = 0;
  let child: ChildProcess | undefined;
  const launch = async (): Promise<void> => {
    const args = ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
    args.push("--dir", dir, "--loglevel", "warning");
    args.push(...(options.args ?? []));
    mkdirSync(dir, { recursive: true }); // stop() removes it
    const s = spawnRedis(args);
    child = s.child;
    await waitForPing(port, s.child, s.stderr);
  };
  for (let attempt = 0; ; attempt++) {
    port = options.port ?? (await freePort());
    try {
      await launch();
      break;
    } catch (err) {
      await stopChild(child);
      // A port taken between freePort() and bind: try another one.
      if (attempt >= 2 || options.port !== undefined) throw err;
    }
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    async stop() {
      await stopChild(child);
      rmSync(dir, { recursive: true, force: true });
    },
    async kill() {
      await killChild(child);
    },
    async restart() {
      await stopChild(child);
      await launch();
    },
    pause() {
      child?.kill("SIGSTOP");
    },
    resume() {
      child?.kill("SIGCONT");
    },
  };
}

/**
 * Starts a Sentinel (`redis-server <conf> --sentinel`) that monitors the Redis on `masterPort`
 * under `masterName`, and waits until it knows the master's address.
 */
export async function startSentinel(masterName: string, masterPort: number): Promise<RedisSentinel> {
  requireBinary();
  const dir = mkdtempSync(join(tmpdir(), "ogw-sentinel-"));
  const port = await freePort();
  const conf = join(dir, "sentinel.conf");
  writeFileSync(
    conf,
    [
      `port ${port}`,
      "bind 127.0.0.1",
      `dir ${dir}`,
      `sentinel monitor ${masterName} 127.0.0.1 ${masterPort} 1`,
      "",
    ].join("\n"),
  );
  const s = spawnRedis([conf, "--sentinel"]);
  try {
    await waitForPing(port, s.child, s.stderr);
  } catch (err) {
    await stopChild(s.child);
    throw err;
  }
  return {
    port,
    async stop() {
      await stopChild(s.child);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A loopback TCP proxy whose link can be cut, to take one client off a Redis that others still reach. */
export interface TcpProxy {
  port: number;
  /** Drops every proxied connection and refuses new ones until restore(). */
  cut(): void;
  restore(): void;
  close(): Promise<void>;
}

/** Starts a proxy on a free loopback port forwarding to 127.0.0.1:`targetPort`. */
export function startTcpProxy(targetPort: number): Promise<TcpProxy> {
  const sockets = new Set<Socket>();
  let cut = false;
  const track = (s: Socket): void => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
    s.on("error", () => s.destroy());
  };
  const server = createServer((client) => {
    track(client);
    if (cut) {
      client.destroy();
      return;
    }
    const upstream = createConnection({ host: "127.0.0.1", port: targetPort });
    track(upstream);
    client.pipe(upstream);
    upstream.pipe(client);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const addr = server.address();
      const port = typeof addr === "object" && addr !== null ? addr.port : 0;
      resolve({
        port,
        cut() {
          cut = true;
          for (const s of sockets) s.destroy();
        },
        restore() {
          cut = false;
        },
        close() {
          for (const s of sockets) s.destroy();
          return new Promise((r) => server.close(() => r()));
        },
      });
    });
  });
}
