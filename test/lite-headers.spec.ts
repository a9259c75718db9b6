import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { LiteHeaders } from "../src/transport/lite-headers.js";

type Op = readonly ["append" | "set", string, string] | readonly ["delete", string];

/** Runs the same operations on a web-standard Headers and a LiteHeaders; both must agree. */
function both(ops: readonly Op[]): { web: Headers; lite: LiteHeaders } {
  const web = new Headers();
  const lite = new LiteHeaders();
  for (const op of ops) {
    if (op[0] === "delete") {
      web.delete(op[1]);
      lite.delete(op[1]);
    } else {
      web[op[0]](op[1], op[2]);
      lite[op[0]](op[1], op[2]);
    }
  }
  return { web, lite };
}

describe("LiteHeaders, the fast path's Headers", () => {
  const cases: { name: string; ops: Op[] }[] = [
    { name: "set then get, names case-insensitive", ops: [["set", "X-Request-Id", "abc"]] },
    {
      name: "set replaces",
      ops: [
        ["set", "x-a", "1"],
        ["set", "X-A", "2"],
      ],
    },
    {
      name: "append joins with a comma",
      ops: [
        ["append", "x-a", "1"],
        ["append", "x-a", "2"],
      ],
    },
    { name: "values are trimmed", ops: [["set", "x-a", "  spaced\t"]] },
    {
      name: "a value trimmed at one end only",
      ops: [
        ["set", "x-a", "\r\nlead"],
        ["append", "x-b", "trail\n"],
      ],
    },
    { name: "a value of whitespace only becomes empty", ops: [["set", "x-a", " \t "]] },
    {
      name: "inner spaces stay",
      ops: [
        ["set", "x-a", "a b\tc"],
        ["set", "x-b", ""],
      ],
    },
    {
      name: "delete removes",
      ops: [
        ["set", "x-a", "1"],
        ["set", "x-b", "2"],
        ["delete", "X-A"],
      ],
    },
    {
      name: "iteration is sorted by name",
      ops: [
        ["set", "zz", "1"],
        ["set", "aa", "2"],
        ["set", "mm", "3"],
      ],
    },
  ];
  for (const c of cases) {
    it(`behaves as Headers: ${c.name}`, () => {
      const { web, lite } = both(c.ops);
      assert.deepEqual([...lite], [...web]);
      for (const [k] of web) {
        assert.equal(lite.get(k.toUpperCase()), web.get(k));
        assert.equal(lite.has(k), true);
      }
      assert.equal(lite.get("absent"), null);
      assert.equal(lite.has("absent"), false);
      const seen: string[] = [];
      lite.forEach((v, k) => {
        seen.push(`${k}=${v}`);
      });
      assert.deepEqual(
        seen,
        [...web].map(([k, v]) => `${k}=${v}`),
      );
    });
  }

  it("refuses what Headers refuses: a name that is not a token, a value with CR, LF or NUL", () => {
    for (const bad of [
      () => new LiteHeaders().set("bad name", "v"),
      () => new LiteHeaders().set("", "v"),
      () => new LiteHeaders().set("x-a", "line\r\nbreak"),
      () => new LiteHeaders().append("x-a", "nul\0"),
      () => new LiteHeaders().set("x-a", "inner\rreturn"),
      () => new LiteHeaders().set("x-a", " spaced\nand broken "),
      () => new LiteHeaders().set("x-a", "\0"),
    ]) {
      assert.throws(bad, TypeError);
    }
  });

  it("copies node:http2's request headers without the pseudo-headers", () => {
    const h = new LiteHeaders({
      ":path": "/x",
      ":method": "POST",
      "x-request-id": "r1",
      "x-many": ["a", "b"],
    });
    assert.throws(() => h.get(":path"), TypeError, "a pseudo-header is not a header name, as for Headers");
    assert.equal(h.get("X-Request-Id"), "r1");
    assert.equal(h.get("x-many"), "a, b");
    assert.deepEqual([...h.keys()], ["x-many", "x-request-id"]);
  });

  it("hands node:http2 its entries as a plain object", () => {
    const h = new LiteHeaders();
    h.set("X-Served-Model", "llama3.2");
    h.set("x-request-id", "r1");
    assert.deepEqual({ ...h.outgoing() }, { "x-served-model": "llama3.2", "x-request-id": "r1" });
  });
});
