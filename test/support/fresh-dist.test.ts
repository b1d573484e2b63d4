import { mkdirSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { tempDir } from "./bundle-fixture.js";
import { staleOutputs } from "./fresh-dist.js";

describe("the tests' dist/ freshness check", () => {
  it("names sources whose compiled file is missing or older, and ignores tests", () => {
    const root = tempDir();
    mkdirSync(join(root, "core/runtime"), { recursive: true });
    mkdirSync(join(root, "dist/core/runtime"), { recursive: true });
    const write = (path: string, at: number) => {
      writeFileSync(join(root, path), "");
      utimesSync(join(root, path), at, at);
    };
    write("core/runtime/stage-worker.ts", 2000);
    write("dist/core/runtime/stage-worker.js", 1000);
    write("core/exit.ts", 1000);
    write("dist/core/exit.js", 2000);
    write("core/new.ts", 1000);
    write("core/exit.test.ts", 3000);
    expect(staleOutputs(root, ["core"]).sort()).toEqual([
      "core/new.ts",
      "core/runtime/stage-worker.ts",
    ]);
    write("dist/core/runtime/stage-worker.js", 3000);
    write("dist/core/new.js", 3000);
    expect(staleOutputs(root, ["core"])).toEqual([]);
  });
});
