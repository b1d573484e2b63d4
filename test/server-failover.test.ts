/**
 * A server process dies under load (issue 11, "faults"). Two `ddnn server` processes serve the
 * shipped fashion-deep bundle through one Mosquitto 2, sharing the stage's requests through the
 * shared subscription `$share/<model>-server/...`; a device agent keeps 16 classifications in
 * flight; one server is SIGKILLed mid-run.
 *
 * What Mosquitto 2.0 does with the requests the dead server held: the servers connect with clean
 * sessions and take requests at QoS 1. A message Mosquitto has handed to a shared subscriber is
 * that subscriber's; when it disconnects, its clean session is thrown away with every unacked
 * message in it, and Mosquitto does NOT hand them to another member of the group (MQTT 5 4.8.2
 * says a server SHOULD once the session has ended; 3.1.1, which the tiers speak, has no shared
 * subscriptions at all; Mosquitto 2.0 does not do it). So the requests in the dead server's
 * hands are answered by the device's own exit when their deadline passes (degraded, reason
 * "deadline"), never twice, and so are the few published between the SIGKILL
 * and the moment the broker reads the closed socket (0 to 8 in the runs here, up to ~400 ms on a
 * loaded machine); every request published after that goes to the survivor. The test measures and
 * prints which of these happened (docs/faults.md, "A server dies under load").
 */
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  metricSum,
  type ServerProcess,
  startServerProcess,
} from "../bench/support/server-process.js";
import { shipped } from "../cli/paths.js";
import { readIdx } from "../core/dataset/idx.js";
import { makeLogger } from "../core/runtime/tier.js";
import type { Answer } from "../device-agent/agent.js";
import { agentSchema } from "../device-agent/config.js";
import { type RunningAgent, startAgent } from "../device-agent/main.js";
import { waitFor } from "./support/fog.js";
import { type Mosquitto, startMosquitto } from "./support/mosquitto.js";
import { root } from "./support/run.js";

const BUNDLE = join(root, "models", "fashion-deep");
const MODEL = "default/fashion-deep";
const IN_FLIGHT = 16;
// Generous: CI runs this on a loaded 2-core machine, three times in a row.
const DEADLINE_MS = 1500;
const SLACK_MS = 1500;

interface Call {
  readonly i: number;
  readonly t0: number;
  t1?: number;
  answer?: Answer;
  error?: unknown;
}

let broker: Mosquitto;
let images: Uint8Array;
let per: number;
let count: number;

beforeAll(async () => {
  broker = await startMosquitto();
  const idx = await readIdx(shipped().images);
  images = idx.data as Uint8Array;
  count = idx.shape[0] ?? 0;
  per = (idx.shape[1] ?? 0) * (idx.shape[2] ?? 0);
});
afterAll(async () => {
  await broker?.stop();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("a server process dies under load (two servers, one shared subscription, Mosquitto 2)", () => {
  it("every request gets exactly one answer within its deadline, and the survivor takes all the work", async () => {
    const servers: ServerProcess[] = [];
    let agent: RunningAgent | undefined;
    const observer = await mqtt.connectAsync(broker.url, {
      protocolVersion: 4,
      clientId: `failover-observer-${process.pid}`,
    });
    // Every reply frame on the device's reply topic, by id: a duplicate would show here even
    // though the agent itself only resolves a classification once.
    const replies = new Map<string, number>();
    observer.on("message", (_t, payload) => {
      const h = payload.readUInt32LE(4);
      const header = JSON.parse(payload.toString("utf8", 8, 8 + h)) as { id?: string };
      replies.set(String(header.id), (replies.get(String(header.id)) ?? 0) + 1);
    });
    await observer.subscribeAsync("ddnn/default/fashion-deep/reply/#", { qos: 1 });
    let running = true;
    const drivers: Promise<void>[] = [];
    try {
      for (let s = 0; s < 2; s++)
        servers.push(
          await startServerProcess({
            bundle: BUNDLE,
            broker: broker.url,
            model: MODEL,
            workers: 1,
            maxBatch: 16,
            sharedSubscriptions: true,
          }),
        );
      const [victim, survivor] = servers as [ServerProcess, ServerProcess];
      agent = await startAgent(
        agentSchema.parse({
          bundle: BUNDLE,
          broker: broker.url,
          model: MODEL,
          deviceId: "failover-0",
          deadlineMs: DEADLINE_MS,
          source: ["http"],
          httpHost: "127.0.0.1",
          httpPort: 0,
          sharedSubscriptions: true,
        }),
        {},
        makeLogger(process.env.DDNN_TEST_LOG ?? "error", "device"),
      );
      const a = agent;
      await waitFor(() => a.offload.subscribed, 10_000, "agent subscribed to its reply topic");

      const calls: Call[] = [];
      let next = 0;
      // 16 closed loops: each keeps one classification in flight, the next as soon as it ends.
      for (let d = 0; d < IN_FLIGHT; d++)
        drivers.push(
          (async () => {
            while (running) {
              const i = next++ % count;
              const call: Call = { i, t0: performance.now() };
              calls.push(call);
              try {
                call.answer = await a.agent.classify(images.subarray(i * per, (i + 1) * per));
              } catch (err) {
                call.error = err;
              }
              call.t1 = performance.now();
            }
          })(),
        );
      const served = async (s: ServerProcess) =>
        metricSum(await s.metrics(), "ddnn_requests_total");
      // Both servers take work before the kill (the shared subscription spreads it).
      await waitFor(
        () => calls.filter((c) => c.answer?.tier === "server").length >= 200,
        60_000,
        "200 offloads answered before the kill",
      );
      const before = await Promise.all(servers.map(served));
      expect(before[0]).toBeGreaterThan(0);
      expect(before[1]).toBeGreaterThan(0);

      const killedAt = performance.now();
      const inFlightAtKill = calls.filter((c) => c.t1 === undefined).length;
      process.kill(victim.pid, "SIGKILL");
      const survivorAtKill = await served(survivor);
      // Returns once the process is gone (it is already SIGKILLed, so nothing graceful happens).
      await victim.stop();
      const deadAt = performance.now();
      await sleep(6000);
      running = false;
      await Promise.all(drivers);
      // A request Mosquitto handed to the survivor late would be answered after its deadline:
      // give such replies time to show on the observer.
      await sleep(2000);
      const survivorAtEnd = await served(survivor);

      // Exactly one answer per request, none an error, each within its deadline plus slack.
      expect(calls.filter((c) => c.error !== undefined || !c.answer)).toEqual([]);
      const late = calls.filter((c) => c.t1! - c.t0 > DEADLINE_MS + SLACK_MS);
      expect(late.map((c) => Math.round(c.t1! - c.t0))).toEqual([]);
      expect([...replies].filter(([, n]) => n > 1)).toEqual([]);

      const offloaded = calls.filter((c) => c.answer!.tier === "server");
      const degraded = calls.filter((c) => c.answer!.degraded);
      // Degraded answers are the device's own exit, when the deadline passed (or, on a machine
      // loaded enough, when the survivor answered deadline_exceeded first).
      for (const c of degraded) {
        expect(c.answer!.tier).toBe("device");
        expect(["deadline", "upstream_error"]).toContain(c.answer!.reason);
      }
      // Requests sent once the broker has seen the dead server's socket close (it does at once;
      // 2 s leave a loaded machine's Mosquitto time to read it) are all answered by the
      // survivor, none degraded.
      const after = calls.filter((c) => c.t0 > deadAt + 2000);
      const afterOffloaded = after.filter((c) => c.answer!.tier === "server");
      expect(afterOffloaded.length).toBeGreaterThan(50);
      expect(after.filter((c) => c.answer!.degraded)).toEqual([]);
      // The survivor answered at least every offload that ended after the kill.
      const endedAfterKill = offloaded.filter((c) => c.t1! > killedAt).length;
      expect(survivorAtEnd - survivorAtKill).toBeGreaterThanOrEqual(endedAfterKill - IN_FLIGHT);
      // The requests the dead server held: degraded (deadline) or answered by the survivor.
      const held = calls.filter((c) => c.t0 < killedAt && c.t1! > killedAt);
      const report = {
        requests: calls.length,
        offloaded: offloaded.length,
        answeredLocallyByExit: calls.length - offloaded.length - degraded.length,
        degraded: degraded.length,
        inFlightAtKill,
        inFlightAtKillAnsweredByServer: held.filter((c) => c.answer!.tier === "server").length,
        inFlightAtKillDegraded: held.filter((c) => c.answer!.degraded).length,
        servedBeforeKill: before,
        survivorAfterKill: survivorAtEnd - survivorAtKill,
        degradedSentAfterKill: degraded.filter((c) => c.t0 > killedAt).length,
        killToExitMs: Math.round(deadAt - killedAt),
        offloadsSent2sAfterExit: afterOffloaded.length,
        // Replies to requests the device had already answered itself (0: the dead server's
        // unacked requests were dropped with its session, not handed to the survivor).
        repliesAfterDeadline: replies.size - offloaded.length,
        maxMs: Math.round(Math.max(...calls.map((c) => c.t1! - c.t0))),
      };
      console.log(`server-failover: ${JSON.stringify(report)}`);
      expect(replies.size - offloaded.length).toBeGreaterThanOrEqual(0);
      expect(replies.size - offloaded.length).toBeLessThanOrEqual(degraded.length);
    } finally {
      running = false;
      await Promise.all(drivers);
      await agent?.close();
      await Promise.all(servers.map((s) => s.stop()));
      await observer.endAsync();
    }
  }, 180_000);
});
