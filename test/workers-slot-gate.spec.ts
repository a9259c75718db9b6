import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import {
  IPC_SLOTS_LOCAL_MSG,
  IPC_SLOTS_SHARED_AGAIN_MSG,
  answerSlotRequest,
  createIpcSlotGate,
  isSlotRequest,
} from "../src/routing/ipc-slot-gate.js";
import type { IpcChannel, SlotRequestMessage } from "../src/routing/ipc-slot-gate.js";
import { createSlotTable, slotKey } from "../src/routing/slot-table.js";

const A = slotKey("a", "llama3.2:latest");
const B = slotKey("b", "llama3.2:latest");

describe("the primary's slot table", () => {
  const cases: {
    name: string;
    steps: (t: ReturnType<typeof createSlotTable>) => unknown[];
    expected: unknown[];
  }[] = [
    {
      name: "grants up to the limit, then refuses",
      steps: (t) => [t.acquire(1, 1, A, 2), t.acquire(2, 1, A, 2), t.acquire(1, 2, A, 2), t.held(A)],
      expected: [true, true, false, 2],
    },
    {
      name: "counts each (node, model) apart",
      steps: (t) => [t.acquire(1, 1, A, 1), t.acquire(1, 2, B, 1), t.held(A), t.held(B)],
      expected: [true, true, 1, 1],
    },
    {
      name: "grants again after a release",
      steps: (t) => [t.acquire(1, 1, A, 1), t.acquire(2, 1, A, 1), t.release(1, 1), t.acquire(2, 1, A, 1)],
      expected: [true, false, undefined, true],
    },
    {
      name: "ignores a second release and a release by another owner",
      steps: (t) => [
        t.acquire(1, 1, A, 2),
        t.acquire(2, 1, A, 2),
        t.release(3, 1),
        t.release(1, 1),
        t.release(1, 1),
        t.held(A),
      ],
      expected: [true, true, undefined, undefined, undefined, 1],
    },
    {
      name: "does not count a lease id its owner already holds twice",
      steps: (t) => [t.acquire(1, 7, A, 2), t.acquire(1, 7, A, 2), t.held(A)],
      expected: [true, true, 1],
    },
    {
      name: "frees every slot of a worker that died, and only its own",
      steps: (t) => [
        t.acquire(1, 1, A, 3),
        t.acquire(1, 2, B, 3),
        t.acquire(2, 1, A, 3),
        t.dropOwner(1),
        t.held(A),
        t.held(B),
        t.dropOwner(1),
      ],
      expected: [true, true, true, 2, 1, 0, 0],
    },
    {
      name: "ignores the late release of a lease freed with its worker",
      steps: (t) => [t.acquire(1, 1, A, 1), t.dropOwner(1), t.acquire(2, 1, A, 1), t.release(1, 1), t.held(A)],
      expected: [true, 1, true, undefined, 1],
    },
  ];
  for (const c of cases) {
    it(c.name, () => assert.deepEqual(c.steps(createSlotTable()), c.expected));
  }

  it("answers a worker's acquire and applies its release", () => {
    const t = createSlotTable();
    const acquire: SlotRequestMessage = {
      type: "ogw:slot-acquire",
      lease: 4,
      node: "a",
      model: "llama3.2:latest",
      limit: 1,
    };
    assert.deepEqual(answerSlotRequest(t, 1, acquire), { type: "ogw:slot-answer", lease: 4, granted: true });
    assert.deepEqual(answerSlotRequest(t, 2, { ...acquire, lease: 1 }), {
      type: "ogw:slot-answer",
      lease: 1,
      granted: false,
    });
    assert.equal(answerSlotRequest(t, 1, { type: "ogw:slot-release", lease: 4 }), undefined);
    assert.equal(t.held(A), 0);
  });

  it("tells its own messages from node:cluster's and anything else", () => {
    assert.equal(isSlotRequest({ type: "ogw:slot-release", lease: 1 }), true);
    assert.equal(isSlotRequest({ cmd: "NODE_CLUSTER" }), false);
    assert.equal(isSlotRequest("ogw:slot-release"), false);
    assert.equal(isSlotRequest(null), false);
  });
});

/** A worker's IPC channel wired to a primary that owns `table` (answers asynchronously, as IPC does) or to nobody. */
function fakeChannel(table: ReturnType<typeof createSlotTable> | undefined, owner = 1) {
  const emitter = new EventEmitter();
  const sent: SlotRequestMessage[] = [];
  const channel: IpcChannel & { connected: boolean } = {
    connected: true,
    send(m) {
      sent.push(m);
      if (table) {
        const answer = answerSlotRequest(table, owner, m);
        if (answer) setImmediate(() => emitter.emit("message", answer));
      }
      return true;
    },
    on: (e, l) => emitter.on(e, l),
    off: (e, l) => emitter.off(e, l),
  };
  return { channel, sent, emitter };
}

function capture() {
  const lines: { level: string; msg: string }[] = [];
  return {
    lines,
    log: {
      warn: (_o: object, msg: string) => lines.push({ level: "warn", msg }),
      info: (_o: object, msg: string) => lines.push({ level: "info", msg }),
    },
  };
}

describe("a worker's IPC slot gate", () => {
  it("takes slots from the primary's table, shared with the other workers, and gives them back", async () => {
    const table = createSlotTable();
    const one = createIpcSlotGate({ channel: fakeChannel(table, 1).channel });
    const two = createIpcSlotGate({ channel: fakeChannel(table, 2).channel });
    const lease = await one.tryAcquire("a", "llama3.2:latest", 1);
    assert.ok(lease, "the first worker gets the slot");
    assert.equal(await two.tryAcquire("a", "llama3.2:latest", 1), undefined, "the second is refused while it is held");
    await lease.release();
    await lease.release();
    assert.equal(table.held(A), 0, "a double release frees one slot");
    assert.ok(await two.tryAcquire("a", "llama3.2:latest", 1), "the second gets it once it is free");
  });

  it("grants on local counting when the primary does not answer in time, logging once, and gives back a late grant", async () => {
    const { channel, sent, emitter } = fakeChannel(undefined);
    const { lines, log } = capture();
    const gate = createIpcSlotGate({ channel, timeoutMs: 20, log });
    assert.ok(await gate.tryAcquire("a", "llama3.2:latest", 1), "granted after the bound, not stalled");
    assert.ok(await gate.tryAcquire("a", "llama3.2:latest", 1));
    assert.deepEqual(lines, [{ level: "warn", msg: IPC_SLOTS_LOCAL_MSG }]);
    // The primary's grant of the first request arrives late: the worker hands it back at once.
    emitter.emit("message", { type: "ogw:slot-answer", lease: sent[0]!.lease, granted: true });
    assert.deepEqual(sent.at(-1), { type: "ogw:slot-release", lease: sent[0]!.lease });
    gate.close();
  });

  it("says so when the primary answers again after a fallback", async () => {
    const table = createSlotTable();
    const wired = fakeChannel(table);
    let answering = false;
    const channel: IpcChannel = {
      get connected() {
        return true;
      },
      send: (m) => (answering ? wired.channel.send(m) : true),
      on: wired.channel.on,
      off: wired.channel.off,
    };
    const { lines, log } = capture();
    const gate = createIpcSlotGate({ channel, timeoutMs: 20, log });
    await gate.tryAcquire("a", "llama3.2:latest", 1);
    answering = true;
    assert.ok(await gate.tryAcquire("a", "llama3.2:latest", 1));
    assert.deepEqual(
      lines.map((l) => l.msg),
      [IPC_SLOTS_LOCAL_MSG, IPC_SLOTS_SHARED_AGAIN_MSG],
    );
    gate.close();
  });

  it("grants on local counting at once when the channel to the primary is closed", async () => {
    const { channel, sent } = fakeChannel(createSlotTable());
    channel.connected = false;
    const gate = createIpcSlotGate({ channel, timeoutMs: 60_000 });
    assert.ok(await gate.tryAcquire("a", "llama3.2:latest", 1));
    assert.equal(sent.length, 0);
  });
});
