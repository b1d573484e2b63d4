/**
 * The distributed run against the in-process pipeline, through a real broker: the embedded aedes
 * and a real Mosquitto 2, for bundles of 1 to 4 stages (server, gateway and device tiers).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type EmbeddedBroker, startEmbeddedBroker } from "../cli/broker.js";
import { Pipeline } from "../core/pipeline.js";
import { type FixtureStage, pseudoPixels, writeBundle } from "./support/bundle-fixture.js";
import { startFog } from "./support/fog.js";
import { type Mosquitto, startMosquitto } from "./support/mosquitto.js";

function stagesOf(k: number): FixtureStage[] {
  const names = ["cam", "gw", "rack", "cloud"].slice(0, k);
  const sizes = [12, 24, 16, 8];
  return names.map((name, i) => {
    const last = i === k - 1;
    return {
      name,
      inputName: i === 0 ? "x" : `h${i - 1}`,
      inShape: i === 0 ? [3, 2, 2] : [sizes[i - 1]!],
      ...(last
        ? {}
        : { featuresName: `h${i}`, featureSize: sizes[i]!, threshold: [0.1, 0.1, 0.1][i]! }),
      logitsName: `y${i}`,
      classes: 4,
      seed: 31 * (i + 1) + k,
    };
  });
}

let mosquitto: Mosquitto;
let aedes: EmbeddedBroker;
beforeAll(async () => {
  mosquitto = await startMosquitto();
  aedes = await startEmbeddedBroker();
});
afterAll(async () => {
  await mosquitto?.stop();
  await aedes?.close();
});

describe("the distributed run gives the in-process pipeline's answers", () => {
  it("1-stage bundle: the device answers every sample itself and sends nothing", async () => {
    const stages = stagesOf(1);
    const dir = writeBundle(stages, {
      input: { shape: [3, 2, 2], mean: [0.2, 0.4, 0.6], std: [0.3, 0.3, 0.5] },
    }).dir;
    const reference = await Pipeline.load(dir);
    const n = 300;
    const px = pseudoPixels(n, 12, 2);
    const expected = await reference.infer(px, n);
    // No broker at all: a one-stage model never needs one.
    const fog = await startFog({
      bundle: dir,
      broker: "mqtt://127.0.0.1:1",
      stageNames: ["cam"],
      sharedSubscriptions: false,
      devices: 2,
      skipSubscribeWait: true,
    });
    try {
      expect(fog.server).toBeUndefined();
      const answers = await Promise.all(
        Array.from({ length: n }, (_, i) =>
          fog.agents[i % 2]!.agent.classify(px.subarray(i * 12, (i + 1) * 12)),
        ),
      );
      expect(answers.map((a) => [a.tier, a.degraded, a.bytesSent])).toEqual(
        answers.map(() => ["device", false, 0]),
      );
      expect(answers.map((a) => [a.stageIndex, a.label])).toEqual(
        expected.map((e) => [e.stage, e.label]),
      );
    } finally {
      await fog.close();
    }
  });

  for (const broker of ["mosquitto", "aedes"] as const) {
    for (const k of [2, 3, 4]) {
      it(`${k}-stage bundle through ${broker}, f32 frames: same exit and label for every sample`, async () => {
        const stages = stagesOf(k);
        const dir = writeBundle(stages, {
          input: { shape: [3, 2, 2], mean: [0.2, 0.4, 0.6], std: [0.3, 0.3, 0.5] },
        }).dir;
        const reference = await Pipeline.load(dir);
        const n = 300;
        const px = pseudoPixels(n, 12, k + 1);
        const expected = await reference.infer(px, n);
        const fog = await startFog({
          bundle: dir,
          broker: broker === "mosquitto" ? mosquitto.url : aedes.url,
          stageNames: stages.map((s) => s.name),
          sharedSubscriptions: broker === "mosquitto",
          dtype: "f32",
          compression: "none",
          devices: 2,
        });
        try {
          const answers = await Promise.all(
            Array.from({ length: n }, (_, i) =>
              fog.agents[i % 2]!.agent.classify(px.subarray(i * 12, (i + 1) * 12)),
            ),
          );
          expect(answers.filter((a) => a.degraded)).toEqual([]);
          expect(answers.map((a) => [a.stageIndex, a.label])).toEqual(
            expected.map((e) => [e.stage, e.label]),
          );
          // Each tier answered some samples, so every hop of the protocol was exercised.
          expect(new Set(answers.map((a) => a.tier)).size).toBe(Math.min(k, 3));
          expect(answers.some((a) => a.bytesSent > 0)).toBe(true);
        } finally {
          await fog.close();
        }
      });
    }
  }
});
