/**
 * Program configuration: one zod schema per program, filled from (highest first) flags,
 * environment (DDNN_<FIELD>), a YAML/JSON file (--config / DDNN_CONFIG), then defaults.
 * A bad value stops the program with one line naming the field and where it came from.
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { parse as parseYaml } from "yaml";
import { z } from "zod";

export class ConfigError extends Error {
  override name = "ConfigError";
}

export interface FieldSpec {
  readonly type: "string" | "boolean";
  readonly multiple?: boolean;
  /** Never printed; only from the environment or the file. */
  readonly secret?: boolean;
  readonly short?: string;
  /** Environment variable name when it is not DDNN_<FIELD_IN_SNAKE_CASE>. */
  readonly env?: string;
  readonly help: string;
}

export type FieldTable = Record<string, FieldSpec>;

const kebab = (key: string) => key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
const envName = (key: string, spec?: FieldSpec) =>
  spec?.env ?? `DDNN_${key.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()}`;

/** Fills and validates `schema` from argv, env and an optional config file. */
export function loadConfig<S extends z.ZodObject>(
  schema: S,
  fields: FieldTable,
  argv: readonly string[],
  env: NodeJS.ProcessEnv = process.env,
): z.infer<S> {
  const options: Record<
    string,
    { type: "string" | "boolean"; multiple?: boolean; short?: string }
  > = {
    config: { type: "string" },
  };
  for (const [key, spec] of Object.entries(fields)) {
    if (spec.secret) continue;
    options[kebab(key)] = {
      type: spec.type,
      ...(spec.multiple ? { multiple: true } : {}),
      ...(spec.short ? { short: spec.short } : {}),
    };
  }
  let flags: Record<string, unknown>;
  try {
    flags = parseArgs({ args: [...argv], options, strict: true, allowPositionals: false }).values;
  } catch (err) {
    throw new ConfigError((err as Error).message);
  }
  const file = (flags.config as string | undefined) ?? env.DDNN_CONFIG;
  let fromFile: Record<string, unknown> = {};
  if (file) {
    try {
      const parsed = parseYaml(readFileSync(file, "utf8")) as unknown;
      if (
        parsed !== null &&
        parsed !== undefined &&
        (typeof parsed !== "object" || Array.isArray(parsed))
      ) {
        throw new Error("must hold a mapping of field: value");
      }
      fromFile = (parsed ?? {}) as Record<string, unknown>;
    } catch (err) {
      throw new ConfigError(`config file ${file}: ${(err as Error).message.split("\n")[0]}`);
    }
    for (const key of Object.keys(fromFile)) {
      if (!(key in fields)) throw new ConfigError(`config file ${file}: unknown field "${key}"`);
    }
  }
  const merged: Record<string, unknown> = {};
  const source: Record<string, string> = {};
  for (const [key, spec] of Object.entries(fields)) {
    const flag = flags[kebab(key)];
    const fromEnv = env[envName(key, spec)];
    if (flag !== undefined && !spec.secret) {
      merged[key] = flag;
      source[key] = `--${kebab(key)}`;
    } else if (fromEnv !== undefined && fromEnv !== "") {
      merged[key] = spec.multiple
        ? fromEnv
            .split(",")
            .map((s) => s.trim())
            .filter(Boolean)
        : fromEnv;
      source[key] = envName(key, spec);
    } else if (key in fromFile) {
      merged[key] = fromFile[key];
      source[key] = `${file}: ${key}`;
    }
  }
  const parsed = schema.safeParse(merged);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const key = String(issue.path[0] ?? "");
    const where =
      source[key] ?? (key ? `--${kebab(key)} / ${envName(key, fields[key])}` : "configuration");
    throw new ConfigError(`${where}: ${issue.message}`);
  }
  return parsed.data;
}

/** Help text for a field table. */
export function fieldHelp(fields: FieldTable): string {
  return Object.entries(fields)
    .map(([key, spec]) => {
      const flag = spec.secret
        ? `(env ${envName(key, spec)} only)`
        : `--${kebab(key)}${spec.type === "string" ? " VALUE" : ""}`;
      return `  ${flag.padEnd(30)} ${spec.help}${spec.secret ? "" : ` [env ${envName(key, spec)}]`}`;
    })
    .join("\n");
}

/** The configuration as it may be printed: secret fields replaced. */
export function printable(
  config: Record<string, unknown>,
  fields: FieldTable,
): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(config)) {
    out[key] = fields[key]?.secret && value !== undefined ? "***" : value;
  }
  return out;
}

// Reusable field types ------------------------------------------------------------------------

export const intField = (min: number, max: number) =>
  z.coerce
    .number()
    .int("must be a whole number")
    .min(min, `must be at least ${min}`)
    .max(max, `must be at most ${max}`);

export const boolField = z.union([z.boolean(), z.stringbool()]);

/** `stage=value` pairs (flags, comma-separated env) or a mapping (file), each value in [0, 1]. */
export const thresholdsField = z
  .union([z.array(z.string()), z.record(z.string(), z.union([z.number(), z.string()]))])
  .transform((raw, ctx) => {
    const pairs: [string, unknown][] = Array.isArray(raw)
      ? raw.map((p) => {
          const i = p.indexOf("=");
          return i > 0 ? [p.slice(0, i), p.slice(i + 1)] : [p, Number.NaN];
        })
      : Object.entries(raw);
    const out: Record<string, number> = {};
    for (const [stage, v] of pairs) {
      const value = Number(v);
      if (!Number.isFinite(value) || value < 0 || value > 1) {
        ctx.addIssue({
          code: "custom",
          message: `"${stage}=${String(v)}": expected stage=value with value between 0 and 1`,
        });
        return z.NEVER;
      }
      out[stage] = value;
    }
    return out;
  });

export const brokerUrlField = z.string().refine((u) => {
  try {
    return ["mqtt:", "mqtts:", "tcp:"].includes(new URL(u).protocol);
  } catch {
    return false;
  }
}, "must be a broker URL like mqtt://host:1883 or mqtts://host:8883");
