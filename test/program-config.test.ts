/**
 * Every program's configuration comes from one declaration per field (core/config.ts): the flags
 * and environment variables users have are all still there, `--help` names each with its variable
 * and default, and `ddnn up` passes the tiers' own fields on (their names, types and defaults)
 * instead of declaring its own.
 */
import { describe, expect, it } from "vitest";
import { packConfig } from "../cli/bundle.js";
import { evalConfig, evalHelp } from "../cli/eval.js";
import { operatorConfig, operatorHelp } from "../cli/operator.js";
import { profileConfig } from "../cli/profile.js";
import { tierProgram } from "../cli/tiers.js";
import { upConfig } from "../cli/up.js";
import { loadConfig, type Program, programHelp } from "../core/config.js";
import { agentConfig } from "../device-agent/config.js";
import { gatewayConfig } from "../gateway/gateway.js";
import { serverConfig } from "../server/config.js";

const kebab = (key: string) => key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
const flagsOf = (p: Program) =>
  Object.entries(p.fields)
    .filter(([, f]) => !f.options.secret && !f.options.positional)
    .map(([k]) => kebab(k));

const TIER = [
  "bundle",
  "bundle-digest",
  "model",
  "broker",
  "broker-ca",
  "stages",
  "threshold",
  "http-port",
  "http-host",
  "backend",
  "log-level",
  "dtype",
  "compression",
  "shared-subscriptions",
];
const POOL = ["workers", "max-batch", "max-delay-ms", "max-queue", "max-frame-bytes"];
const TIER_ENV = [
  "DDNN_CONFIG",
  "DDNN_BUNDLE",
  "DDNN_BUNDLE_DIGEST",
  "DDNN_MODEL",
  "DDNN_BROKER_URL",
  "DDNN_BROKER_USERNAME",
  "DDNN_BROKER_PASSWORD",
  "DDNN_BROKER_CA",
  "DDNN_STAGES",
  "DDNN_THRESHOLDS",
  "DDNN_HTTP_PORT",
  "DDNN_HTTP_HOST",
  "DDNN_BACKEND",
  "DDNN_LOG_LEVEL",
  "DDNN_DTYPE",
  "DDNN_COMPRESSION",
  "DDNN_SHARED_SUBSCRIPTIONS",
];
const POOL_ENV = [
  "DDNN_WORKERS",
  "DDNN_MAX_BATCH",
  "DDNN_MAX_DELAY_MS",
  "DDNN_MAX_QUEUE",
  "DDNN_MAX_FRAME_BYTES",
];

/** The flags and environment variables each program had before its fields were declared once. */
const before: [string, Program, string[], string[]][] = [
  [
    "server",
    serverConfig,
    [...TIER, ...POOL, "full-model"],
    [...TIER_ENV, ...POOL_ENV, "DDNN_FULL_MODEL"],
  ],
  ["gateway", gatewayConfig, [...TIER, ...POOL], [...TIER_ENV, ...POOL_ENV]],
  [
    "agent",
    agentConfig,
    [
      ...TIER,
      "device-id",
      "deadline-ms",
      "source",
      "replay-images",
      "replay-labels",
      "fps",
      "loop",
      "input-topic",
      "alarm",
    ],
    [
      ...TIER_ENV,
      "DDNN_DEVICE_ID",
      "DDNN_DEADLINE_MS",
      "DDNN_SOURCE",
      "DDNN_REPLAY_PATH",
      "DDNN_REPLAY_LABELS",
      "DDNN_FPS",
      "DDNN_LOOP",
      "DDNN_INPUT_TOPIC",
      "DDNN_ALARM",
    ],
  ],
  [
    "eval",
    evalConfig,
    [
      "bundle",
      "images",
      "labels",
      "limit",
      "threshold",
      "sweep",
      "json",
      "predictions",
      "batch-size",
      "threads",
    ],
    [],
  ],
  [
    "up",
    upConfig,
    [
      "bundle",
      "images",
      "labels",
      "broker",
      "broker-ca",
      "shared-subscriptions",
      "devices",
      "fps",
      "duration",
      "limit",
      "threshold",
      "deadline-ms",
      "dtype",
      "compression",
      "workers",
      "max-batch",
      "max-delay-ms",
      "server-only",
      "json",
      "log-level",
    ],
    [
      "DDNN_BUNDLE",
      "DDNN_IMAGES",
      "DDNN_LABELS",
      "DDNN_BROKER",
      "DDNN_BROKER_CA",
      "DDNN_SHARED_SUBSCRIPTIONS",
      "DDNN_DEVICES",
      "DDNN_FPS",
      "DDNN_DURATION",
      "DDNN_LIMIT",
      "DDNN_THRESHOLD",
      "DDNN_DEADLINE_MS",
      "DDNN_DTYPE",
      "DDNN_COMPRESSION",
      "DDNN_WORKERS",
      "DDNN_MAX_BATCH",
      "DDNN_MAX_DELAY_MS",
      "DDNN_SERVER_ONLY",
      "DDNN_JSON",
      "DDNN_LOG_LEVEL",
    ],
  ],
  [
    "bundle pack",
    packConfig,
    ["name", "namespace", "out", "archive"],
    [
      "DDNN_BUNDLE",
      "DDNN_BUNDLE_CONFIGMAP",
      "DDNN_BUNDLE_NAMESPACE",
      "DDNN_BUNDLE_OUT",
      "DDNN_BUNDLE_ARCHIVE",
    ],
  ],
  [
    "operator",
    operatorConfig,
    [
      "kubeconfig",
      "namespace",
      "image",
      "broker-image",
      "http-port",
      "leader-elect",
      "lease-namespace",
      "lease-name",
      "lease-duration-ms",
      "renew-deadline-ms",
      "retry-period-ms",
      "workers",
      "resync-ms",
      "identity",
    ],
    [
      "KUBECONFIG",
      "DDNN_WATCH_NAMESPACE",
      "DDNN_IMAGE",
      "DDNN_BROKER_IMAGE",
      "DDNN_HTTP_PORT",
      "DDNN_LEADER_ELECT",
      "DDNN_LEASE_NAMESPACE",
      "POD_NAMESPACE",
      "DDNN_LEASE_NAME",
      "DDNN_LEASE_DURATION_MS",
      "DDNN_RENEW_DEADLINE_MS",
      "DDNN_RETRY_PERIOD_MS",
      "DDNN_WORKERS",
      "DDNN_RESYNC_MS",
      "DDNN_IDENTITY",
    ],
  ],
];

describe("program configuration", () => {
  it.each(before)(
    "ddnn %s keeps every flag and environment variable it had",
    (_, p, flags, env) => {
      expect(flagsOf(p)).toEqual(expect.arrayContaining(flags));
      expect([...p.envNames]).toEqual(expect.arrayContaining(env));
    },
  );

  it.each(before)("ddnn %s --help names every flag with its variable", (_, p) => {
    const raw = programHelp(p, { title: "t", usage: "u" });
    const help = raw.replace(/\n {20,}/g, " ");
    for (const [key, f] of Object.entries(p.fields)) {
      const env = p.env[key]!;
      if (f.options.secret) expect(help).toContain(`(env ${env} only)`);
      else if (f.options.positional)
        expect(help).toMatch(new RegExp(`^ {2}${f.options.value}\\b[^\\n]*\\(${env}[,)]`, "m"));
      else expect(help).toMatch(new RegExp(`--${kebab(key)}\\b[^\\n]*\\(${env}[,)]`));
    }
    for (const line of raw.split("\n")) expect(line.length).toBeLessThanOrEqual(100);
  });

  it("the tier programs are the ones `ddnn server|gateway|agent` load", () => {
    expect(tierProgram("server")).toBe(serverConfig);
    expect(tierProgram("gateway")).toBe(gatewayConfig);
    expect(tierProgram("agent")).toBe(agentConfig);
  });

  it("keeps the tiers' defaults", () => {
    // What every tier program gives `--bundle b` when nothing else is set.
    const TIER_DEFAULTS = {
      bundle: "b",
      broker: "mqtt://127.0.0.1:1883",
      threshold: {},
      httpPort: 8080,
      httpHost: "0.0.0.0",
      backend: "auto",
      logLevel: "info",
      dtype: "u8q",
      compression: "deflate",
      sharedSubscriptions: true,
      insecure: false,
    };
    expect(loadConfig(serverConfig, ["--bundle", "b"], {})).toEqual({
      ...TIER_DEFAULTS,
      workers: 2,
      maxBatch: 32,
      maxDelayMs: 0,
      maxQueue: 1024,
      maxFrameBytes: 4194304,
      fullModel: true,
    });
    expect(loadConfig(gatewayConfig, ["--bundle", "b"], {})).toMatchObject({
      workers: 1,
      maxBatch: 16,
      maxQueue: 512,
    });
    expect(loadConfig(agentConfig, ["--bundle", "b", "--device-id", "cam"], {})).toEqual({
      ...TIER_DEFAULTS,
      deviceId: "cam",
      deadlineMs: 250,
      source: ["http"],
      fps: 10,
      loop: false,
      deviceSlowdown: 1,
      captureSlotMs: 100,
      alarm: [],
    });
  });

  it("ddnn up passes the tiers' own fields on, with its own defaults only where it says so", () => {
    const up = upConfig.fields;
    // The same types and variable names as the tiers it starts.
    for (const [key, tier] of [
      ["threshold", serverConfig],
      ["dtype", agentConfig],
      ["compression", agentConfig],
      ["sharedSubscriptions", agentConfig],
      ["brokerCa", agentConfig],
      ["deadlineMs", agentConfig],
      ["deviceSlowdown", agentConfig],
      ["workers", serverConfig],
      ["maxBatch", serverConfig],
      ["maxDelayMs", serverConfig],
    ] as const) {
      expect(upConfig.env[key], key).toBe((tier.env as Record<string, string>)[key]);
      expect(up[key].schema.safeParse(undefined), key).toEqual(
        (tier.fields as unknown as Record<string, { schema: typeof up.dtype.schema }>)[
          key
        ]!.schema.safeParse(undefined),
      );
    }
    expect(upConfig.env.broker).toBe(serverConfig.env.broker);
    const c = loadConfig(upConfig, [], {});
    expect(c).toMatchObject({ devices: 4, fps: 100, logLevel: "warn", deadlineMs: 250 });
    expect(c.broker).toBeUndefined();
    // What `ddnn up` read before it shared the tiers' names still works.
    expect(
      loadConfig(upConfig, [], { DDNN_BROKER: "mqtt://h:1", DDNN_THRESHOLD: "device=0.2" }),
    ).toMatchObject({ broker: "mqtt://h:1", threshold: { device: 0.2 } });
    expect(() => loadConfig(upConfig, ["--broker", "http://h"], {})).toThrow(
      /^--broker: must be a broker URL/,
    );
    // ddnn profile runs the same fog: every field of up but its --json switch, under the same names.
    // (and --views, up's horizontal run, which the profiler does not run yet).
    for (const key of Object.keys(up).filter((k) => k !== "json" && k !== "views"))
      expect((profileConfig.env as Record<string, string>)[key], key).toBe(
        (upConfig.env as Record<string, string>)[key],
      );
    expect(loadConfig(profileConfig, ["--json", "r.json"], {}).json).toBe("r.json");
  });

  it("ddnn eval and ddnn operator read the environment and a file like every program", () => {
    expect(
      loadConfig(evalConfig, ["--limit", "5", "--json"], { DDNN_THRESHOLDS: "device=0.3" }),
    ).toMatchObject({
      limit: 5,
      json: true,
      sweep: false,
      batchSize: 256,
      threshold: { device: 0.3 },
    });
    expect(() => loadConfig(evalConfig, ["--threshold", "device=2"], {})).toThrow(
      /^--threshold device=2: expected stage=value with value between 0 and 1$/,
    );
    const op = loadConfig(operatorConfig, [], {
      POD_NAMESPACE: "ddnn-system",
      DDNN_LEADER_ELECT: "false",
      DDNN_WORKERS: "3",
    });
    expect(op).toMatchObject({
      leaseNamespace: "ddnn-system",
      leaderElect: false,
      workers: 3,
      brokerImage: "eclipse-mosquitto:2",
      httpPort: 8080,
      leaseName: "ddnn-operator",
      leaseDurationMs: 15000,
      renewDeadlineMs: 10000,
      retryPeriodMs: 2000,
      resyncMs: 600000,
    });
    expect(
      loadConfig(operatorConfig, [], { POD_NAMESPACE: "a", DDNN_LEASE_NAMESPACE: "b" })
        .leaseNamespace,
    ).toBe("b");
    expect(() => loadConfig(operatorConfig, ["--renew-deadline-ms", "20000"], {})).toThrow(
      /^--lease-duration-ms \/ DDNN_LEASE_DURATION_MS: needs lease-duration > renew-deadline > retry-period$/,
    );
    expect(() => loadConfig(operatorConfig, ["--leader-elect", "maybe"], {})).toThrow(
      /^--leader-elect: must be true or false$/,
    );
    expect(operatorHelp).toContain("(DDNN_IMAGE); default ddnn-fog:<version>");
    expect(evalHelp).toContain("Usage: ddnn eval");
  });
});
