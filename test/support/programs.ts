/**
 * The external programs the tests run, from scripts/programs.txt (the table scripts/setup.sh
 * installs from): a test asks for one up front, so a missing program fails at once, naming the
 * Debian package, instead of timing out while it waits for the program's output.
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { root } from "./run.js";

/** program -> Debian package, as scripts/programs.txt lists them. */
export function programTable(): Map<string, string> {
  const rows = readFileSync(join(root, "scripts", "programs.txt"), "utf8")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"))
    .map((l) => l.split(/\s+/) as [string, string]);
  return new Map(rows);
}

/** The program's path; throws naming the package when it is not installed. */
export function requireProgram(name: string): string {
  const pkg = programTable().get(name);
  if (!pkg)
    throw new Error(`${name} is not in scripts/programs.txt: add it with its Debian package`);
  try {
    return execFileSync(
      "sh",
      ["-c", `command -v "$0" || { test -x "/usr/sbin/$0" && echo "/usr/sbin/$0"; }`, name],
      {
        encoding: "utf8",
      },
    ).trim();
  } catch {
    throw new Error(
      `${name} is not installed: Debian package ${pkg} (bash scripts/setup.sh installs it)`,
    );
  }
}
