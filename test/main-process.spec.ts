import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import type { AddressInfo } from "node:net";
import { createClient } from "@connectrpc/connect";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { startSimulator } from "../src/simulator/simulator.js";
import { TRANSPORTS } from "./helpers/transports.js";

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const port = (s.address() as AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

interface Exit {
  code: number | null;
  stdout: string;
  stderr: string;
}

function runMain(env: Record<string, string>, onStdout?: (text: string, kill: () => void) => void): Promise<Exit> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ["--import", "tsx", "src/main.ts"], {
      env: { ...process.env, HOST: "127.0.0.1", PORT: "0", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
    child.stdout.on("data", (d: Buffer) => {
      stdout += d.toString();
      onStdout?.(stdout, () => child.kill("SIGTERM"));
    });
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("exit", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe("the gateway process (npm start)", () => {
  it("refuses to start with invalid configuration, listing every problem, and exits with status 2", async () => {
    const r = await runMain({ PORT: "99999", OLLAMA_URL: "not a url", LOG_LEVEL: "chatty" });
    assert.equal(r.code, 2);
    assert.match(r.stderr, /PORT="99999"/);
    assert.match(r.stderr, /not a url/);
    assert.match(r.stderr, /LOG_LEVEL="chatty"/);
  });

  it("logs its effective configuration with secrets masked, serves, and stops cleanly on SIGTERM", async () => {
    const sim = await startSimulator();
    try {
      const url = new URL(sim.url);
      url.username = "ops";
      url.password = "hunter2";
      let sent = false;
      const r = await runMain({ OLLAMA_URL: url.href }, (out, kill) => {
        if (!sent && out.includes('"gateway listening"')) {
          sent = true;
          kill();
        }
      });
      assert.equal(r.code, 0, r.stderr);
      const lines = r.stdout
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      const msgs = lines.map((l) => l["msg"]);
      assert.deepEqual(
        msgs.filter((m) => m !== "ollama node is reachable"),
        ["effective configuration", "gateway listening", "shutting down", "stopped"],
      );
      assert.ok(!r.stdout.includes("hunter2"), "the password is not logged");
      assert.ok(r.stdout.includes("***"));
    } finally {
      await sim.close();
    }
  });

  it("with WORKERS=2 serves from two processes on one port and stops them all on SIGTERM", async () => {
    const sim = await startSimulator();
    const port = await freePort();
    try {
      let started = false;
      let listening = 0;
      const r = await runMain({ OLLAMA_URL: sim.url, WORKERS: "2", PORT: String(port) }, (out, kill) => {
        listening = out.split("\n").filter((l) => l.includes('"gateway listening"')).length;
        if (listening === 2 && !started) {
          started = true;
          void (async () => {
            const client = createClient(InferenceService, TRANSPORTS[2]!.make(`http://127.0.0.1:${port}`));
            // New HTTP/1.1 connections each time, so the cluster can spread them.
            await Promise.all(
              Array.from({ length: 20 }, (_, i) => client.embed({ model: "all-minilm", inputs: [`w${i}`] })),
            );
            kill();
          })();
        }
      });
      assert.equal(r.code, 0, r.stderr);
      const lines = r.stdout
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      const servedBy = new Set(lines.filter((l) => l["msg"] === "rpc").map((l) => l["pid"]));
      assert.equal(servedBy.size, 2, `calls served by ${[...servedBy].join(", ")}`);
      assert.equal(lines.filter((l) => l["msg"] === "stopped").length, 2);
      assert.ok(lines.some((l) => l["msg"] === "all workers stopped"));
    } finally {
      await sim.close();
    }
  });
});
