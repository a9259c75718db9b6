// Fault injection and the admin API: every fault kind produces exactly the broken behaviour a
// gateway must survive, and benchmarks can drive all of it over HTTP from another process.
import assert from "node:assert/strict";
import { after, afterEach, before, describe, it } from "node:test";
import { request } from "undici";
import {
  CLI_USAGE,
  parseCliArgs,
  parseFaultSpecs,
  SERVER_BUSY_MESSAGE,
  startSimulator,
  type Simulator,
} from "../src/simulator/index.js";
import { startSimulatorProcess } from "./helpers/sim-process.js";
import { delay, eventually, json, ndjson, post, send, streamLines } from "./helpers/sim-http.js";

describe("the simulator's faults", () => {
  let sim: Simulator;
  const chat = { model: "llama3.2", messages: [{ role: "user", content: "hi" }], options: { num_predict: 6 } };

  before(async () => {
    sim = await startSimulator();
  });
  afterEach(() => sim.reset());
  after(() => sim.close());

  it("answers error-before-stream with the given status and JSON error, once by default", async () => {
    sim.faults.add({ kind: "error-before-stream", status: 500, message: "boom", path: "/api/chat" });
    const first = await post(`${sim.url}/api/chat`, chat);
    assert.equal(first.status, 500);
    assert.equal(first.headers["content-type"], "application/json; charset=utf-8");
    assert.deepEqual(json(first), { error: "boom" });
    assert.equal((await post(`${sim.url}/api/chat`, chat)).status, 200, "the fault fired once");
    assert.equal(sim.stats.faultsTriggered, 1);
  });

  it("answers busy with 503 and Ollama's server-busy text", async () => {
    sim.faults.add({ kind: "busy" });
    const res = await post(`${sim.url}/api/generate`, { model: "llama3.2", prompt: "x" });
    assert.equal(res.status, 503);
    assert.equal(json(res).error, SERVER_BUSY_MESSAGE);
  });

  it("streams afterTokens chunks then one error line, with 200 and no done line", async () => {
    sim.faults.add({
      kind: "error-mid-stream",
      afterTokens: 3,
      message: "an error was encountered while running the model",
    });
    const res = await post(`${sim.url}/api/chat`, chat);
    assert.equal(res.status, 200);
    const lines = ndjson(res);
    assert.equal(lines.length, 4);
    assert.ok(lines.slice(0, 3).every((l) => l.done === false));
    assert.deepEqual(lines[3], { error: "an error was encountered while running the model" });
    assert.equal(sim.stats.tokensEmitted, 3);
  });

  it("turns error-mid-stream into a 500 JSON answer for stream:false, like Ollama", async () => {
    sim.faults.add({ kind: "error-mid-stream", afterTokens: 2, message: "runner died" });
    const res = await post(`${sim.url}/api/chat`, { ...chat, stream: false });
    assert.equal(res.status, 500);
    assert.deepEqual(json(res), { error: "runner died" });
  });

  it("fires a mid-stream error before the done line when the answer is shorter than afterTokens", async () => {
    sim.faults.add({ kind: "error-mid-stream", afterTokens: 100, message: "late" });
    const lines = ndjson(await post(`${sim.url}/api/chat`, chat));
    assert.equal(lines.length, 7);
    assert.deepEqual(lines.at(-1), { error: "late" });
  });

  it("drops the connection before any headers for drop-connection afterTokens 0", async () => {
    sim.faults.add({ kind: "drop-connection", afterTokens: 0, path: "/api/tags" });
    await assert.rejects(send("GET", `${sim.url}/api/tags`), /other side closed|socket|ECONNRESET/i);
    assert.equal(sim.stats.disconnects, 0, "a deliberate drop is not a client disconnect");
    assert.equal((await send("GET", `${sim.url}/api/tags`)).status, 200);
  });

  it("drops the connection after afterTokens chunks", async () => {
    sim.faults.add({ kind: "drop-connection", afterTokens: 2 });
    const lines: string[] = [];
    await assert.rejects(async () => {
      for await (const line of streamLines(`${sim.url}/api/chat`, chat)) lines.push(line);
    });
    assert.equal(lines.length, 2);
    assert.equal(sim.stats.tokensEmitted, 2);
  });

  it("writes one malformed line and continues to a normal done line", async () => {
    sim.faults.add({ kind: "malformed-line", afterTokens: 1 });
    const res = await post(`${sim.url}/api/chat`, chat);
    const lines = res.text.trimEnd().split("\n");
    assert.equal(lines.length, 8, "6 tokens, 1 garbage line, done");
    assert.throws(() => JSON.parse(lines[1] ?? ""));
    assert.equal((JSON.parse(lines.at(-1) ?? "{}") as { done: boolean }).done, true);
  });

  it('ends the stream right after the malformed line when then is "end"', async () => {
    sim.faults.add({ kind: "malformed-line", afterTokens: 2, then: "end" });
    const lines = (await post(`${sim.url}/api/chat`, chat)).text.trimEnd().split("\n");
    assert.equal(lines.length, 3);
    assert.equal(
      lines.some((l) => l.includes('"done":true')),
      false,
    );
  });

  it("writes an endless unterminated line until the client gives up", async () => {
    sim.faults.add({ kind: "endless-line", path: "/api/generate" });
    const gone = sim.events.next("disconnect");
    const controller = new AbortController();
    const res = await request(`${sim.url}/api/generate`, {
      method: "POST",
      body: JSON.stringify({ model: "llama3.2", prompt: "x" }),
      signal: controller.signal,
    });
    assert.equal(res.statusCode, 200);
    assert.equal(res.headers["content-type"], "application/x-ndjson");
    let bytes = 0;
    let newline = false;
    await assert.rejects(async () => {
      for await (const chunk of res.body) {
        const buffer = chunk as Buffer;
        bytes += buffer.length;
        if (buffer.includes(10)) newline = true;
        if (bytes > 512 * 1024) controller.abort();
      }
    });
    assert.ok(bytes > 512 * 1024);
    assert.equal(newline, false, "the line never ends");
    assert.equal((await gone).path, "/api/generate");
  });

  it("stalls before answering, and notices a client that gives up during the stall", async () => {
    sim.faults.add({ kind: "stall", ms: 150, path: "/api/version" });
    const t0 = performance.now();
    assert.equal((await send("GET", `${sim.url}/api/version`)).status, 200);
    assert.ok(performance.now() - t0 >= 140);

    sim.faults.add({ kind: "stall", ms: 5000, path: "/api/version" });
    const gone = sim.events.next("disconnect");
    await assert.rejects(send("GET", `${sim.url}/api/version`, undefined, { signal: AbortSignal.timeout(50) }));
    assert.equal((await gone).path, "/api/version");
  });

  it("filters faults by model and path, and repeats them `times` times", async () => {
    sim.faults.add({ kind: "busy", model: "QWEN3", times: Number.POSITIVE_INFINITY });
    sim.faults.add({ kind: "error-before-stream", status: 418, message: "teapot", path: "/api/show", times: 2 });
    assert.equal((await post(`${sim.url}/api/chat`, chat)).status, 200, "llama3.2 is not affected");
    for (let i = 0; i < 3; i++) {
      assert.equal((await post(`${sim.url}/api/chat`, { ...chat, model: "qwen3:latest" })).status, 503);
    }
    assert.equal((await post(`${sim.url}/api/show`, { model: "llama3.2" })).status, 418);
    assert.equal((await post(`${sim.url}/api/show`, { model: "llama3.2" })).status, 418);
    assert.equal((await post(`${sim.url}/api/show`, { model: "llama3.2" })).status, 200);
    assert.equal(sim.faults.list().length, 1, "only the endless fault is still armed");
    sim.faults.clear();
    assert.equal((await post(`${sim.url}/api/chat`, { ...chat, model: "qwen3" })).status, 200);
  });

  it("rejects invalid faults with a clear message", () => {
    assert.throws(() => sim.faults.add({ kind: "nope" } as never), /unknown fault kind "nope"/);
    assert.throws(() => sim.faults.add({ kind: "stall", ms: -1 }), /ms must be an integer >= 0/);
  });
});

describe("the simulator's admin API", () => {
  let sim: Simulator;
  before(async () => {
    sim = await startSimulator();
  });
  after(() => sim.close());

  it("arms, lists and clears faults over HTTP", async () => {
    const added = await post(`${sim.url}/_sim/faults`, { kind: "busy", path: "/api/chat", times: null });
    assert.equal(added.status, 201);
    assert.match(String(json(added).id), /^fault-\d+$/);
    const chat = { model: "llama3.2", messages: [{ role: "user", content: "x" }] };
    assert.equal((await post(`${sim.url}/api/chat`, chat)).status, 503);
    assert.equal((await post(`${sim.url}/api/chat`, chat)).status, 503);
    const listed = json<{ faults: Array<{ kind: string; remaining: number | null }> }>(
      await send("GET", `${sim.url}/_sim/faults`),
    );
    assert.deepEqual(
      listed.faults.map((f) => [f.kind, f.remaining]),
      [["busy", null]],
    );
    assert.deepEqual(json(await send("DELETE", `${sim.url}/_sim/faults`)), { cleared: 1 });
    assert.equal((await post(`${sim.url}/api/chat`, chat)).status, 200);
  });

  it("rejects an invalid fault with 400", async () => {
    const res = await post(`${sim.url}/_sim/faults`, { kind: "error-before-stream", status: 999 });
    assert.equal(res.status, 400);
    assert.equal(json(res).error, "status must be an HTTP status code");
  });

  it("serves live stats, not counting admin calls, and resets them", async () => {
    await post(`${sim.url}/api/generate`, {
      model: "llama3.2",
      prompt: "x",
      stream: false,
      options: { num_predict: 4 },
    });
    const stats = json<{ requests: Record<string, number>; tokensEmitted: number; completed: number }>(
      await send("GET", `${sim.url}/_sim/stats`),
    );
    assert.ok((stats.requests["/api/generate"] ?? 0) >= 1);
    assert.equal(
      Object.keys(stats.requests).some((p) => p.startsWith("/_sim")),
      false,
    );
    assert.ok(stats.tokensEmitted >= 4);
    const state = json<{ loaded: Array<{ name: string }> }>(await send("GET", `${sim.url}/_sim/state`));
    assert.ok(state.loaded.some((m) => m.name === "llama3.2:latest"));
    assert.deepEqual(json(await post(`${sim.url}/_sim/reset`, {})), {});
    assert.deepEqual(sim.stats.requests, {});
    assert.equal(sim.stats.tokensEmitted, 0);
    assert.ok(sim.loaded().length > 0, "reset keeps loaded models");
  });

  it("keeps in-flight gauges truthful across a reset", async () => {
    const slow = await startSimulator({ tokenMs: 20 });
    try {
      const running = post(`${slow.url}/api/generate`, {
        model: "llama3.2",
        prompt: "x",
        options: { num_predict: 10 },
      });
      assert.ok(await eventually(() => slow.stats.inFlight["llama3.2:latest"] === 1));
      slow.reset();
      assert.equal(slow.stats.inFlight["llama3.2:latest"], 1);
      assert.equal(slow.stats.maxInFlight["llama3.2:latest"], 1);
      await running;
      await delay(5);
      assert.equal(slow.stats.inFlight["llama3.2:latest"], 0);
    } finally {
      await slow.close();
    }
  });
});

describe("faults armed at start by flag, environment or option", () => {
  const chat = { model: "llama3.2", messages: [{ role: "user", content: "hi" }], options: { num_predict: 6 } };

  it("reads the compact form and JSON through the same validation as the admin API", () => {
    assert.deepEqual(parseFaultSpecs("busy,path=/api/chat,times=-1; error-mid-stream,afterTokens=3,message=boom"), [
      { kind: "busy", path: "/api/chat", times: Number.POSITIVE_INFINITY },
      { kind: "error-mid-stream", afterTokens: 3, message: "boom" },
    ]);
    assert.deepEqual(
      parseFaultSpecs(
        '[{"kind":"stall","ms":5,"model":"qwen3"},{"kind":"error-before-stream","status":502,"message":"a, b; c"}]',
      ),
      [
        { kind: "stall", ms: 5, model: "qwen3" },
        { kind: "error-before-stream", status: 502, message: "a, b; c" },
      ],
    );
    assert.deepEqual(parseFaultSpecs("error-before-stream,status=500,message=404"), [
      { kind: "error-before-stream", status: 500, message: "404" },
    ]);
    assert.throws(() => parseFaultSpecs("explode"), /unknown fault kind "explode"/);
    assert.throws(() => parseFaultSpecs("error-before-stream,status=999"), /status must be an HTTP status code/);
    assert.throws(() => parseFaultSpecs("stall,ms"), /must be name=value/);
    assert.throws(() => parseFaultSpecs("{nope"), /not valid JSON/);
  });

  it("parses repeatable --fault flags after SIM_FAULTS, names them in --help, and fails clearly on a bad one", () => {
    const { options } = parseCliArgs(["--fault", "busy,path=/api/chat", "--fault=drop-connection,afterTokens=2"], {
      SIM_FAULTS: '{"kind":"error-before-stream","status":500,"message":"from env"}',
    });
    assert.deepEqual(
      options.faults?.map((f) => f.kind),
      ["error-before-stream", "busy", "drop-connection"],
    );
    assert.match(CLI_USAGE, /--fault <spec>/);
    assert.match(CLI_USAGE, /SIM_FAULTS/);
    assert.throws(() => parseCliArgs(["--fault", "busy,times=0"], {}), /--fault: times must be an integer >= 1/);
    assert.throws(() => parseCliArgs([], { SIM_FAULTS: "nope" }), /SIM_FAULTS: unknown fault kind "nope"/);
  });

  it("fires faults parsed from the CLI once the simulator starts, then serves normally", async () => {
    const { options } = parseCliArgs(
      [
        "--port",
        "0",
        "--load-ms",
        "0",
        "--fault",
        "busy,path=/api/chat",
        "--fault",
        "error-mid-stream,path=/api/generate,afterTokens=2,message=boom",
      ],
      { SIM_FAULTS: "drop-connection,path=/api/tags" },
    );
    const sim = await startSimulator(options);
    try {
      assert.equal(sim.faults.list().length, 3);
      const busy = await post(`${sim.url}/api/chat`, chat);
      assert.equal(busy.status, 503);
      assert.equal(json(busy).error, SERVER_BUSY_MESSAGE);
      const cut = ndjson(
        await post(`${sim.url}/api/generate`, { model: "llama3.2", prompt: "hi", options: { num_predict: 6 } }),
      );
      assert.equal(cut.length, 3);
      assert.deepEqual(cut[2], { error: "boom" });
      await assert.rejects(send("GET", `${sim.url}/api/tags`), /other side closed|socket|ECONNRESET/i);
      assert.equal(sim.stats.faultsTriggered, 3);
      assert.equal((await post(`${sim.url}/api/chat`, chat)).status, 200, "each fault fired once");
    } finally {
      await sim.close();
    }
  });

  it("arms faults given to `npm run sim` by flag and by SIM_FAULTS", async () => {
    const sim = await startSimulatorProcess(
      ["--port", "0", "--load-ms", "0", "--fault", "error-before-stream,status=502,message=flagged,path=/api/show"],
      { SIM_FAULTS: "busy,path=/api/chat,times=-1" },
      10_000,
    );
    try {
      const url = sim.url;
      const output = sim.output();
      assert.ok(url, `printed a URL: ${output}`);
      assert.match(output, /faults armed: busy, error-before-stream/);
      for (let i = 0; i < 2; i++)
        assert.equal((await post(`${url}/api/chat`, chat)).status, 503, "times=-1 keeps firing");
      const show = await post(`${url}/api/show`, { model: "llama3.2" });
      assert.equal(show.status, 502);
      assert.deepEqual(json(show), { error: "flagged" });
      assert.equal((await post(`${url}/api/show`, { model: "llama3.2" })).status, 200);
      assert.equal(await sim.stop(), 0);
    } finally {
      sim.kill();
    }
  });
});
