import { type ParseArgsConfig, parseArgs } from "node:util";
import type { z } from "zod";
import { fieldPath } from "../core/bundle/manifest.js";

/** A bad command line: printed as one line, exit code 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** Parses flags with node:util and validates them with a zod schema; errors name the flag. */
export function parseFlags<S extends z.ZodType>(
  argv: readonly string[],
  options: NonNullable<ParseArgsConfig["options"]>,
  schema: S,
): z.infer<S> {
  let values: Record<string, unknown>;
  try {
    values = parseArgs({ args: [...argv], options, strict: true, allowPositionals: false }).values;
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const parsed = schema.safeParse(values);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const flag = fieldPath(issue.path).replace(
      /^(\w+)/,
      (m) => `--${m.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`,
    );
    throw new UsageError(`${flag}: ${issue.message}`);
  }
  return parsed.data;
}

/** `stage=value` pairs from repeated --threshold flags. */
export function parseThresholds(pairs: readonly string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const pair of pairs) {
    const m = /^([^=]+)=(.+)$/.exec(pair);
    const value = m ? Number(m[2]) : Number.NaN;
    if (!m || !Number.isFinite(value) || value < 0 || value > 1) {
      throw new UsageError(`--threshold ${pair}: expected stage=value with value between 0 and 1`);
    }
    out[m[1]!] = value;
  }
  return out;
}
