/**
 * Every tier (server, gateway, device agent) refuses, in one line, a broker connection that crosses
 * a network in plaintext or without credentials, unless --insecure says that is meant. Loopback is
 * never insecure: `ddnn up`'s embedded broker and the tests' Mosquitto keep working as they are.
 */
import { networkInterfaces } from "node:os";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { brokerInsecurity, ConfigError, isLoopbackHost, loadConfig } from "../core/config.js";
import { makeLogger } from "../core/runtime/tier.js";
import { agentConfig, agentSchema } from "../device-agent/config.js";
import { startAgent } from "../device-agent/main.js";
import { gatewaySchema, startGateway } from "../gateway/gateway.js";
import { serverConfig, serverSchema } from "../server/config.js";
import { startServer } from "../server/server.js";
import { type Mosquitto, startMosquitto } from "./support/mosquitto.js";
import { root } from "./support/run.js";

const log = makeLogger("fatal", "test");
const bundle = `${root}/models/fashion-3tier`;
const common = { bundle, httpPort: 0, httpHost: "127.0.0.1" };

/** Each program, started with `extra` on top of the shared settings. */
const programs = {
  server: (extra: Record<string, unknown>) =>
    startServer(serverSchema.parse({ ...common, workers: 1, ...extra }), log),
  gateway: (extra: Record<string, unknown>) =>
    startGateway(gatewaySchema.parse({ ...common, stages: ["edge"], workers: 1, ...extra }), log),
  agent: (extra: Record<string, unknown>) =>
    startAgent(agentSchema.parse({ ...common, deviceId: "d1", ...extra }), {}, log),
} as const;

describe("brokerInsecurity", () => {
  it("loopback is never insecure; elsewhere TLS and credentials are both needed", () => {
    for (const h of ["127.0.0.1", "127.1.2.3", "localhost", "[::1]", "::1"])
      expect(isLoopbackHost(h), h).toBe(true);
    for (const h of ["10.0.0.1", "broker.fog.svc", "128.0.0.1", "localhost.example.com"])
      expect(isLoopbackHost(h), h).toBe(false);
    expect(brokerInsecurity("mqtt://127.0.0.1:1883", false)).toBeUndefined();
    expect(brokerInsecurity("mqtt://localhost:1883", true)).toBeUndefined();
    expect(brokerInsecurity("mqtt://10.0.0.1:1883", false)).toBe(
      "plaintext MQTT without credentials",
    );
    expect(brokerInsecurity("tcp://b.fog.svc:1883", true)).toBe("credentials over plaintext MQTT");
    expect(brokerInsecurity("mqtts://b.fog.svc:8883", false)).toBe(
      "no credentials (an anonymous client)",
    );
    expect(brokerInsecurity("mqtts://b.fog.svc:8883", true)).toBeUndefined();
  });

  it("--insecure is a switch and DDNN_INSECURE=true in every tier program", () => {
    expect(loadConfig(serverConfig, ["--bundle", "b", "--insecure"]).insecure).toBe(true);
    expect(loadConfig(agentConfig, ["--bundle", "b"], { DDNN_INSECURE: "true" }).insecure).toBe(
      true,
    );
    expect(loadConfig(agentConfig, ["--bundle", "b"], {}).insecure).toBe(false);
  });
});

describe("every program refuses an insecure broker unless --insecure", () => {
  const cases = [
    {
      what: "plaintext mqtt:// to another host without credentials",
      extra: { broker: "mqtt://broker.example.invalid:1883" },
      says: "plaintext MQTT without credentials",
    },
    {
      what: "credentials over plaintext to another host",
      extra: {
        broker: "mqtt://broker.example.invalid:1883",
        brokerUsername: "u",
        brokerPassword: "pw-never-printed",
      },
      says: "credentials over plaintext MQTT",
    },
    {
      what: "credentials in the URL over plaintext",
      extra: { broker: "mqtt://u:pw-never-printed@broker.example.invalid:1883" },
      says: "credentials over plaintext MQTT",
    },
    {
      what: "mqtts:// without credentials",
      extra: { broker: "mqtts://broker.example.invalid:8883" },
      says: "no credentials",
    },
  ];
  for (const [name, start] of Object.entries(programs))
    for (const c of cases)
      it(`${name}: ${c.what}`, async () => {
        const err = await start(c.extra).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(ConfigError);
        const message = (err as Error).message;
        expect(message).toContain(c.says);
        expect(message).toContain("--insecure");
        expect(message).not.toContain("\n");
        expect(message).not.toContain("pw-never-printed");
      });

  let mosquitto: Mosquitto;
  beforeAll(async () => {
    mosquitto = await startMosquitto();
  });
  afterAll(async () => {
    await mosquitto?.stop();
  });

  it("loopback without TLS or credentials starts every program as before", async () => {
    for (const start of Object.values(programs)) {
      const running = await start({ broker: mosquitto.url });
      await running.close();
    }
  });

  // This machine's own non-loopback address: nothing leaves the machine (a closed port refuses).
  const own = Object.values(networkInterfaces())
    .flat()
    .find((a) => a && a.family === "IPv4" && !a.internal)?.address;
  it.skipIf(own === undefined)(
    "with --insecure the refusal is lifted (the tier starts and reconnects in the background)",
    async () => {
      for (const start of Object.values(programs)) {
        const running = await start({ broker: `mqtt://${own}:9`, insecure: true });
        await running.close();
      }
    },
  );
});
