/**
 * Capacity of one server replica. The model: the server process's own CPU per offloaded sample
 * (read from /proc/<pid>/stat around each step of the ramp) and the offload ratio give the
 * samples per second the cores a replica can use carry, hence the devices per replica at F frames
 * per second; on this machine, where the devices and the broker share the cores, all their CPU
 * per sample bounds it further. The ramp: the devices replay again at rising offered loads (each
 * step twice the last, no probes) until p99 T_Total passes the SLO; the throughput carried up to
 * there is the measured saturation. The report shows both, and why they differ, with figures.
 */
import { readFileSync } from "node:fs";
import { latency, type Row } from "./measure.js";
import type { Capacity, CapacityStep } from "./schema.js";

/** A step that carries less than this share of its offered load has saturated the fog. */
const CARRIED = 0.9;

/** Runs the fog's devices at one offered load (samples per second, all devices). */
export type ReplayAt = (offeredPerS: number, samples: number) => Promise<readonly Row[]>;

export interface CapacityInput {
  /** The Device&Server pass (its offload ratio feeds the model; its reply timings when no CPU is readable). */
  readonly rows: readonly Row[];
  /** CPU time the server process has used so far, ms; absent when the server runs elsewhere. */
  readonly serverCpuMs?: (() => number) | undefined;
  /** CPU time this process (devices, broker, gateway, profiler) has used so far, ms. */
  readonly localCpuMs: () => number;
  readonly cores: number;
  readonly lastStage: number;
  readonly workers: number;
  readonly fps: number;
  readonly devices: number;
  readonly sloMs: number;
  readonly steps: number;
  readonly samples: number;
}

/** The 1-minute load average (runnable processes), or null where /proc/loadavg is not readable. */
function loadAverage(): string | null {
  try {
    return readFileSync("/proc/loadavg", "utf8").split(" ")[0] ?? null;
  } catch {
    return null;
  }
}

/** Answered by the server (not degraded, the server's compute in the reply). */
const reachedServer = (r: Row) =>
  !r.answer.degraded && r.answer.upstreamTimings?.server !== undefined;
/**
 * A request that reached the server and cost its work, answered in time or not: a degraded answer
 * is an offload that came back too late (its bytes are not counted as sent), which the server
 * still ran.
 */
const sentToServer = (r: Row) => reachedServer(r) || r.answer.degraded;

export async function measureCapacity(
  input: CapacityInput,
  replayAt: ReplayAt,
  progress: (s: string) => void,
): Promise<Capacity> {
  const { rows } = input;
  const toServer = rows.filter(reachedServer);
  // A degraded answer's request reached the server too, late (with a gateway: an upper bound).
  const offloadRatio = rows.length ? rows.filter(sentToServer).length / rows.length : 0;
  const steps: CapacityStep[] = [];
  /** Per step: server CPU, local CPU, offloads, samples. */
  const used: { server: number; local: number; offloads: number; samples: number }[] = [];
  let saturation: number | null = null;
  let saturatedBy: "latency" | "throughput" | null = null;
  let offered = input.devices * input.fps;
  for (let i = 0; i < input.steps; i++) {
    progress(`capacity ramp: ${offered.toFixed(0)} samples/s offered`);
    const server0 = input.serverCpuMs?.() ?? Number.NaN;
    const local0 = input.localCpuMs();
    const got = await replayAt(offered, input.samples);
    const serverCpu = (input.serverCpuMs?.() ?? Number.NaN) - server0;
    const localCpu = input.localCpuMs() - local0;
    const offloads = got.filter(sentToServer).length;
    used.push({ server: serverCpu, local: localCpu, offloads, samples: got.length });
    const total = latency(got.map((r) => r.answer.timings.total));
    // From the first answer to the last: the agents' start-up is not part of the load.
    const times = got.map((r) => r.at);
    const spanS = got.length > 1 ? (Math.max(...times) - Math.min(...times)) / 1000 : 0;
    const step: CapacityStep = {
      offeredPerS: offered,
      achievedPerS: spanS > 0 ? (got.length - 1) / spanS : 0,
      p50TotalMs: total?.p50 ?? Number.NaN,
      p99TotalMs: total?.p99 ?? Number.NaN,
      degraded: got.filter((r) => r.answer.degraded).length,
      serverCpuMsPerOffload:
        offloads > 0 && Number.isFinite(serverCpu) ? serverCpu / offloads : null,
      cpuMsPerSample:
        got.length > 0
          ? ((Number.isFinite(serverCpu) ? serverCpu : 0) + localCpu) / got.length
          : null,
    };
    steps.push(step);
    // Saturated: latency past the SLO, or the fog no longer carries what it is offered.
    const latencyBound = !(step.p99TotalMs <= input.sloMs);
    if (latencyBound || step.achievedPerS < CARRIED * offered) {
      saturation = offered;
      saturatedBy = latencyBound ? "latency" : "throughput";
      break;
    }
    offered *= 2;
  }
  // The model's figures from the busiest step that held (the first if none did): the CPU a
  // sample costs falls as load grows (larger batches, fuller event-loop turns), and the step
  // nearest saturation costs what saturation does.
  const heldSteps = saturation === null ? used.length : used.length - 1;
  const held = used.slice(Math.max(0, heldSteps - 1), Math.max(1, heldSteps));
  const sum = (f: (u: (typeof used)[number]) => number) => held.reduce((a, u) => a + f(u), 0);
  const fromProcess = input.serverCpuMs !== undefined && sum((u) => u.offloads) > 0;
  const serverMsPerOffload = fromProcess
    ? sum((u) => u.server) / sum((u) => u.offloads)
    : toServer.length
      ? toServer.reduce((a, r) => a + (r.answer.upstreamTimings?.server ?? 0), 0) / toServer.length
      : Number.NaN;
  // A replica's main thread and its inference workers can each keep a core busy.
  const serverCores = Math.min(input.cores, input.workers + 1);
  const predictedSamplesPerS =
    serverMsPerOffload > 0 && offloadRatio > 0
      ? (serverCores * 1000) / (serverMsPerOffload * offloadRatio)
      : Number.POSITIVE_INFINITY;
  const cpuMsPerSample =
    sum((u) => u.samples) > 0
      ? (sum((u) => (Number.isFinite(u.server) ? u.server : 0)) + sum((u) => u.local)) /
        sum((u) => u.samples)
      : Number.NaN;
  // Here every tier and the devices share the machine: all their CPU per sample bounds the load.
  const machineBoundPerS = cpuMsPerSample > 0 ? (input.cores * 1000) / cpuMsPerSample : null;
  const predictedHerePerS =
    machineBoundPerS === null
      ? predictedSamplesPerS
      : Math.min(predictedSamplesPerS, machineBoundPerS);
  const measuredThroughputPerS =
    saturation === null ? null : Math.max(...steps.map((s) => s.achievedPerS));
  const ratio = measuredThroughputPerS ? predictedHerePerS / measuredThroughputPerS : null;
  const last = steps.at(-1);
  const lastUsed = used.at(-1);
  // The cores the fog's processes kept busy during the step that passed the SLO.
  const coresUsed =
    last && lastUsed && last.achievedPerS > 0 && Number.isFinite(lastUsed.server)
      ? ((lastUsed.server + lastUsed.local) / lastUsed.samples) * (last.achievedPerS / 1000)
      : null;
  const f0 = (x: number) => (Number.isFinite(x) ? x.toFixed(0) : "unbounded");
  const notes = [
    `model: ${serverCores} cores (min of ${input.cores} cores and ${input.workers} workers + the main thread) x 1000 / (${serverMsPerOffload.toFixed(3)} ms ${fromProcess ? "of the server process's own CPU (/proc/<pid>/stat) per offload, in the busiest step that held" : "server compute per offload from the replies' timings (wall time: the server runs elsewhere, its CPU is not readable here)"} x offload ratio ${(offloadRatio * 100).toFixed(1)}%) = ${f0(predictedSamplesPerS)} samples/s per replica`,
    machineBoundPerS === null
      ? "no CPU figures for this machine"
      : `on this machine the devices, broker, gateway and server share ${input.cores} cores: ${cpuMsPerSample.toFixed(3)} ms of CPU per sample (server ${fromProcess ? (sum((u) => u.server) / sum((u) => u.samples)).toFixed(3) : "?"} ms, the rest ${(sum((u) => u.local) / sum((u) => u.samples)).toFixed(3)} ms) bound it at ${f0(machineBoundPerS)} samples/s, so the prediction here is ${f0(predictedHerePerS)} samples/s`,
    saturation === null
      ? `the ramp did not pass ${input.sloMs} ms p99 up to ${steps.at(-1)?.offeredPerS.toFixed(0)} samples/s offered`
      : `measured: ${saturatedBy === "latency" ? `p99 T_Total passed ${input.sloMs} ms` : `the fog carried under ${CARRIED * 100}% of the load`} at ${saturation.toFixed(0)} samples/s offered, carrying at most ${measuredThroughputPerS!.toFixed(0)} samples/s`,
  ];
  if (ratio !== null)
    notes.push(
      ratio <= 1.3 && ratio >= 1 / 1.3
        ? `prediction here / measured throughput = ${ratio.toFixed(2)}, within 30%`
        : `prediction here / measured throughput = ${ratio.toFixed(2)}, outside 30%: ${
            ratio > 1
              ? `${last && last.achievedPerS >= 0.95 * last.offeredPerS ? `the step that passed the SLO carried ${last.achievedPerS.toFixed(0)} of the ${last.offeredPerS.toFixed(0)} samples/s offered, so latency (queueing), not throughput, passed the bound there and the measured figure is a floor; ` : ""}${coresUsed !== null ? `the fog's processes kept ${coresUsed.toFixed(2)} of the ${input.cores} cores busy in that step` : `the fog did not get its ${input.cores} cores`}${loadAverage() ? ` while the machine's load average was ${loadAverage()} (other work ran)` : ""}: the bound assumes all ${input.cores * 1000} ms of CPU per second are the fog's`
              : "the load stepped past the SLO below the CPU bound (a step twice the last overshoots), or the CPU per sample fell at higher load (larger batches)"
          }`,
    );
  return {
    sloMs: input.sloMs,
    framesPerS: input.fps,
    serverMsPerOffload,
    serverCpuSource: fromProcess ? "process" : "reply-timings",
    offloadRatio,
    serverWorkers: input.workers,
    serverCores,
    predictedSamplesPerS,
    predictedDevicesPerReplica: predictedSamplesPerS / input.fps,
    cpuMsPerSample,
    machineBoundPerS,
    predictedHerePerS,
    steps,
    measuredSaturationPerS: saturation,
    measuredThroughputPerS,
    measuredDevicesPerReplica: saturation === null ? null : measuredThroughputPerS! / input.fps,
    predictionOverMeasured: ratio,
    note: notes.join("; "),
  };
}
