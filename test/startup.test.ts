/**
 * One start-up path for every tier: what a tier acquired before a late failure is released, in
 * reverse order, so a failed start leaves no port, broker connection, worker or session behind.
 */
import { createServer as createHttpServer } from "node:http";
import { createServer } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bundleFiles, packReproducibly } from "../cli/bundle.js";
import { readBundle } from "../core/bundle/read.js";
import { ConfigError } from "../core/config.js";
import { Resources, startUp } from "../core/runtime/startup.js";
import { makeLogger } from "../core/runtime/tier.js";
import { agentSchema } from "../device-agent/config.js";
import { startAgent } from "../device-agent/main.js";
import { gatewaySchema, startGateway } from "../gateway/gateway.js";
import { serverSchema } from "../server/config.js";
import { startServer } from "../server/server.js";
import { tempDir } from "./support/bundle-fixture.js";
import { freePort, type Mosquitto, startMosquitto } from "./support/mosquitto.js";
import { root } from "./support/run.js";

const log = makeLogger("fatal", "test");
const bundle = `${root}/models/fashion-3tier`;

/** Open sockets, listeners and worker threads of this process, by kind. */
function handles(): Record<string, number> {
  const count: Record<string, number> = {};
  for (const r of process.getActiveResourcesInfo())
    if (/TCP|Worker|MessagePort/.test(r)) count[r] = (count[r] ?? 0) + 1;
  return count;
}

/** Waits until the process holds no more handles than `before` (closing sockets take a turn or two). */
async function expectBackTo(before: Record<string, number>): Promise<void> {
  const extra = () => Object.entries(handles()).filter(([k, v]) => v > (before[k] ?? 0));
  for (let i = 0; i < 100 && extra().length > 0; i++) await sleep(20);
  expect(extra()).toEqual([]);
}

async function refused(port: number): Promise<boolean> {
  const { connect } = await import("node:net");
  return new Promise((resolve) => {
    const s = connect(port, "127.0.0.1");
    s.once("connect", () => {
      s.destroy();
      resolve(false);
    });
    s.once("error", () => resolve(true));
  });
}

describe("Resources", () => {
  it("releases newest first, goes on past a failing step, and releases once", async () => {
    const order: string[] = [];
    const r = new Resources();
    r.own("a", 1, () => {
      order.push("a");
    });
    r.own("b", 2, () => {
      throw new Error("b broke");
    });
    r.own("c", 3, async () => {
      await sleep(5);
      order.push("c");
    });
    expect(r.names).toEqual(["a", "b", "c"]);
    await expect(r.release()).rejects.toThrow("releasing b: b broke");
    await expect(r.release()).rejects.toThrow("releasing b: b broke");
    expect(order).toEqual(["c", "a"]);
    expect(() => r.own("d", 4, () => {})).toThrow(/shutting down/);
  });

  it("startUp releases what the build acquired when it throws", async () => {
    const released: string[] = [];
    await expect(
      startUp(async (r) => {
        r.own("first", 1, () => {
          released.push("first");
        });
        r.own("second", 2, () => {
          released.push("second");
        });
        throw new ConfigError("late failure");
      }),
    ).rejects.toThrow("late failure");
    expect(released).toEqual(["second", "first"]);
  });
});

describe("a tier that fails late in its start-up", () => {
  let mosquitto: Mosquitto;
  beforeAll(async () => {
    mosquitto = await startMosquitto();
  });
  afterAll(async () => {
    await mosquitto?.stop();
  });

  it("device agent: replay images that cannot be read leave no listener or broker connection open", async () => {
    const before = handles();
    const port = await freePort();
    const config = agentSchema.parse({
      bundle,
      broker: mosquitto.url,
      deviceId: "late",
      httpPort: port,
      httpHost: "127.0.0.1",
      source: ["http", "replay", "mqtt"],
      replayImages: "/nonexistent/images.idx",
    });
    // By then it had opened its stages, connected to the broker, listened, and subscribed its input.
    await expect(startAgent(config, {}, log)).rejects.toThrow(
      /\/nonexistent\/images.idx: cannot read the idx file \(ENOENT\)/,
    );
    await expectBackTo(before);
    expect(await refused(port)).toBe(true);
  });

  it("server and gateway: an HTTP port in use leaves no workers or broker connection behind", async () => {
    const busy = createServer();
    await new Promise<void>((r) => busy.listen(0, "127.0.0.1", () => r()));
    const port = (busy.address() as { port: number }).port;
    try {
      const before = handles();
      const common = { bundle, broker: mosquitto.url, httpPort: port, httpHost: "127.0.0.1" };
      await expect(startServer(serverSchema.parse({ ...common, workers: 2 }), log)).rejects.toThrow(
        /EADDRINUSE/,
      );
      await expectBackTo(before);
      await expect(
        startGateway(gatewaySchema.parse({ ...common, stages: ["edge"] }), log),
      ).rejects.toThrow(/EADDRINUSE/);
      await expectBackTo(before);
    } finally {
      busy.close();
    }
  });

  it("a tier that started closes everything it holds in reverse order", async () => {
    const before = handles();
    const s = await startServer(
      serverSchema.parse({ bundle, broker: mosquitto.url, httpPort: 0, httpHost: "127.0.0.1" }),
      log,
    );
    expect(s.resources.names).toEqual([
      "inference workers",
      "broker connection",
      "request subscription",
      "HTTP server",
    ]);
    const port = s.port;
    await s.close();
    await expectBackTo(before);
    expect(await refused(port)).toBe(true);
  });

  it("device agent: restarts from its bundle cache while the bundle's origin is down", async () => {
    const verified = await readBundle(`${root}/models/fashion-deep`);
    const archive = packReproducibly(bundleFiles(verified));
    let up = true;
    let requests = 0;
    const origin = createHttpServer((_req, res) => {
      requests++;
      if (up) res.writeHead(200, { "Content-Length": archive.length }).end(archive);
      else res.writeHead(503).end();
    });
    await new Promise<void>((r) => origin.listen(0, "127.0.0.1", r));
    const url = `http://127.0.0.1:${(origin.address() as { port: number }).port}/fashion-deep.tar.gz`;
    const cache = tempDir();
    const config = agentSchema.parse({
      bundle: url,
      bundleDigest: verified.digest,
      bundleCache: cache,
      broker: mosquitto.url,
      deviceId: "cached",
      httpPort: 0,
      httpHost: "127.0.0.1",
      source: ["http"],
    });
    const answer = async (port: number) => {
      const res = await fetch(`http://127.0.0.1:${port}/v1/infer`, {
        method: "POST",
        headers: { "Content-Type": "application/octet-stream" },
        body: new Uint8Array(784).fill(200),
      });
      expect(res.status).toBe(200);
      return (await res.json()) as { label: number };
    };
    try {
      const first = await startAgent(config, {}, log);
      const label = (await answer(first.port)).label;
      await first.close();
      expect(requests).toBe(1);
      up = false;
      const again = await startAgent(config, {}, log);
      try {
        expect((await answer(again.port)).label).toBe(label);
        expect(requests).toBe(1);
      } finally {
        await again.close();
      }
      // Without the cache the same start fails, naming the origin's answer.
      await expect(
        startAgent(agentSchema.parse({ ...config, bundleCache: undefined }), {}, log),
      ).rejects.toThrow(/HTTP 503/);
    } finally {
      origin.close();
    }
  });
});
