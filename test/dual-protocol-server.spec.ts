import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { listenDualProtocol } from "../src/transport/dual-protocol-server.js";
import type { DualProtocolServer } from "../src/transport/dual-protocol-server.js";
import {
  FrameType,
  connectRaw,
  eventually,
  h2Frame,
  hasFrame,
  parseFrames,
  rawH2,
  within,
} from "./helpers/hostile-clients.js";
import { captureLogs } from "./helpers/log-capture.js";

describe("the dual-protocol server's connection bookkeeping", () => {
  let server: DualProtocolServer;
  const logs = captureLogs("info");
  const warnings = (): Record<string, unknown>[] => logs.lines.filter((l) => l["level"] === "warn");
  before(async () => {
    server = await listenDualProtocol(connectNodeAdapter({ routes: () => undefined }), {
      host: "127.0.0.1",
      port: 0,
      maxConcurrentStreams: 100,
      keepAliveTimeoutMs: 5_000,
      pingIntervalMs: 200,
      pingTimeoutMs: 300,
      maxConnections: 4,
      maxConnectionsPerIp: 2,
      log: logs.log,
    });
  });
  after(() => {
    server.stopAccepting();
    server.destroy();
  });

  it("PINGs an HTTP/2 client and destroys its connection once it leaves a PING unanswered", async () => {
    const c = await rawH2(server.port);
    await c.until((b) => hasFrame(b, FrameType.PING), "a PING from the server");
    // This client never answers it.
    await within(c.closed, 10_000, "the connection is closed");
    assert.equal(server.stats.sessionsEnded["ping-timeout"], 1);
  });

  it("keeps an HTTP/2 client that answers its PINGs", async () => {
    const c = await rawH2(server.port);
    let answered = 0;
    c.socket.on("data", () => {
      // Answer each PING with its ACK (same payload), as any HTTP/2 stack does.
      for (const f of parseFrames(c.received()).slice(answered)) {
        answered++;
        if (f.type === FrameType.PING && (f.flags & 1) === 0) c.socket.write(h2Frame(FrameType.PING, 1, 0, f.payload));
      }
    });
    await eventually(
      () => parseFrames(c.received()).filter((f) => f.type === FrameType.PING).length >= 3,
      "three PINGs answered",
      10_000,
    );
    assert.equal(c.isClosed, false);
    c.socket.destroy();
  });

  it("counts and logs connections refused at accept, by the limit they hit", async () => {
    await eventually(() => server.stats.open === 0, "no connection open", 10_000);
    const held = [await connectRaw(server.port, "127.0.0.2"), await connectRaw(server.port, "127.0.0.2")];
    await eventually(() => server.stats.open === 2, "two connections open");
    const third = await connectRaw(server.port, "127.0.0.2");
    await within(third.closed, 5_000, "the third connection from 127.0.0.2 is closed");
    held.push(await connectRaw(server.port, "127.0.0.3"), await connectRaw(server.port, "127.0.0.3"));
    await eventually(() => server.stats.open === 4, "four connections open");
    const fifth = await connectRaw(server.port, "127.0.0.4");
    await within(fifth.closed, 5_000, "a fifth connection is closed");
    assert.deepEqual(server.stats.refused, { "max-connections": 1, "max-connections-per-ip": 1 });
    await eventually(() => warnings().length === 2, "both refusals are logged");
    assert.deepEqual(
      warnings().map((w) => [w["msg"], w["refused"]]),
      [
        ["connections refused: MAX_CONNECTIONS_PER_IP reached", 1],
        ["connections refused: MAX_CONNECTIONS reached", 1],
      ],
    );
    for (const c of held) c.socket.destroy();
    await eventually(() => server.stats.open === 0, "the held connections are gone");
  });
});
