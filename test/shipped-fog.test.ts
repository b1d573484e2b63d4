/** The shipped model through the whole fog: `ddnn up` end to end, and the wire encodings' accuracy. */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { startEmbeddedBroker } from "../cli/broker.js";
import { shipped } from "../cli/paths.js";
import { readIdx } from "../core/dataset/idx.js";
import { Pipeline } from "../core/pipeline.js";
import { startFog } from "./support/fog.js";
import { ddnn, root } from "./support/run.js";

const models = ["fashion-deep", "fashion-3tier"].filter((m) =>
  existsSync(join(root, "models", m, "ddnn.json")),
);

describe("the shipped models through the fog", () => {
  it("ships both bundles and the evaluation sample", () => {
    expect(models).toEqual(["fashion-deep", "fashion-3tier"]);
    expect(existsSync(shipped().images)).toBe(true);
  });

  for (const model of models) {
    it(`ddnn up runs ${model} end to end and reproduces the in-process answers with f32 frames`, async () => {
      const r = await ddnn([
        "up",
        "--bundle",
        join(root, "models", model),
        "--limit",
        "400",
        "--devices",
        "3",
        "--fps",
        "400",
        "--dtype",
        "f32",
        "--compression",
        "none",
        // Correctness, not latency: a loaded CI machine must not turn answers into degraded ones.
        "--deadline-ms",
        "10000",
        "--json",
      ]);
      expect(r.code).toBe(0);
      const report = JSON.parse(r.stdout);
      expect(report.samples).toBe(400);
      expect(report.deviceAndServer.degraded).toBe(0);
      expect(report.deviceAndServer.agreementWithInProcess).toBe(1);
      expect(report.deviceAndServer.overall).toBeCloseTo(report.inProcess.overall, 12);
      expect(report.serverOnly.accuracy).toBeGreaterThan(0.8);
      expect(r.stderr).toMatch(/answered 400\/400/);
    });
  }

  it.each(["deflate", "sparse"] as const)(
    "u8q+%s frames keep 99% of labels and lose at most 0.5 points of Overall accuracy",
    async (compression) => {
      const broker = await startEmbeddedBroker();
      const dir = shipped().bundle;
      const images = await readIdx(shipped().images);
      const labels = await readIdx(shipped().labels);
      const n = images.shape[0]!;
      const reference = await Pipeline.load(dir);
      const expected = await reference.infer(images.data, n);
      const fog = await startFog({
        bundle: dir,
        broker: broker.url,
        stageNames: reference.manifest.stages.map((s) => s.name),
        sharedSubscriptions: false,
        dtype: "u8q",
        compression,
        devices: 4,
      });
      try {
        const answers = [];
        for (let start = 0; start < n; start += 200) {
          const chunk = Array.from({ length: Math.min(200, n - start) }, (_, j) => start + j);
          answers.push(
            ...(await Promise.all(
              chunk.map((i) =>
                fog.agents[i % 4]!.agent.classify(images.data.subarray(i * 784, (i + 1) * 784)),
              ),
            )),
          );
        }
        expect(answers.filter((a) => a.degraded)).toHaveLength(0);
        const same = answers.filter((a, i) => a.label === expected[i]!.label).length;
        expect(same / n).toBeGreaterThanOrEqual(0.99);
        const acc = (ls: number[]) => ls.filter((l, i) => l === labels.data[i]).length / n;
        const drop = acc(expected.map((e) => e.label)) - acc(answers.map((a) => a.label));
        expect(drop).toBeLessThanOrEqual(0.005);
      } finally {
        await fog.close();
        await broker.close();
      }
    },
  );
});
