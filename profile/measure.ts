/**
 * Table II from the distributed run itself: every column of a configuration is computed from the
 * answers its devices got (accuracies from the labels the tiers returned, Local and Ideal from the
 * exits the probe requests reported, times from the devices' clocks and the tiers' own timings).
 */

import { summarize } from "../core/stats.js";
import type { Answer } from "../device-agent/agent.js";
import type { ExitReport, LatencyStats, TableIIRow } from "./schema.js";

/** One replayed sample and the answer the fog gave. */
export interface Row {
  readonly index: number;
  readonly truth: number;
  readonly answer: Answer;
  /** performance.now() when the answer came. */
  readonly at: number;
}

/** One Server Only answer: the whole model on the server, the device only sends the image. */
export interface ServerOnlyRow {
  readonly index: number;
  readonly truth: number;
  readonly label: number;
  /** Index of the stage that answered (the last one). */
  readonly stage: number;
  /** Server compute, ms. */
  readonly serverMs: number;
  /** Round trip less server compute, ms. */
  readonly commMs: number;
  /** Preprocessing, send, wait, ms (what a device sees). */
  readonly totalMs: number;
  readonly bytes: number;
  /** Set when this sample got no answer. */
  readonly failed?: string;
}

export function latency(values: readonly number[]): LatencyStats | null {
  const finite = values.filter((v) => Number.isFinite(v));
  if (finite.length === 0) return null;
  const s = summarize(finite);
  return { n: s.n, mean: s.mean, p50: s.p50, p95: s.p95, p99: s.p99 };
}

const fraction = (part: number, whole: number) => (whole > 0 ? part / whole : null);

/** Every exit's label for a sample, by stage index; undefined where the run did not learn it. */
export function exitLabels(row: Row, stages: number): (number | undefined)[] {
  const out = new Array<number | undefined>(stages).fill(undefined);
  for (const e of row.answer.exits ?? []) if (e.stage < stages) out[e.stage] = e.label;
  return out;
}

export interface DeviceAndServer {
  readonly row: TableIIRow;
  readonly exits: readonly ExitReport[];
  readonly probe: { complete: number; missing: Record<string, number>; failed: number };
}

/**
 * The Device&Server row. Local: the device exit's label over every sample. Ideal: some exit right,
 * only when every exit's answer is known for every sample (probe mode). Server: accuracy of the
 * samples the last stage answered. Degraded answers count in Overall (they are the system's
 * answers) and in no exit's rate.
 */
export function deviceAndServer(
  rows: readonly Row[],
  names: readonly string[],
  thresholds: readonly (number | undefined)[],
): DeviceAndServer {
  const n = rows.length;
  const k = names.length;
  const last = k - 1;
  const labels = rows.map((r) => exitLabels(r, k));
  const missing: Record<string, number> = {};
  names.forEach((name, s) => {
    const m = labels.filter((l) => l[s] === undefined).length;
    if (m > 0) missing[name] = m;
  });
  const complete = labels.filter((l) => l.every((x) => x !== undefined)).length;
  const answeredAt = (s: number) =>
    rows.filter((r) => !r.answer.degraded && r.answer.stageIndex === s);
  const correct = (rs: readonly Row[]) => rs.filter((r) => r.answer.label === r.truth).length;
  const exits: ExitReport[] = names.map((stage, s) => {
    const here = answeredAt(s);
    const known = labels.filter((l) => l[s] !== undefined).length;
    return {
      stage,
      threshold: thresholds[s] ?? null,
      exitRate: n ? here.length / n : 0,
      accuracyAll:
        known === n && n > 0 ? labels.filter((l, i) => l[s] === rows[i]!.truth).length / n : null,
      accuracyExited: fraction(correct(here), here.length),
    };
  });
  const degraded = rows.filter((r) => r.answer.degraded);
  const sent = rows.filter((r) => r.answer.bytesSent > 0);
  const bytes = sent.reduce((a, r) => a + r.answer.bytesSent, 0);
  const t = (f: (r: Row) => number) => latency(rows.map(f));
  const reasons = [...new Set(degraded.map((d) => d.answer.reason ?? "unknown"))];
  const row: TableIIRow = {
    configuration: "Device&Server",
    transport: "MQTT",
    samples: n,
    accuracy: {
      local: exits[0]?.accuracyAll ?? null,
      server: k > 1 ? (exits[last]?.accuracyExited ?? null) : null,
      overall: fraction(correct(rows), n),
      ideal:
        complete === n && n > 0
          ? labels.filter((l, i) => l.some((x) => x === rows[i]!.truth)).length / n
          : null,
    },
    timingsMs: {
      device: t((r) => r.answer.timings.device),
      server: t((r) => r.answer.timings.upstream),
      comm: t((r) => r.answer.timings.comm),
      total: t((r) => r.answer.timings.total),
    },
    bytesPerOffload: sent.length ? bytes / sent.length : null,
    bytesPerSample: n ? bytes / n : null,
    exitRates: exits.map((e) => ({ stage: e.stage, rate: e.exitRate })),
    degraded: degraded.length,
    ...(degraded.length || complete < n
      ? {
          note: [
            degraded.length
              ? `${degraded.length} degraded answers (${reasons.join(", ")}): the device's own exit, counted in Overall, in no exit rate`
              : "",
            complete < n
              ? `${n - complete} samples lack some exit's answer (${Object.entries(missing)
                  .map(([s, m]) => `${s} ${m}`)
                  .join(", ")}): Ideal not computed`
              : "",
          ]
            .filter(Boolean)
            .join("; "),
        }
      : {}),
  };
  return {
    row,
    exits,
    probe: {
      complete,
      missing,
      failed: rows.filter((r) => r.answer.probe?.failed !== undefined).length,
    },
  };
}

/** A Server Only row: the last stage answers every sample, the device only sends the image. */
export function serverOnly(
  rows: readonly ServerOnlyRow[],
  names: readonly string[],
  configuration: string,
  transport: string,
): TableIIRow {
  const ok = rows.filter((r) => r.failed === undefined);
  const right = ok.filter((r) => r.label === r.truth).length;
  const accuracy = fraction(right, ok.length);
  const bytes = ok.reduce((a, r) => a + r.bytes, 0);
  const failed = rows.length - ok.length;
  return {
    configuration,
    transport,
    samples: rows.length,
    accuracy: { local: null, server: accuracy, overall: accuracy, ideal: accuracy },
    timingsMs: {
      device: null,
      server: latency(ok.map((r) => r.serverMs)),
      comm: latency(ok.map((r) => r.commMs)),
      total: latency(ok.map((r) => r.totalMs)),
    },
    bytesPerOffload: ok.length ? bytes / ok.length : null,
    bytesPerSample: rows.length ? bytes / rows.length : null,
    exitRates: names.map((stage, s) => ({
      stage,
      rate: rows.length ? ok.filter((r) => r.stage === s).length / rows.length : 0,
    })),
    degraded: 0,
    ...(failed
      ? {
          note: `${failed} requests got no answer (${[...new Set(rows.map((r) => r.failed).filter(Boolean))].join(", ")}); accuracy over the answered`,
        }
      : {}),
  };
}
