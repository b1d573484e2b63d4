/**
 * Tiers over mqtts:// against a real Mosquitto with a TLS listener and a private CA (--broker-ca),
 * and the errors a user sees when the broker's certificate, the CA file, or the address is wrong.
 */
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConfigError } from "../core/config.js";
import { Pipeline } from "../core/pipeline.js";
import { describeError } from "../core/runtime/tier.js";
import { serverSchema } from "../server/config.js";
import { type RunningServer, startServer } from "../server/server.js";
import { pseudoPixels, smallStages, tempDir, writeBundle } from "./support/bundle-fixture.js";
import { type Fog, startFog, waitFor } from "./support/fog.js";
import { freePort, type Mosquitto, mosquittoBinary, startMosquitto } from "./support/mosquitto.js";
import { makeTestPki, type TestPki } from "./support/tls.js";

let pki: TestPki;
let broker: Mosquitto;
let bundle: string;
let reference: Pipeline;
beforeAll(async () => {
  if (!mosquittoBinary)
    throw new Error("mosquitto is not installed (Debian: apt-get install mosquitto)");
  pki = makeTestPki();
  broker = await startMosquitto({ tls: { certFile: pki.certFile, keyFile: pki.keyFile } });
  bundle = writeBundle(smallStages()).dir;
  reference = await Pipeline.load(bundle);
});
afterAll(async () => {
  await broker?.stop();
  await reference?.release();
  if (pki) rmSync(pki.dir, { recursive: true, force: true });
});

/** A logger whose lines the test can read. */
function capture(): { log: pino.Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: "info" }, { write: (l: string) => void lines.push(JSON.parse(l)) });
  return { log, lines };
}

const FAILED = "broker connection failed; reconnecting with backoff";

/** Starts a one-worker server with `over` and returns it once it has logged why it cannot connect. */
async function failingServer(over: Record<string, unknown>): Promise<{
  server: RunningServer;
  lines: Record<string, unknown>[];
  failure: Record<string, unknown>;
}> {
  const { log, lines } = capture();
  const server = await startServer(
    serverSchema.parse({ bundle, httpHost: "127.0.0.1", httpPort: 0, workers: 1, ...over }),
    log,
  );
  try {
    await waitFor(
      () => lines.some((l) => l.msg === FAILED),
      10_000,
      "a log line saying why the broker connection fails",
    );
  } catch (err) {
    await server.close();
    throw err;
  }
  return { server, lines, failure: lines.find((l) => l.msg === FAILED)! };
}

describe("tiers over mqtts:// (Mosquitto TLS listener, private CA)", () => {
  it("with --broker-ca the device gets the server's answers, the same as in process", async () => {
    expect(broker.url).toMatch(/^mqtts:\/\//);
    let fog: Fog | undefined;
    try {
      fog = await startFog({
        bundle,
        broker: broker.url,
        stageNames: ["device", "server"],
        sharedSubscriptions: true,
        extra: { brokerCa: pki.caFile },
      });
      const n = 24;
      const px = pseudoPixels(n, 16, 11);
      const expected = await reference.infer(px, n);
      const url = `http://127.0.0.1:${fog.agents[0]!.port}/v1/infer`;
      let upstream = 0;
      for (let i = 0; i < n; i++) {
        const res = await fetch(url, {
          method: "POST",
          headers: { "content-type": "application/octet-stream" },
          body: px.subarray(i * 16, (i + 1) * 16),
        });
        expect(res.status).toBe(200);
        const answer = (await res.json()) as {
          label: number;
          stage: string;
          tier: string;
          degraded: boolean;
        };
        expect(answer.degraded).toBe(false);
        expect([answer.stage, answer.label]).toEqual([
          ["device", "server"][expected[i]!.stage],
          expected[i]!.label,
        ]);
        if (answer.tier === "server") upstream++;
      }
      // Both exits occur in this sample, so requests really crossed the TLS broker.
      expect(upstream).toBeGreaterThan(0);
      expect(upstream).toBeLessThan(n);
    } finally {
      await fog?.close();
    }
  });

  it("a broker certificate from another CA: the tier logs why, once, and is not ready", async () => {
    const { server, lines, failure } = await failingServer({
      broker: broker.url,
      brokerCa: pki.otherCaFile,
    });
    try {
      expect(String(failure.error)).toMatch(/certificate/i);
      expect(failure.broker).toBe(broker.url);
      const ready = await fetch(`http://127.0.0.1:${server.port}/readyz`);
      expect(ready.status).toBe(503);
      expect(((await ready.json()) as { missing: string[] }).missing).toContain(
        "broker disconnected",
      );
      // Retries go on with backoff, but the same cause is not logged again.
      await new Promise((r) => setTimeout(r, 1_000));
      expect(lines.filter((l) => l.msg === FAILED)).toHaveLength(1);
    } finally {
      await server.close();
    }
  });

  it("a CA file that is missing, not PEM, corrupt, or given for mqtt:// stops the program naming it", async () => {
    const notPem = join(tempDir(), "ca.txt");
    writeFileSync(notPem, "not a certificate\n");
    const corrupt = join(tempDir(), "corrupt.pem");
    writeFileSync(
      corrupt,
      `${readFileSync(pki.caFile, "utf8")}-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n`,
    );
    const start = (over: Record<string, unknown>) =>
      startServer(
        serverSchema.parse({
          bundle,
          broker: broker.url,
          httpHost: "127.0.0.1",
          httpPort: 0,
          workers: 1,
          ...over,
        }),
        capture().log,
      );
    await expect(start({ brokerCa: "/nonexistent/ca.pem" })).rejects.toThrow(
      "broker CA file /nonexistent/ca.pem (--broker-ca / DDNN_BROKER_CA): cannot read it (ENOENT)",
    );
    await expect(start({ brokerCa: notPem })).rejects.toThrow(
      `broker CA file ${notPem} (--broker-ca / DDNN_BROKER_CA): no PEM certificate in it`,
    );
    await expect(start({ brokerCa: corrupt })).rejects.toThrow(
      `broker CA file ${corrupt} (--broker-ca / DDNN_BROKER_CA): certificate 2 of 2 is corrupt`,
    );
    await expect(start({ brokerCa: "/nonexistent/ca.pem" })).rejects.toBeInstanceOf(ConfigError);
    await expect(
      start({ brokerCa: pki.caFile, broker: "mqtt://127.0.0.1:1" }),
    ).rejects.toBeInstanceOf(ConfigError);
    await expect(start({ brokerCa: pki.caFile, broker: "mqtt://127.0.0.1:1" })).rejects.toThrow(
      "a broker CA only applies to mqtts:// brokers, not mqtt://",
    );
  });

  it("nothing listening at the broker's address: the log says so", async () => {
    const { server, failure } = await failingServer({
      broker: `mqtt://localhost:${await freePort()}`,
    });
    await server.close();
    expect(String(failure.error)).toMatch(/ECONNREFUSED/);
  });

  it("errors without a message (several addresses tried, as for a name with IPv6 and IPv4) are still described", () => {
    const both = Object.assign(
      new AggregateError(
        [
          new Error("connect ECONNREFUSED ::1:1883"),
          new Error("connect ECONNREFUSED 127.0.0.1:1883"),
        ],
        "",
      ),
      { code: "ECONNREFUSED" },
    );
    expect(describeError(both)).toBe(
      "connect ECONNREFUSED ::1:1883; connect ECONNREFUSED 127.0.0.1:1883",
    );
    expect(describeError(Object.assign(new Error(""), { code: "ETIMEDOUT" }))).toBe("ETIMEDOUT");
    expect(describeError(new Error("Connection refused: Not authorized"))).toBe(
      "Connection refused: Not authorized",
    );
  });
});
