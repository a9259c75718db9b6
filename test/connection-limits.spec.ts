import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { addressKey, createThrottledReport, refusalFor } from "../src/transport/connection-limits.js";

describe("which connections the gateway refuses at accept", () => {
  const limits = { maxConnections: 10, maxConnectionsPerIp: 3 };
  const cases = [
    { open: 0, fromAddress: 0, expect: undefined },
    { open: 9, fromAddress: 2, expect: undefined },
    { open: 10, fromAddress: 0, expect: "max-connections" },
    { open: 5, fromAddress: 3, expect: "max-connections-per-ip" },
    { open: 10, fromAddress: 3, expect: "max-connections" },
  ] as const;
  for (const c of cases) {
    it(`${c.open} open, ${c.fromAddress} from the address: ${c.expect ?? "accepted"}`, () => {
      assert.equal(refusalFor(c.open, c.fromAddress, limits), c.expect);
    });
  }

  it("has no per-address limit when it is 0", () => {
    assert.equal(refusalFor(5, 1_000, { maxConnections: 10, maxConnectionsPerIp: 0 }), undefined);
  });

  it("counts an IPv4 client seen through an IPv6 socket as its IPv4 address", () => {
    assert.equal(addressKey("::ffff:10.1.2.3"), "10.1.2.3");
    assert.equal(addressKey("10.1.2.3"), "10.1.2.3");
    assert.equal(addressKey("2001:db8::1"), "2001:db8::1");
    assert.equal(addressKey("::ffff:abcd"), "::ffff:abcd");
    assert.equal(addressKey(undefined), "");
  });
});

describe("a throttled report", () => {
  it("reports the first event at once and the ones within the interval together when it is over", async () => {
    let now = 1_000;
    const reports: number[] = [];
    let reported: (() => void) | undefined;
    const report = createThrottledReport(
      50,
      (n) => {
        reports.push(n);
        reported?.();
      },
      () => now,
    );
    report.add();
    assert.deepEqual(reports, [1]);
    const later = new Promise<void>((r) => (reported = r));
    now += 10;
    for (let i = 0; i < 99; i++) report.add();
    assert.deepEqual(reports, [1], "nothing more within the interval");
    now += 40;
    // The report's timer is unref'd (it must not keep a gateway alive): hold the loop open meanwhile.
    const hold = setTimeout(() => undefined, 10_000);
    await later;
    clearTimeout(hold);
    assert.deepEqual(reports, [1, 99]);
    now += 1_000;
    report.add();
    assert.deepEqual(reports, [1, 99, 1], "at once again after a quiet interval");
  });

  it("reports what is pending on flush, and nothing when nothing is", () => {
    let now = 0;
    const reports: number[] = [];
    const report = createThrottledReport(
      10_000,
      (n) => reports.push(n),
      () => now,
    );
    report.add();
    now = 1;
    report.add();
    report.add();
    report.flush();
    report.flush();
    assert.deepEqual(reports, [1, 2]);
  });
});
