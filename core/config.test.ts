import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { z } from "zod";
import { agentConfig } from "../device-agent/config.js";
import { serverConfig } from "../server/config.js";
import { tempDir } from "../test/support/bundle-fixture.js";
import {
  boolField,
  ConfigError,
  field,
  fieldHelp,
  intField,
  loadConfig,
  printable,
  program,
} from "./config.js";

describe("loadConfig", () => {
  it("names each field's flag and environment variable in the help", () => {
    const help = fieldHelp(serverConfig);
    // One field per line once the wrapped lines are joined again.
    const flat = help.replace(/\n {20,}/g, " ");
    expect(flat).toMatch(
      /--broker URL +MQTT broker URL.*\(DDNN_BROKER_URL\); default mqtt:\/\/127\.0\.0\.1:1883/,
    );
    expect(flat).toMatch(
      /--threshold STAGE=V .*\(DDNN_THRESHOLDS, comma-separated\); repeatable; default the bundle's/,
    );
    expect(flat).toMatch(/\(env DDNN_BROKER_PASSWORD only\)/);
    expect(flat).toMatch(/--max-delay-ms MS .*\(DDNN_MAX_DELAY_MS\); default 0/);
    expect(flat).toMatch(/--bundle PATH\|URL .*\(DDNN_BUNDLE\); required/);
    expect(flat).toMatch(/--workers N +inference worker threads \(DDNN_WORKERS\); default 2/);
    // Every line fits a terminal.
    for (const line of help.split("\n")) expect(line.length).toBeLessThanOrEqual(100);
  });

  it("takes flags over environment over file over defaults", () => {
    const file = join(tempDir(), "server.yaml");
    writeFileSync(
      file,
      "bundle: /from/file\nworkers: 3\nmaxBatch: 8\nthreshold: { device: 0.2 }\n",
    );
    const env = { DDNN_CONFIG: file, DDNN_WORKERS: "5", DDNN_BROKER_URL: "mqtt://broker:1883" };
    const c = loadConfig(serverConfig, ["--workers", "7"], env);
    expect(c.bundle).toBe("/from/file");
    expect(c.workers).toBe(7);
    expect(c.maxBatch).toBe(8);
    expect(c.broker).toBe("mqtt://broker:1883");
    expect(c.threshold).toEqual({ device: 0.2 });
    expect(c.maxDelayMs).toBe(0);
    expect(c.sharedSubscriptions).toBe(true);
  });

  it("reads repeatable flags and comma-separated environment lists", () => {
    const c = loadConfig(
      agentConfig,
      [
        "--bundle",
        "b",
        "--threshold",
        "device=0.4",
        "--source",
        "http",
        "--source",
        "replay",
        "--replay-images",
        "/data/t10k-images.idx",
      ],
      {
        DDNN_ALARM: "Sandal,Bag",
        DDNN_DEVICE_ID: "cam-7",
      },
    );
    expect(c.threshold).toEqual({ device: 0.4 });
    expect(c.source).toEqual(["http", "replay"]);
    expect(c.alarm).toEqual(["Sandal", "Bag"]);
    expect(c.deviceId).toBe("cam-7");
    expect(
      loadConfig(agentConfig, ["--bundle", "b"], {
        DDNN_THRESHOLDS: "device=0.1,edge=0.2",
      }).threshold,
    ).toEqual({
      device: 0.1,
      edge: 0.2,
    });
  });

  it("stops on a bad value with one line naming the field and where it came from", () => {
    const bad: [string[], Record<string, string>, RegExp][] = [
      [["--bundle", "b", "--workers", "0"], {}, /^--workers: must be at least 1$/],
      [["--bundle", "b"], { DDNN_MAX_BATCH: "lots" }, /^DDNN_MAX_BATCH: /],
      [["--bundle", "b", "--broker", "http://x"], {}, /^--broker: must be a broker URL/],
      [
        ["--bundle", "b", "--threshold", "device=2"],
        {},
        /^--threshold device=2: expected stage=value with value between 0 and 1$/,
      ],
      [
        ["--bundle", "b"],
        { DDNN_THRESHOLDS: "device=0.1,edge=x" },
        /^DDNN_THRESHOLDS edge=x: expected stage=value with value between 0 and 1$/,
      ],
      [["--bundle", "b", "--threshold", "device="], {}, /^--threshold device=: expected/],
      [[], {}, /^--bundle \/ DDNN_BUNDLE: is required$/],
      [["--bundle", "b", "--nope"], {}, /Unknown option '--nope'/],
    ];
    for (const [argv, env, message] of bad) {
      expect(() => loadConfig(serverConfig, argv, env)).toThrow(ConfigError);
      expect(() => loadConfig(serverConfig, argv, env)).toThrow(message);
    }
    const file = join(tempDir(), "c.yaml");
    writeFileSync(file, "bundel: typo\n");
    expect(() => loadConfig(serverConfig, ["--config", file], {})).toThrow(
      /unknown field "bundel"/,
    );
    writeFileSync(file, "bundle: b\nthreshold: { device: 2 }\n");
    expect(() => loadConfig(serverConfig, ["--config", file], {})).toThrow(
      /: threshold\.device: 2: expected a value between 0 and 1$/,
    );
    expect(() => loadConfig(agentConfig, ["--bundle", "b", "--source", "replay"], {})).toThrow(
      /^--replay-images \/ DDNN_REPLAY_PATH: is required with --source replay$/,
    );
  });

  it("derives flag, environment variable, file key and help from one declaration per field", () => {
    const p = program({
      maxThings: field(intField(1, 9).default(3), { help: "how many things", value: "N" }),
      where: field(z.string().optional(), { env: ["NEW_WHERE", "OLD_WHERE"], help: "a place" }),
      loud: field(boolField.default(false), { switch: true, help: "say it loudly" }),
      token: field(z.string().optional(), { secret: true, help: "a secret" }),
    });
    expect(p.env).toEqual({
      maxThings: "DDNN_MAX_THINGS",
      where: "NEW_WHERE",
      loud: "DDNN_LOUD",
      token: "DDNN_TOKEN",
    });
    expect([...p.envNames].sort()).toEqual(
      [
        "DDNN_CONFIG",
        "DDNN_LOUD",
        "DDNN_MAX_THINGS",
        "DDNN_TOKEN",
        "NEW_WHERE",
        "OLD_WHERE",
      ].sort(),
    );
    expect(loadConfig(p, ["--max-things", "5", "--loud"], {})).toEqual({
      maxThings: 5,
      loud: true,
    });
    // The first variable set wins; an older name still works alone.
    expect(loadConfig(p, [], { NEW_WHERE: "a", OLD_WHERE: "b" }).where).toBe("a");
    expect(loadConfig(p, [], { OLD_WHERE: "b", DDNN_LOUD: "true" })).toMatchObject({
      where: "b",
      loud: true,
    });
    const file = join(tempDir(), "p.yaml");
    writeFileSync(file, "maxThings: 7\ntoken: t0k3n\n");
    expect(loadConfig(p, [], { DDNN_CONFIG: file })).toMatchObject({
      maxThings: 7,
      token: "t0k3n",
    });
    const help = fieldHelp(p);
    expect(help).toContain("--max-things N");
    expect(help).toMatch(/how many things \(DDNN_MAX_THINGS\); default 3/);
    expect(help).toMatch(/a place \(NEW_WHERE, then OLD_WHERE\)/);
    expect(help).toMatch(/--loud +say it loudly \(DDNN_LOUD\); default false/);
    expect(help).not.toContain("--token");
    expect(() => loadConfig(p, ["--max-things", "10"], {})).toThrow(
      /^--max-things: must be at most 9$/,
    );
    expect(() => loadConfig(p, [], { DDNN_MAX_THINGS: "x" })).toThrow(/^DDNN_MAX_THINGS: /);
  });

  it("takes secrets only from the environment or file and never prints them", () => {
    expect(() => loadConfig(serverConfig, ["--bundle", "b", "--broker-password", "x"], {})).toThrow(
      /Unknown option/,
    );
    const c = loadConfig(serverConfig, ["--bundle", "b"], {
      DDNN_BROKER_PASSWORD: "hunter2",
      DDNN_BROKER_USERNAME: "dev",
    });
    expect(c.brokerPassword).toBe("hunter2");
    const shown = JSON.stringify(printable(serverConfig, c));
    expect(shown).not.toContain("hunter2");
    expect(shown).toContain('"brokerPassword":"***"');
  });
});
