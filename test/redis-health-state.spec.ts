import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { createHealthTracker, logHealthChanges, nextHealth } from "../src/redis/health-state.js";
import type { HealthChange, HealthState } from "../src/redis/health-state.js";
import { captureLogs } from "./helpers/log-capture.js";

describe("the health state machine of a Redis user", () => {
  it("moves between starting, up and down as the table says, reporting only changes", () => {
    const table: [HealthState, boolean, boolean, HealthState, HealthChange | undefined][] = [
      // state, usable, failure → state, change
      ["starting", true, false, "up", "up"],
      ["starting", true, true, "up", "up"],
      ["starting", false, false, "starting", undefined], // still connecting: no outage yet
      ["starting", false, true, "down", "down"],
      ["up", true, false, "up", undefined],
      ["up", true, true, "up", undefined],
      ["up", false, false, "down", "down"],
      ["up", false, true, "down", "down"],
      ["down", true, false, "up", "up-again"],
      ["down", true, true, "up", "up-again"],
      ["down", false, false, "down", undefined],
      ["down", false, true, "down", undefined], // another failed reconnect: nothing new
    ];
    for (const [state, usable, failure, next, change] of table) {
      assert.deepEqual(
        nextHealth(state, usable, failure),
        change === undefined ? { state: next } : { state: next, change },
        `${state}, usable=${usable}, failure=${failure}`,
      );
    }
  });

  it("reports one change per outage however many failures it sees, and nothing after stop", () => {
    const changes: string[] = [];
    const t = createHealthTracker((change, reason) => changes.push(`${change}${reason ? `: ${reason}` : ""}`));
    t.update(false, false);
    assert.equal(t.state(), "starting");
    t.update(true, false);
    for (let i = 0; i < 5; i++) t.update(false, true, `refused ${i}`);
    assert.equal(t.up(), false);
    t.update(true, false);
    t.update(true, false);
    t.stop();
    t.update(false, true, "after stop");
    assert.deepEqual(changes, ["up", "down: refused 0", "up-again"]);
  });

  it("logs each change with the user's own line and the masked URL", () => {
    const logs = captureLogs();
    const report = logHealthChanges(logs.log, "redis://:***@h:1", { up: "on", upAgain: "on again", down: "off" });
    report("up", undefined);
    report("down", "ECONNREFUSED");
    report("up-again", undefined);
    assert.deepEqual(
      logs.lines.map((l) => [l["level"], l["msg"], l["redis"], l["err"]]),
      [
        ["info", "on", "redis://:***@h:1", undefined],
        ["warn", "off", "redis://:***@h:1", "ECONNREFUSED"],
        ["info", "on again", "redis://:***@h:1", undefined],
      ],
    );
  });

  it("logs a relapse within 30 s of a warning at info, and the next outage after that at warn again", () => {
    const logs = captureLogs();
    let now = 0;
    const report = logHealthChanges(logs.log, "redis://h:1", { up: "on", upAgain: "on again", down: "off" }, () => now);
    report("down", "ECONNREFUSED");
    now = 2_000;
    report("up-again", undefined);
    now = 2_500;
    report("down", "command timed out"); // flapping while Redis restarts: the same incident
    now = 40_000;
    report("up-again", undefined);
    now = 45_000;
    report("down", "ECONNREFUSED"); // a new outage
    assert.deepEqual(
      logs.lines.map((l) => [l["level"], l["msg"]]),
      [
        ["warn", "off"],
        ["info", "on again"],
        ["info", "off (again)"],
        ["info", "on again"],
        ["warn", "off"],
      ],
    );
  });
});
