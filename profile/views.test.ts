import { describe, expect, it } from "vitest";
import { ExitPolicy } from "../core/exit.js";
import type { ExitAnswer } from "../core/wire/frame.js";
import type { Answer } from "../device-agent/agent.js";
import type { Row } from "./measure.js";
import { predict } from "./sweep.js";
import {
  horizontalRun,
  type ViewsPass,
  type ViewsReference,
  viewsPath,
  viewsTraces,
} from "./views.js";

const names = ["device", "server"];

/** One device's answer of a capture, as the fusion gateway gives it. */
function answer(
  at: 0 | 1,
  exits: ExitAnswer[],
  options: { views?: number[]; degraded?: boolean; timings?: Record<string, number> } = {},
): Answer {
  const last = exits[exits.length - 1]!;
  const upstreamTimings =
    options.timings ??
    (at === 0
      ? { edge: 1, edgeQueue: 2 }
      : {
          edge: 1,
          edgeQueue: 2,
          server: 3,
        });
  const upstream = Object.entries(upstreamTimings)
    .filter(([k]) => !k.endsWith("Queue"))
    .reduce((a, [, v]) => a + v, 0);
  const comm = at === 0 ? 8 : 20;
  return {
    label: last.label,
    labelName: String(last.label),
    stage: names[at]!,
    stageIndex: at,
    tier: at === 0 ? "edge" : "server",
    entropy: last.entropy,
    degraded: options.degraded ?? false,
    timings: { device: 0.5, comm, upstream, total: 0.5 + comm + upstream + 1 },
    bytesSent: 100,
    upstreamTimings,
    exits,
    views: options.views ?? [0, 1],
  };
}

const row = (index: number, truth: number, a: Answer): Row => ({ index, truth, answer: a, at: 0 });

/** Three captures: the aggregate answers 0 and 2, capture 1 goes on to the server. */
function run(probeViews2: number[] = [0, 1]) {
  const truth = [1, 4, 6];
  const mainAnswers = [
    answer(0, [{ stage: 0, label: 1, entropy: 0.1 }]),
    answer(1, [
      { stage: 0, label: 3, entropy: 0.6 },
      { stage: 1, label: 4, entropy: 0.2 },
    ]),
    answer(0, [{ stage: 0, label: 5, entropy: 0.2 }]),
  ];
  // The probe pass sends every capture on: the server's answer of 0 and 2 as well.
  const probeAnswers = [
    answer(1, [
      { stage: 0, label: 1, entropy: 0.1 },
      { stage: 1, label: 2, entropy: 0.5 },
    ]),
    mainAnswers[1]!,
    answer(
      1,
      [
        { stage: 0, label: 5, entropy: 0.2 },
        { stage: 1, label: 6, entropy: 0.3 },
      ],
      { views: probeViews2 },
    ),
  ];
  const rows = (answers: Answer[]) => [0, 1].map(() => answers.map((a, i) => row(i, truth[i]!, a)));
  const main: ViewsPass = {
    rows: rows(mainAnswers),
    wallS: 1,
    viewBytes: new Array(6).fill(100),
    forwardedBytes: [150],
  };
  const probe: ViewsPass = {
    rows: rows(probeAnswers),
    wallS: 1,
    viewBytes: new Array(6).fill(100),
    forwardedBytes: [150, 150, 150],
  };
  const reference: ViewsReference = {
    policy: new ExitPolicy([0.4, undefined]),
    inProcess: { local: 1 / 3, server: 1, overall: 2 / 3, ideal: 1, exitRates: {} },
    exitStage: Int32Array.from([0, 1, 0]),
    label: Int32Array.from([1, 4, 5]),
    alone: [
      { accuracy: 0, overall: 1 / 3 },
      { accuracy: 1 / 3, overall: 2 / 3 },
    ],
  };
  const h = horizontalRun({
    main,
    probe,
    names,
    thresholds: [0.4, undefined],
    reference,
    layout: { count: 2, localAggregation: "avg", featureAggregation: "max" },
    fusionWindowMs: 50,
  });
  return { h, main, probe };
}

describe("the horizontal DDNN's Table II from the run and its probe pass", () => {
  it("takes Local from the aggregate, Server and Overall from the run, Ideal with the probe pass's later exits", () => {
    const { h } = run();
    const { accuracy } = h.ds.row;
    expect(accuracy.local).toBeCloseTo(1 / 3, 12);
    expect(accuracy.overall).toBeCloseTo(1 / 3 + 1 / 3, 12);
    expect(accuracy.server).toBe(1);
    // Capture 2: wrong at the aggregate, right at the server (known from the probe pass only).
    expect(accuracy.ideal).toBe(1);
    expect(h.ds.exits.map((e) => e.exitRate)).toEqual([2 / 3, 1 / 3]);
    expect(h.views).toMatchObject({
      captures: 3,
      capturesFusedComplete: 3,
      sameAnswerOnEveryDevice: 3,
      agreementWithInProcess: 1,
      bestSingleView: 1,
      probePass: { answered: 3, degraded: 0, differed: 0 },
    });
  });

  it("counts bytes as the broker carried them: a view frame per device, the forwarded requests per capture", () => {
    const { h } = run();
    expect(h.ds.row.bytesPerOffload).toBe(100);
    expect(h.ds.row.bytesPerSample).toBe((6 * 100 + 150) / 3);
    expect(h.views.bytes).toEqual({
      viewFrame: 100,
      forwardedFrame: 150,
      forwarded: 1,
      perCapture: 250,
    });
  });

  it("does not use a probe answer fused from other views than the run's", () => {
    const { h } = run([0]);
    expect(h.views.probePass?.differed).toBe(1);
    expect(h.ds.row.accuracy.ideal).toBeNull();
    expect(h.ds.probe.missing).toEqual({ server: 1 });
  });

  it("traces every capture's path to each exit: measured, or the aggregate's share of a deeper answer", () => {
    const { h, main, probe } = run();
    const t = viewsTraces(h, main, probe, 2);
    expect(t.traces).toHaveLength(3);
    expect(t.incomplete).toBe(0);
    // Measured: the aggregate's round trip of 0 (8 + 1), the server's of 1 (20 + 4) and, from the
    // probe pass, of 0 and 2. Capture 1's aggregate: edge 1 + window 2 + 2 of the 4 messages'
    // share of 20 + 4 - 4 compute - 2 queue = 18.
    expect(t.traces.map((s) => s.roundTripMs)).toEqual([
      [9, 24],
      [1 + 2 + (2 * 18) / 4, 24],
      [9, 24],
    ]);
    expect(t.traces.map((s) => s.bytes)).toEqual([200, 200, 200]);
    // At the run's threshold the sweep's model gives the run's figures.
    const path = viewsPath(t, h.views.bytes.forwardedFrame);
    const now = predict(t, [0.4, undefined], path);
    expect(now.exitRates).toEqual([2 / 3, 1 / 3]);
    expect(now.overallAccuracy).toBeCloseTo(2 / 3, 12);
    expect(now.bytesPerSample).toBeCloseTo(200 + 150 / 3, 12);
    expect(now.meanTotalMs).toBeCloseTo(
      h.captures.reduce((a, r) => a + r.answer.timings.total, 0) / 3,
      12,
    );
    // Threshold 0: every capture goes on, and the server answers all three right but capture 0.
    const never = predict(t, [0, undefined], path);
    expect(never.exitRates).toEqual([0, 1]);
    expect(never.overallAccuracy).toBeCloseTo(2 / 3, 12);
    expect(never.bytesPerSample).toBe(350);
  });
});
