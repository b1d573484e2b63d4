/**
 * Program configuration. Each field is declared once (`field`): its zod type and default, its help,
 * its environment name, whether it is secret. A program (`program`) is a set of fields, and
 * everything a user or the operator sees of a field is derived from that one declaration: the flag
 * (`--max-batch` for `maxBatch`), the environment variable (`DDNN_MAX_BATCH` unless the field names
 * another), the key in a `--config` file (`maxBatch`), its line in `--help` with the default, and
 * the variable the operator writes into a Pod (`Program.env`).
 *
 * Values come from (highest first) flags, the environment, a YAML/JSON file (`--config FILE` or
 * `DDNN_CONFIG`), then the defaults. A bad value stops the program with one line naming the field
 * and where the value came from.
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import { compressions, dtypes } from "./wire/frame.js";

export class ConfigError extends Error {
  override name = "ConfigError";
}

export interface FieldOptions {
  readonly help: string;
  /**
   * Environment variable(s), the first set one wins: the field's own name first, then names it was
   * read under before. Default `DDNN_<FIELD_IN_SNAKE_CASE>`.
   */
  readonly env?: string | readonly string[];
  /** Never printed, and no flag: only from the environment or the file. */
  readonly secret?: boolean;
  /** A repeatable flag; comma-separated in the environment, a list in the file. */
  readonly multiple?: boolean;
  /** A flag without a value (`--json`); the environment and the file say true or false. */
  readonly switch?: boolean;
  readonly short?: string;
  /** What `--help` shows as the flag's value (PATH, N, URL); default VALUE. */
  readonly value?: string;
  /** The default as `--help` says it, where the schema has none or computes it when it runs. */
  readonly defaultText?: string;
  /**
   * The program's one positional argument (`ddnn bundle pack DIR`) rather than a flag; the
   * environment and the file may still set it. `value` names it in the usage and help.
   */
  readonly positional?: boolean;
}

/** One configuration field. */
export class Field<T extends z.ZodType = z.ZodType> {
  constructor(
    readonly schema: T,
    readonly options: FieldOptions,
  ) {}

  /** The same field with other options (help, default text) or another type: for a program that uses it in its own way. */
  with(over: Partial<FieldOptions>): Field<T>;
  with<U extends z.ZodType>(over: Partial<FieldOptions> & { schema: U }): Field<U>;
  with(over: Partial<FieldOptions> & { schema?: z.ZodType }): Field {
    const { schema, ...options } = over;
    return new Field(schema ?? this.schema, { ...this.options, ...options });
  }

  /** The same field with another default. */
  withDefault(value: NonNullable<z.output<T>>, help?: string): Field<z.ZodDefault<T>> {
    return new Field(this.schema.default(value as never) as z.ZodDefault<T>, {
      ...this.options,
      ...(help === undefined ? {} : { help }),
    });
  }
}

export function field<T extends z.ZodType>(schema: T, options: FieldOptions): Field<T> {
  return new Field(schema, options);
}

export type Fields = Record<string, Field>;
type Shape<F extends Fields> = { -readonly [K in keyof F]: F[K]["schema"] };

/** A program's configuration: its fields and what is derived from them. */
export interface Program<F extends Fields = Fields> {
  readonly fields: F;
  /** Validates and fills in defaults; what the program runs with is `z.output` of it. */
  readonly schema: z.ZodObject<Shape<F>>;
  /** Each field's environment variable, as the operator writes it into a Pod. */
  readonly env: { readonly [K in keyof F]: string };
  /** Every environment variable the program reads (aliases and DDNN_CONFIG included). */
  readonly envNames: ReadonlySet<string>;
}

export type ConfigOf<P extends Program> = z.output<P["schema"]>;

/** The variable naming the configuration file. */
export const CONFIG_ENV = "DDNN_CONFIG";

const kebab = (key: string) => key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

function envList(key: string, f: Field): readonly string[] {
  const env = f.options.env;
  if (env === undefined) return [`DDNN_${key.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()}`];
  return typeof env === "string" ? [env] : env;
}

/**
 * A program from its fields. `check` adds rules that span fields (`schema.refine(...)`, with the
 * issue's path naming the field to blame).
 */
export function program<const F extends Fields>(
  fields: F,
  check?: (schema: z.ZodObject<Shape<F>>) => z.ZodObject<Shape<F>>,
): Program<F> {
  const shape = Object.fromEntries(Object.entries(fields).map(([k, f]) => [k, f.schema]));
  const schema = z.object(shape) as unknown as z.ZodObject<Shape<F>>;
  const env = Object.fromEntries(Object.entries(fields).map(([k, f]) => [k, envList(k, f)[0]]));
  const all = [CONFIG_ENV, ...Object.entries(fields).flatMap(([k, f]) => envList(k, f))];
  const envNames = new Set(all);
  // Two fields under one name would each get the other's value: a mistake in the declaration.
  if (envNames.size !== all.length)
    throw new Error(`environment names used twice: ${all.filter((n, i) => all.indexOf(n) !== i)}`);
  return {
    fields,
    schema: check ? check(schema) : schema,
    env: env as Program<F>["env"],
    envNames,
  };
}

/** How a field is named to a user: its flag and environment variable. */
export function fieldName(key: string, f: Field | undefined): string {
  if (!f) return key;
  const env = envList(key, f).join(" / ");
  if (f.options.positional) return `${f.options.value ?? key} / ${env}`;
  return f.options.secret ? env : `--${kebab(key)} / ${env}`;
}

/** True when argv asks for help (`--help`, `-h`) rather than for a run. */
export function wantsHelp(argv: readonly string[]): boolean {
  return argv.includes("--help") || argv.includes("-h");
}

/** Fills and validates a program's configuration from argv, the environment and a config file. */
export function loadConfig<P extends Program>(
  p: P,
  argv: readonly string[],
  env: NodeJS.ProcessEnv = process.env,
): ConfigOf<P> {
  const options: Record<
    string,
    { type: "string" | "boolean"; multiple?: boolean; short?: string }
  > = { config: { type: "string" } };
  const positional = Object.entries(p.fields).find(([, f]) => f.options.positional);
  for (const [key, f] of Object.entries(p.fields)) {
    if (f.options.secret || f.options.positional) continue;
    options[kebab(key)] = {
      type: f.options.switch ? "boolean" : "string",
      ...(f.options.multiple ? { multiple: true } : {}),
      ...(f.options.short ? { short: f.options.short } : {}),
    };
  }
  let flags: Record<string, unknown>;
  let positionals: string[];
  try {
    ({ values: flags, positionals } = parseArgs({
      args: [...argv],
      options,
      strict: true,
      allowPositionals: positional !== undefined,
    }));
  } catch (err) {
    throw new ConfigError((err as Error).message);
  }
  if (positionals.length > 1) {
    const name = positional![1].options.value ?? positional![0];
    throw new ConfigError(
      `one ${name}, not ${positionals.length} (${positionals.map((a) => JSON.stringify(a)).join(" ")})`,
    );
  }
  const file = (flags.config as string | undefined) ?? (env[CONFIG_ENV] || undefined);
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
      if (!(key in p.fields)) throw new ConfigError(`config file ${file}: unknown field "${key}"`);
    }
  }
  const merged: Record<string, unknown> = {};
  const source: Record<string, { where: string; list: boolean }> = {};
  for (const [key, f] of Object.entries(p.fields)) {
    const flag = f.options.secret
      ? undefined
      : f.options.positional
        ? positionals[0]
        : flags[kebab(key)];
    const named = envList(key, f).find((n) => env[n] !== undefined && env[n] !== "");
    if (flag !== undefined) {
      merged[key] = flag;
      source[key] = {
        where: f.options.positional ? (f.options.value ?? key) : `--${kebab(key)}`,
        list: true,
      };
    } else if (named !== undefined) {
      const value = env[named]!;
      merged[key] = f.options.multiple
        ? value
            .split(",")
            .map((s) => s.trim())
            .filter(Boolean)
        : value;
      source[key] = { where: named, list: true };
    } else if (key in fromFile) {
      merged[key] = fromFile[key];
      source[key] = { where: `${file}: ${key}`, list: false };
    }
  }
  const parsed = p.schema.safeParse(merged);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const key = String(issue.path[0] ?? "");
    const from = source[key];
    let where = from?.where ?? (key ? fieldName(key, p.fields[key]) : "configuration");
    const rest = issue.path.slice(1);
    const raw = merged[key];
    // One item of a list names itself (`--threshold device=2`); a nested key is a path.
    if (from?.list && Array.isArray(raw) && typeof rest[0] === "number" && rest.length === 1)
      where = `${where} ${String(raw[rest[0]])}`;
    else if (rest.length > 0) where = `${where}.${rest.map(String).join(".")}`;
    throw new ConfigError(`${where}: ${issue.message}`);
  }
  return parsed.data as ConfigOf<P>;
}

// Help ------------------------------------------------------------------------------------------

const WIDTH = 100;
const FLAG_COLUMN = 28;

function wrap(text: string, indent: number, first: number): string[] {
  const lines: string[] = [];
  let line = "";
  let room = WIDTH - first;
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (line !== "" && line.length + 1 + word.length > room) {
      lines.push(line);
      line = word;
      room = WIDTH - indent;
    } else line = line === "" ? word : `${line} ${word}`;
  }
  if (line !== "") lines.push(line);
  return lines;
}

/** The default as help says it: from the declaration, else from the schema; undefined if none. */
function defaultOf(f: Field): { text?: string; required: boolean } {
  if (f.options.defaultText !== undefined) return { text: f.options.defaultText, required: false };
  const r = f.schema.safeParse(undefined);
  if (!r.success) return { required: true };
  const v = r.data;
  if (v === undefined) return { required: false };
  if (Array.isArray(v))
    return v.length === 0 ? { required: false } : { text: v.join(","), required: false };
  if (typeof v === "object" && v !== null)
    return Object.keys(v).length === 0
      ? { required: false }
      : { text: JSON.stringify(v), required: false };
  return { text: String(v), required: false };
}

/** One line (wrapped) per field: flag, help, environment variable(s), default. */
export function fieldHelp(p: Program): string {
  return Object.entries(p.fields)
    .map(([key, f]) => {
      const o = f.options;
      const names = envList(key, f);
      const flag = o.positional
        ? (o.value ?? key)
        : o.secret
          ? `(env ${names.join(" / ")} only)`
          : `--${kebab(key)}${o.short ? `, -${o.short}` : ""}${o.switch ? "" : ` ${o.value ?? "VALUE"}`}`;
      const d = defaultOf(f);
      const also = names.length > 1 ? `, then ${names.slice(1).join(", then ")}` : "";
      const env = o.secret ? "" : ` (${names[0]}${o.multiple ? ", comma-separated" : ""}${also})`;
      const repeat = o.multiple ? "; repeatable" : "";
      const tail = d.required ? "; required" : d.text !== undefined ? `; default ${d.text}` : "";
      const text = `${o.help}${env}${repeat}${tail}`;
      const head = `  ${flag}`;
      const body = wrap(text, FLAG_COLUMN, FLAG_COLUMN);
      const pad = " ".repeat(FLAG_COLUMN);
      // A flag too wide for its column gets the text on the lines below it.
      if (head.length + 1 > FLAG_COLUMN) return [head, ...body.map((l) => pad + l)].join("\n");
      return [
        head.padEnd(FLAG_COLUMN) + (body[0] ?? ""),
        ...body.slice(1).map((l) => pad + l),
      ].join("\n");
    })
    .join("\n");
}

/** The whole --help of a program. */
export function programHelp(
  p: Program,
  text: { title: string; usage: string; after?: string },
): string {
  const sources = wrap(
    `Each flag can also be set by the environment variable named in parentheses, or as a key of a YAML/JSON file given with --config FILE (or ${CONFIG_ENV}): the flag's name in camelCase (--max-batch: maxBatch). Flags win over the environment, the environment over the file.`,
    0,
    0,
  ).join("\n");
  return [
    text.title,
    "",
    `Usage: ${text.usage}`,
    "",
    sources,
    "",
    fieldHelp(p),
    ...(text.after ? ["", text.after] : []),
    "",
  ].join("\n");
}

/** The configuration as it may be printed: secret fields replaced. */
export function printable(p: Program, config: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(config)) {
    out[key] = p.fields[key]?.options.secret && value !== undefined ? "***" : value;
  }
  return out;
}

// Reusable field types --------------------------------------------------------------------------

export const intField = (min: number, max: number) =>
  z.coerce
    .number()
    .int("must be a whole number")
    .min(min, `must be at least ${min}`)
    .max(max, `must be at most ${max}`);

export const boolField = z.union([z.boolean(), z.stringbool()], {
  error: "must be true or false",
});

/** Milliseconds, fractions allowed. */
export const msField = (min: number, max: number) =>
  z.coerce.number().min(min, `must be at least ${min}`).max(max, `must be at most ${max}`);

/**
 * Exit threshold overrides: `stage=value` pairs (repeated flags, comma-separated environment) or a
 * mapping (file), each value in [0, 1]. The only parser of them: every program that takes
 * thresholds uses this field.
 */
export const thresholdsField = z
  .union([z.array(z.string()), z.record(z.string(), z.union([z.number(), z.string()]))])
  .transform((raw, ctx) => {
    const pairs: [string, unknown, string | number][] = Array.isArray(raw)
      ? raw.map((p, i) => {
          const at = p.indexOf("=");
          return at > 0 ? [p.slice(0, at), p.slice(at + 1), i] : [p, "", i];
        })
      : Object.entries(raw).map(([stage, v]) => [stage, v, stage]);
    const out: Record<string, number> = {};
    for (const [stage, v, path] of pairs) {
      const value = typeof v === "string" && v.trim() === "" ? Number.NaN : Number(v);
      if (!Number.isFinite(value) || value < 0 || value > 1) {
        ctx.addIssue({
          code: "custom",
          path: [path],
          message: Array.isArray(raw)
            ? "expected stage=value with value between 0 and 1"
            : `${String(v)}: expected a value between 0 and 1`,
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

/** True for a broker host that never leaves this machine: localhost, 127.0.0.0/8, ::1. */
export function isLoopbackHost(hostname: string): boolean {
  const host = hostname.replace(/^\[|\]$/g, "").toLowerCase();
  return (
    host === "localhost" ||
    host.endsWith(".localhost") ||
    host === "::1" ||
    /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host)
  );
}

/**
 * What is insecure about connecting to `url` with or without credentials, in words, or undefined
 * when nothing is: plaintext or anonymous connections to another machine. Loopback never counts
 * (`ddnn up`'s embedded broker, tests): nothing crosses a network.
 */
export function brokerInsecurity(url: string, hasCredentials: boolean): string | undefined {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return undefined;
  }
  if (isLoopbackHost(u.hostname)) return undefined;
  const plaintext = u.protocol !== "mqtts:";
  if (plaintext && hasCredentials) return "credentials over plaintext MQTT";
  if (plaintext) return "plaintext MQTT without credentials";
  if (!hasCredentials) return "no credentials (an anonymous client)";
  return undefined;
}

export const logLevels = ["fatal", "error", "warn", "info", "debug"] as const;

/**
 * Variables read outside any program's fields: the bundle download (core/bundle/download.ts) takes
 * its proxy from them, in every program that fetches a bundle URL.
 */
export const PROXY_ENV = ["HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"] as const;
export type ProxyVariable = (typeof PROXY_ENV)[number];
/** The proxy variables that hold a proxy URL (which may carry user:password@); NO_PROXY lists hosts. */
export const PROXY_URL_ENV: readonly ProxyVariable[] = ["HTTP_PROXY", "HTTPS_PROXY"];

// The tiers' fields ----------------------------------------------------------------------------
// `ddnn server`, `ddnn gateway` and `ddnn agent` are one program each (server/config.ts,
// gateway/gateway.ts, device-agent/config.ts) made of these shared fields and their own. The
// operator writes a tier Pod's environment under the names these fields give (operator/builders.ts).

export const tierFields = {
  bundle: field(z.string({ message: "is required" }).min(1, "is required"), {
    help: "bundle directory, .tar.gz, or http(s) URL of a .tar.gz",
    value: "PATH|URL",
  }),
  bundleDigest: field(
    z
      .string()
      .regex(/^[0-9a-f]{64}$/, "must be 64 lowercase hex characters")
      .optional(),
    { help: "expected sha256 of the bundle's ddnn.json; refuse any other", value: "SHA256" },
  ),
  bundleCache: field(z.string().min(1).optional(), {
    help: "directory that keeps a bundle downloaded from a URL once verified; with --bundle-digest a restart loads it from there, network or not",
    value: "DIR",
    defaultText: "none: download on every start",
  }),
  model: field(z.string().optional(), {
    help: "model as <namespace>/<name> for topics",
    value: "NS/NAME",
    defaultText: "default/<bundle name>",
  }),
  broker: field(brokerUrlField.default("mqtt://127.0.0.1:1883"), {
    env: "DDNN_BROKER_URL",
    help: "MQTT broker URL, mqtt:// or mqtts://",
    value: "URL",
  }),
  brokerUsername: field(z.string().optional(), { secret: true, help: "MQTT user name" }),
  brokerPassword: field(z.string().optional(), { secret: true, help: "MQTT password" }),
  brokerCa: field(z.string().min(1).optional(), {
    help: "PEM file of the CA(s) that sign an mqtts:// broker's certificate",
    value: "PATH",
    defaultText: "Node's bundled CAs",
  }),
  brokerTlsName: field(z.string().min(1).max(253).optional(), {
    help: "the name an mqtts:// broker's certificate must carry when the URL's host is another (an IP address, a port-forward to the broker's Service)",
    value: "NAME",
    defaultText: "the URL's host",
  }),
  insecure: field(boolField.default(false), {
    switch: true,
    help: "accept a broker connection that is not both TLS (mqtts://) and authenticated, to a host other than loopback; without it such a combination stops the tier",
  }),
  stages: field(z.array(z.string().min(1)).optional(), {
    multiple: true,
    help: "stage names this tier runs, in order",
    value: "NAME",
  }),
  threshold: field(thresholdsField.default({}), {
    env: "DDNN_THRESHOLDS",
    multiple: true,
    help: "exit threshold override, stage=value with value in [0, 1]",
    value: "STAGE=V",
    defaultText: "the bundle's",
  }),
  httpPort: field(intField(0, 65535).default(8080), {
    help: "port for /healthz, /readyz, /metrics and the tier's API (0: any free port)",
    value: "PORT",
  }),
  httpHost: field(z.string().min(1).default("0.0.0.0"), {
    help: "address to listen on",
    value: "ADDR",
  }),
  backend: field(z.enum(["auto", "native", "wasm"]).default("auto"), {
    help: "onnxruntime build: auto (native, else wasm), native, wasm",
    value: "NAME",
  }),
  logLevel: field(z.enum(logLevels).default("info"), {
    help: "fatal, error, warn, info, debug",
    value: "LEVEL",
  }),
};

/** How a tier encodes the features it sends upstream, and how it subscribes. */
export const encodingFields = {
  dtype: field(z.enum(dtypes).default("u8q"), {
    help: "wire dtype of features sent upstream: f32, f16, u8q",
    value: "DTYPE",
  }),
  compression: field(z.enum(compressions).default("deflate"), {
    help: "none, deflate or sparse (a zero bitmap and the non-zero bytes, docs/protocol.md)",
    value: "NAME",
  }),
  sharedSubscriptions: field(boolField.default(true), {
    help: "subscribe through $share/ groups (false for brokers without them)",
    value: "BOOL",
  }),
};

/** Defaults of a tier's worker pool (server and gateway differ). */
export interface PoolDefaults {
  readonly workers: number;
  readonly maxBatch: number;
  readonly maxQueue: number;
}

/** Fields of a tier that runs a worker pool. */
export function poolFields(d: PoolDefaults) {
  return {
    workers: field(intField(1, 64).default(d.workers), {
      help: "inference worker threads",
      value: "N",
    }),
    maxBatch: field(intField(1, 4096).default(d.maxBatch), {
      help: "largest micro-batch",
      value: "N",
    }),
    maxDelayMs: field(
      z.coerce.number().min(0, "must be >= 0").max(1000, "must be at most 1000").default(0),
      {
        help: "longest wait to fill a batch, ms, fractions allowed (0: batches form from what queues while the workers are busy)",
        value: "MS",
      },
    ),
    maxQueue: field(intField(1, 1_000_000).default(d.maxQueue), {
      help: "requests that may wait; beyond this they are answered overloaded",
      value: "N",
    }),
    maxInFlightPerClient: field(intField(0, 1_000_000).optional(), {
      help: "requests one client (its reply topic) may have in flight; beyond this they are answered overloaded (0: no limit)",
      value: "N",
      defaultText: "a quarter of --max-queue",
    }),
    maxFrameBytes: field(intField(64, 256 * 1024 * 1024).default(4 * 1024 * 1024), {
      help: "largest request frame accepted, bytes",
      value: "BYTES",
    }),
  };
}
