import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { agentFields, agentSchema } from "../device-agent/config.js";
import { serverFields, serverSchema } from "../server/config.js";
import { tempDir } from "../test/support/bundle-fixture.js";
import { ConfigError, fieldHelp, loadConfig, printable } from "./config.js";

describe("loadConfig", () => {
  it("names each field's flag and environment variable in the help", () => {
    const help = fieldHelp(serverFields);
    expect(help).toMatch(/--broker VALUE .*\[env DDNN_BROKER_URL\]/);
    expect(help).toMatch(/--threshold VALUE .*\[env DDNN_THRESHOLDS\]/);
    expect(help).toMatch(/\(env DDNN_BROKER_PASSWORD only\)/);
    expect(help).toMatch(/--max-delay-ms VALUE .*\[env DDNN_MAX_DELAY_MS\]/);
  });

  it("takes flags over environment over file over defaults", () => {
    const file = join(tempDir(), "server.yaml");
    writeFileSync(
      file,
      "bundle: /from/file\nworkers: 3\nmaxBatch: 8\nthreshold: { device: 0.2 }\n",
    );
    const env = { DDNN_CONFIG: file, DDNN_WORKERS: "5", DDNN_BROKER_URL: "mqtt://broker:1883" };
    const c = loadConfig(serverSchema, serverFields, ["--workers", "7"], env);
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
      agentSchema,
      agentFields,
      ["--bundle", "b", "--threshold", "device=0.4", "--source", "http", "--source", "replay"],
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
      loadConfig(agentSchema, agentFields, ["--bundle", "b"], {
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
        /^--threshold: "device=2": expected stage=value with value between 0 and 1$/,
      ],
      [[], {}, /^--bundle \/ DDNN_BUNDLE: is required$/],
      [["--bundle", "b", "--nope"], {}, /Unknown option '--nope'/],
    ];
    for (const [argv, env, message] of bad) {
      expect(() => loadConfig(serverSchema, serverFields, argv, env)).toThrow(ConfigError);
      expect(() => loadConfig(serverSchema, serverFields, argv, env)).toThrow(message);
    }
    const file = join(tempDir(), "c.yaml");
    writeFileSync(file, "bundel: typo\n");
    expect(() => loadConfig(serverSchema, serverFields, ["--config", file], {})).toThrow(
      /unknown field "bundel"/,
    );
  });

  it("takes secrets only from the environment or file and never prints them", () => {
    expect(() =>
      loadConfig(serverSchema, serverFields, ["--bundle", "b", "--broker-password", "x"], {}),
    ).toThrow(/Unknown option/);
    const c = loadConfig(serverSchema, serverFields, ["--bundle", "b"], {
      DDNN_BROKER_PASSWORD: "hunter2",
      DDNN_BROKER_USERNAME: "dev",
    });
    expect(c.brokerPassword).toBe("hunter2");
    const shown = JSON.stringify(printable(c, serverFields));
    expect(shown).not.toContain("hunter2");
    expect(shown).toContain('"brokerPassword":"***"');
  });
});
