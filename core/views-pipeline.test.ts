import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { shippedViews, viewsSample } from "../cli/paths.js";
import { readIdx } from "./dataset/idx.js";
import { adaptiveDecisions } from "./evaluation.js";
import { ViewsPipeline } from "./views-pipeline.js";

const n = 200;
let pipeline: ViewsPipeline;
let pixels: Uint8Array[];

beforeAll(async () => {
  pipeline = await ViewsPipeline.load(shippedViews(), { intraOpThreads: 1 });
  const sample = viewsSample(shippedViews(), 3)!;
  const per = pipeline.samplePixels;
  pixels = (await Promise.all(sample.images.map((p) => readIdx(p)))).map((i) =>
    i.data.subarray(0, n * per),
  );
});
afterAll(() => pipeline?.release());

describe("the in-process multi-view pipeline", () => {
  for (const missing of [[], [2], [0, 1]]) {
    it(`adaptive answers equal every exit's decisions, views ${JSON.stringify(missing)} missing`, async () => {
      const input = pixels.map((p, v) => (missing.includes(v) ? undefined : p));
      const full = await pipeline.evaluateAll(input, n, 64);
      const { exitStage, label } = adaptiveDecisions(full, pipeline.policy);
      const adaptive = await pipeline.infer(input, n);
      expect(adaptive.map((r) => r.stage)).toEqual(Array.from(exitStage));
      expect(adaptive.map((r) => r.label)).toEqual(Array.from(label));
      expect(adaptive[0]!.views).toEqual([0, 1, 2].filter((v) => !missing.includes(v)));
      // Both exits are taken by some samples, so the test covers the aggregate and the server.
      expect(new Set(exitStage).size).toBe(2);
    });
  }

  it("one view present is that view's device alone: the aggregate changes nothing", async () => {
    const eight = pixels[1]!.subarray(0, 8 * pipeline.samplePixels);
    const fused = await pipeline.fuse([undefined, eight, undefined], 8);
    const device = pipeline.devices[1]!;
    const alone = await device.runStage(0, device.inputTensor(eight, 8));
    expect(Array.from(fused.logits)).toEqual(Array.from(alone.logits));
    expect(Array.from(fused.features!.data as Float32Array)).toEqual(
      Array.from(alone.features!.data as Float32Array),
    );
  });
});
