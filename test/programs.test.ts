/** Nothing a test, benchmark or script runs may be missing from scripts/programs.txt (which setup.sh installs). */
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { describe, expect, it } from "vitest";
import { programTable, requireProgram } from "./support/programs.js";
import { root } from "./support/run.js";

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    if (e.isDirectory()) return e.name === "node_modules" ? [] : sources(path);
    return /\.(ts|py|sh)$/.test(e.name) ? [path] : [];
  });
}

/** Programs started by name: spawn("x", execFile("x", execFileSync("x", and the first word of stdbuf/timeout wrappers. */
function spawnedPrograms(text: string): string[] {
  const names = new Set<string>();
  for (const m of text.matchAll(
    /\b(?:spawn|spawnSync|execFile|execFileSync|exec)\(\s*"([\w./-]+)"/g,
  ))
    names.add(m[1]!);
  // A wrapper's program: spawn("stdbuf", ["-o0", "mosquitto_sub", ...]).
  for (const m of text.matchAll(/"(?:-o0|-oL|-eL)",\s*"([\w./-]+)"/g)) names.add(m[1]!);
  return [...names];
}

describe("the programs the tests run", () => {
  const table = programTable();

  it("are all listed in scripts/programs.txt with their Debian package", () => {
    const unlisted: string[] = [];
    for (const dir of ["test", "bench", "scripts", "cli", "trainer"]) {
      for (const file of sources(join(root, dir)).filter((f) => !f.endsWith("programs.test.ts"))) {
        for (const program of spawnedPrograms(readFileSync(file, "utf8")))
          if (!table.has(program) && program !== "sh")
            unlisted.push(`${relative(root, file)}: ${program}`);
      }
    }
    expect(unlisted).toEqual([]);
    // The one that was missing on a new machine.
    expect(table.get("mosquitto_sub")).toBe("mosquitto-clients");
  });

  it("are installed (scripts/setup.sh installs every listed package)", () => {
    for (const program of table.keys()) expect(requireProgram(program)).toMatch(/\//);
  });

  it("name the package when one is missing", () => {
    expect(() => requireProgram("not-a-listed-program")).toThrow(/not in scripts\/programs.txt/);
  });
});
