import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { BundleError } from "../core/bundle/manifest.js";
import { ConfigError } from "../core/config.js";
import { tempDir } from "../test/support/bundle-fixture.js";
import { ddnn } from "../test/support/run.js";
import { UsageError } from "./args.js";
import { describeFailure } from "./failure.js";

describe("how ddnn reports a failed command", () => {
  it("prints the user's mistakes as one line with exit code 2", () => {
    for (const err of [
      new UsageError("--limit: must be at least 1"),
      new ConfigError('--stages: the bundle has no stage "x"'),
      new BundleError("b/ddnn.json", "labels", "needs at least two labels"),
    ]) {
      const f = describeFailure(err);
      expect(f.code).toBe(2);
      expect(f.text).toBe(`ddnn: ${err.message}\n`);
    }
  });

  it("prints a bug with its stack and exit code 1, even a RangeError", () => {
    const bug = new RangeError("Invalid array length");
    const f = describeFailure(bug);
    expect(f.code).toBe(1);
    expect(f.text).toContain("RangeError: Invalid array length\n    at ");
    expect(describeFailure("thrown string")).toEqual({ code: 1, text: "ddnn: thrown string\n" });
  });

  it("names an unreadable or malformed data file in one line", async () => {
    const bad = join(tempDir(), "bad.idx");
    writeFileSync(bad, "not idx");
    const missing = await ddnn([
      "eval",
      "--bundle",
      "models/fashion-deep",
      "--images",
      "/nonexistent.idx",
      "--labels",
      bad,
    ]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toBe("ddnn: /nonexistent.idx: cannot read the idx file (ENOENT)\n");
    const malformed = await ddnn([
      "eval",
      "--bundle",
      "models/fashion-deep",
      "--images",
      bad,
      "--labels",
      bad,
    ]);
    expect(malformed.code).toBe(2);
    expect(malformed.stderr).toBe(`ddnn: ${bad}: not an idx file (bad magic number)\n`);
  });

  it("never prints the credentials of a bundle URL, neither in the configuration nor in the error", async () => {
    for (const tier of ["server", "agent"]) {
      const r = await ddnn([
        tier,
        "--bundle",
        "http://alice:s3cret@127.0.0.1:1/b.tar.gz",
        "--http-port",
        "0",
      ]);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain('"bundle":"http://***@127.0.0.1:1/b.tar.gz"');
      expect(r.stderr).toMatch(/^ddnn: http:\/\/\*\*\*@127\.0\.0\.1:1\/b\.tar\.gz: /m);
      expect(r.stderr).not.toMatch(/alice|s3cret/);
    }
  });
});
