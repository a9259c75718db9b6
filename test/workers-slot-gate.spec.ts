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
import { compareWaiters, createSlotTable, lowestLimit, slotKey } from "../src/routing/slot-table.js";
import type { SlotTable } from "../src/routing/slot-table.js";

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
      expected: [true, false, [], true],
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
      expected: [true, true, [], [], [], 1],
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
        t.dropOwner(1).freed,
        t.held(A),
        t.held(B),
        t.dropOwner(1).freed,
      ],
      expected: [true, true, true, 2, 1, 0, 0],
    },
    {
      name: "ignores the late release of a lease freed with its worker",
      steps: (t) => [t.acquire(1, 1, A, 1), t.dropOwner(1).freed, t.acquire(2, 1, A, 1), t.release(1, 1), t.held(A)],
      expected: [true, 1, true, [], 1],
    },
  ];
  for (const c of cases) {
    it(c.name, () => assert.deepEqual(c.steps(createSlotTable()), c.expected));
  }

  const low = (enqueuedAt: number, deadlineAt?: number) => ({ priority: 0, enqueuedAt, deadlineAt });
  const high = (enqueuedAt: number) => ({ priority: 5, enqueuedAt });
  const waiterCases: { name: string; steps: (t: SlotTable) => unknown[]; expected: unknown[] }[] = [
    {
      name: "hands a freed slot to the waiter of higher priority, though another worker waited longer",
      steps: (t) => [
        t.acquire(1, 1, A, 1),
        t.acquire(2, 1, A, 1, low(10)),
        t.acquire(3, 1, A, 1, high(20)),
        t.release(1, 1),
      ],
      expected: [true, false, false, [{ owner: 3, lease: -1, key: A }]],
    },
    {
      name: "hands it to the waiter waiting longest within a priority, and the next one to the other",
      steps: (t) => [
        t.acquire(1, 1, A, 1),
        t.acquire(3, 1, A, 1, low(20)),
        t.acquire(2, 1, A, 1, low(10)),
        t.release(1, 1),
        t.waiting(A),
        t.release(2, -1),
        t.waiting(A),
      ],
      expected: [true, false, false, [{ owner: 2, lease: -1, key: A }], 1, [{ owner: 3, lease: -2, key: A }], 0],
    },
    {
      name: "keeps one waiter per worker and key, re-ranked by its latest refusal",
      steps: (t) => [
        t.acquire(1, 1, A, 1),
        t.acquire(2, 1, A, 1, low(30)),
        t.acquire(3, 1, A, 1, low(20)),
        t.acquire(2, 2, A, 1, high(40)),
        t.waiting(A),
        t.release(1, 1),
      ],
      expected: [true, false, false, false, 2, [{ owner: 2, lease: -1, key: A }]],
    },
    {
      name: "skips a waiter past its deadline",
      steps: (t) => [t.acquire(1, 1, A, 1), t.acquire(2, 1, A, 1, low(10, 50)), t.release(1, 1, 100), t.waiting(A)],
      expected: [true, false, [], 0],
    },
    {
      name: "leaves no waiter for a refusal without a rank",
      steps: (t) => [t.acquire(1, 1, A, 1), t.acquire(2, 1, A, 1), t.release(1, 1), t.held(A), t.waiting(A)],
      expected: [true, false, [], 0, 0],
    },
    {
      name: "drops a dead worker's waiters and hands its slots to the others' waiters",
      steps: (t) => [
        t.acquire(1, 1, A, 1),
        t.acquire(1, 2, B, 1),
        t.acquire(2, 1, B, 1, low(5)),
        t.acquire(1, 3, A, 1, low(1)),
        t.dropOwner(1),
        t.waiting(A),
        t.held(B),
      ],
      expected: [true, true, false, false, { freed: 2, grants: [{ owner: 2, lease: -1, key: B }] }, 0, 1],
    },
    {
      name: "enforces the lowest limit the live workers sent, and forgets a dead worker's",
      steps: (t) => [
        t.acquire(1, 1, A, 1),
        t.acquire(2, 1, A, 2),
        t.effectiveLimit(A),
        t.dropOwner(1).freed,
        t.effectiveLimit(A),
        t.acquire(2, 2, A, 2),
        t.acquire(2, 3, A, 2),
        t.acquire(2, 4, A, 2),
      ],
      expected: [true, false, 1, 1, 2, true, true, false],
    },
    {
      name: "grants at once while a slot is free, whoever waits for a full key elsewhere",
      steps: (t) => [t.acquire(1, 1, B, 1), t.acquire(2, 1, B, 1, high(1)), t.acquire(3, 1, A, 1, low(9))],
      expected: [true, false, true],
    },
  ];
  for (const c of waiterCases) {
    it(c.name, () => assert.deepEqual(c.steps(createSlotTable()), c.expected));
  }

  it("orders waiters as one worker's queue heads are ordered: priority, then the oldest", () => {
    const table: [Parameters<typeof compareWaiters>, "a" | "b"][] = [
      [
        [
          { priority: 1, enqueuedAt: 9 },
          { priority: 0, enqueuedAt: 1 },
        ],
        "a",
      ],
      [
        [
          { priority: 0, enqueuedAt: 5 },
          { priority: 0, enqueuedAt: 3 },
        ],
        "b",
      ],
      [
        [
          { priority: 0, enqueuedAt: 3, deadlineAt: 900 },
          { priority: 0, enqueuedAt: 4, deadlineAt: 10 },
        ],
        "a",
      ],
    ];
    for (const [[a, b], first] of table) assert.equal(compareWaiters(a, b) < 0 ? "a" : "b", first);
    assert.equal(lowestLimit([4, 1, 2]), 1);
    assert.equal(lowestLimit([]), undefined);
  });

  it("answers a worker's acquire and applies its release", () => {
    const t = createSlotTable();
    const acquire: SlotRequestMessage = {
      type: "ogw:slot-acquire",
      lease: 4,
      node: "a",
      model: "llama3.2:latest",
      limit: 1,
    };
    assert.deepEqual(answerSlotRequest(t, 1, acquire), [
      { owner: 1, message: { type: "ogw:slot-answer", lease: 4, granted: true } },
    ]);
    assert.deepEqual(answerSlotRequest(t, 2, { ...acquire, lease: 1 }), [
      { owner: 2, message: { type: "ogw:slot-answer", lease: 1, granted: false } },
    ]);
    assert.deepEqual(answerSlotRequest(t, 1, { type: "ogw:slot-release", lease: 4 }), []);
    assert.equal(t.held(A), 0);
  });

  it("tells its own well-formed messages from node:cluster's and anything else", () => {
    assert.equal(isSlotRequest({ type: "ogw:slot-release", lease: 1 }), true);
    const acquire = { type: "ogw:slot-acquire", lease: 1, node: "a", model: "m", limit: 1 };
    assert.equal(isSlotRequest(acquire), true);
    assert.equal(isSlotRequest({ ...acquire, rank: { priority: 0, enqueuedAt: 1, deadlineAt: 2 } }), true);
    assert.equal(isSlotRequest({ ...acquire, rank: { priority: "high", enqueuedAt: 1 } }), false);
    assert.equal(isSlotRequest({ ...acquire, limit: 1.5 }), false);
    assert.equal(isSlotRequest({ ...acquire, node: "" }), false);
    assert.equal(isSlotRequest({ ...acquire, model: "x".repeat(5000) }), false);
    assert.equal(isSlotRequest({ type: "ogw:slot-release", lease: "1" }), false);
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
        for (const out of answerSlotRequest(table, owner, m))
          if (out.owner === owner) setImmediate(() => emitter.emit("message", out.message));
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

/** A primary owning `table`, with one channel per worker; replies arrive asynchronously, as over IPC. */
function fakePrimary(table: SlotTable) {
  const workers = new Map<number, EventEmitter>();
  const sent: { owner: number; m: SlotRequestMessage }[] = [];
  return {
    sent,
    channel(owner: number): IpcChannel {
      const emitter = new EventEmitter();
      workers.set(owner, emitter);
      return {
        connected: true,
        send(m) {
          sent.push({ owner, m });
          for (const out of answerSlotRequest(table, owner, m))
            setImmediate(() => workers.get(out.owner)?.emit("message", out.message));
          return true;
        },
        on: (e, l) => emitter.on(e, l),
        off: (e, l) => emitter.off(e, l),
      };
    },
  };
}

/** Resolves on the next call of the returned listener. */
function nextCall() {
  let fire: (v: [string, string]) => void = () => undefined;
  const called = new Promise<[string, string]>((r) => {
    fire = r;
  });
  return { called, listener: (node: string, model: string) => fire([node, model]) };
}

describe("a worker's IPC slot gate", () => {
  it("is woken when the primary hands it a freed slot, and takes it without asking again", async () => {
    const table = createSlotTable();
    const primary = fakePrimary(table);
    const one = createIpcSlotGate({ channel: primary.channel(1) });
    const two = createIpcSlotGate({ channel: primary.channel(2) });
    const slot = await one.tryAcquire("a", "llama3.2:latest", 1, { priority: 0, enqueuedAt: 1 });
    assert.ok(slot);
    assert.equal(await two.tryAcquire("a", "llama3.2:latest", 1, { priority: 0, enqueuedAt: 2 }), undefined);
    const woken = nextCall();
    let taken: Awaited<ReturnType<typeof two.tryAcquire>>;
    two.onFree((node, model) => {
      woken.listener(node, model);
      // The scheduler's pump asks synchronously from its wake-up.
      void two.tryAcquire(node, model, 1).then((s) => {
        taken = s;
      });
    });
    const asked = primary.sent.length;
    await slot.release();
    assert.deepEqual(await woken.called, ["a", "llama3.2:latest"]);
    await new Promise((r) => setImmediate(r));
    assert.ok(taken, "the parked slot is the acquire's answer");
    assert.equal(primary.sent.length, asked + 1, "only the release went to the primary: no second acquire");
    assert.equal(table.held(A), 1);
    assert.equal(two.shared(), true);
    await taken.release();
    assert.equal(table.held(A), 0);
  });

  it("gives a slot back together with its next acquire, so that request competes with the other workers' waiters", async () => {
    const table = createSlotTable();
    const primary = fakePrimary(table);
    const one = createIpcSlotGate({ channel: primary.channel(1) });
    const two = createIpcSlotGate({ channel: primary.channel(2) });
    const slot = await one.tryAcquire("a", "llama3.2:latest", 1, { priority: 0, enqueuedAt: 1 });
    assert.ok(slot);
    assert.equal(await two.tryAcquire("a", "llama3.2:latest", 1, { priority: 0, enqueuedAt: 2 }), undefined);
    // Worker one's request ends and, in the same tick, its next (more urgent) request asks.
    void slot.release();
    const next = await one.tryAcquire("a", "llama3.2:latest", 1, { priority: 5, enqueuedAt: 3 });
    assert.ok(next, "the more urgent request at the releasing worker gets the slot");
    const sentByOne = primary.sent.filter((s) => s.owner === 1).map((s) => s.m);
    assert.equal(sentByOne.at(-1)?.type, "ogw:slot-acquire");
    assert.equal((sentByOne.at(-1) as { releasing?: number }).releasing, 1, "the release travelled with it");
    assert.equal(table.waiting(A), 1, "worker two still waits");
    // Its next request is less urgent than worker two's waiter: that one gets the slot now.
    let taken: Promise<unknown> | undefined;
    const woken = nextCall();
    two.onFree((node, model) => {
      taken = two.tryAcquire(node, model, 1);
      woken.listener(node, model);
    });
    void next.release();
    assert.equal(await one.tryAcquire("a", "llama3.2:latest", 1, { priority: 0, enqueuedAt: 9 }), undefined);
    await woken.called;
    assert.ok(await taken, "worker two, woken, holds the slot");
    assert.equal(table.held(A), 1);
    assert.equal(table.waiting(A), 1, "worker one waits now");
  });

  it("gives a handed slot straight back when nobody here takes it (the waiter was cancelled or placed elsewhere)", async () => {
    const table = createSlotTable();
    const primary = fakePrimary(table);
    const one = createIpcSlotGate({ channel: primary.channel(1) });
    const two = createIpcSlotGate({ channel: primary.channel(2) });
    const three = createIpcSlotGate({ channel: primary.channel(3) });
    const slot = await one.tryAcquire("a", "llama3.2:latest", 1);
    assert.ok(slot);
    // Two waits with the higher priority, then its request goes away; three waits too.
    assert.equal(await two.tryAcquire("a", "llama3.2:latest", 1, { priority: 9, enqueuedAt: 1 }), undefined);
    assert.equal(await three.tryAcquire("a", "llama3.2:latest", 1, { priority: 0, enqueuedAt: 2 }), undefined);
    const threeWoken = nextCall();
    three.onFree(threeWoken.listener);
    await slot.release();
    await threeWoken.called;
    assert.ok(
      primary.sent.some((s) => s.owner === 2 && s.m.type === "ogw:slot-release" && s.m.lease < 0),
      "worker two gave its unwanted grant back",
    );
    await new Promise((r) => setImmediate(r));
    assert.equal(table.held(A), 0, "and worker three, not wanting it either once woken, gave it back: nothing leaks");
    assert.equal(table.waiting(A), 0);
  });

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
    assert.equal(gate.shared(), true, "shared until an answer is missed");
    await gate.tryAcquire("a", "llama3.2:latest", 1);
    assert.equal(gate.shared(), false, "GetStatus slots_shared is false while counting alone");
    answering = true;
    assert.ok(await gate.tryAcquire("a", "llama3.2:latest", 1));
    assert.equal(gate.shared(), true, "and true again once the primary answers");
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
