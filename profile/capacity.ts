/**
 * Capacity of one server replica. The model: the server's measured compute per offloaded sample
 * and the offload ratio give the samples per second its workers carry, hence the devices per
 * replica at F frames per second. The ramp: the devices replay again at rising offered loads (each
 * step twice the last, no probes) until p99 T_Total passes the SLO; that step is the measured
 * saturation. The report shows both, and why they differ.
 */
import { latency, type Row } from "./measure.js";
import type { Capacity, CapacityStep } from "./schema.js";

/** Runs the fog's devices at one offered load (samples per second, all devices). */
export type ReplayAt = (offeredPerS: number, samples: number) => Promise<readonly Row[]>;

export interface CapacityInput {
  /** The Device&Server pass (its server timings and offload ratio feed the model). */
  readonly rows: readonly Row[];
  /** CPU seconds of this process (all tiers) per sample during that pass, and the cores it had. */
  readonly cpuMsPerSample: number;
  readonly cores: number;
  readonly lastStage: number;
  readonly workers: number;
  readonly fps: number;
  readonly devices: number;
  readonly sloMs: number;
  readonly steps: number;
  readonly samples: number;
}

export async function measureCapacity(
  input: CapacityInput,
  replayAt: ReplayAt,
  progress: (s: string) => void,
): Promise<Capacity> {
  const { rows } = input;
  const toServer = rows.filter(
    (r) => !r.answer.degraded && r.answer.upstreamTimings?.server !== undefined,
  );
  const serverMsPerOffload = toServer.length
    ? toServer.reduce((a, r) => a + (r.answer.upstreamTimings?.server ?? 0), 0) / toServer.length
    : Number.NaN;
  const offloadRatio = rows.length ? toServer.length / rows.length : 0;
  const predictedSamplesPerS =
    serverMsPerOffload > 0 && offloadRatio > 0
      ? (input.workers * 1000) / (serverMsPerOffload * offloadRatio)
      : Number.POSITIVE_INFINITY;
  const steps: CapacityStep[] = [];
  let saturation: number | null = null;
  let offered = input.devices * input.fps;
  for (let i = 0; i < input.steps; i++) {
    progress(`capacity ramp: ${offered.toFixed(0)} samples/s offered`);
    const got = await replayAt(offered, input.samples);
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
    };
    steps.push(step);
    if (!(step.p99TotalMs <= input.sloMs)) {
      saturation = offered;
      break;
    }
    offered *= 2;
  }
  // The whole fog shares this machine: its CPU per sample bounds what any tier can carry.
  const fogBoundPerS = input.cpuMsPerSample > 0 ? (input.cores * 1000) / input.cpuMsPerSample : 0;
  const ratio = saturation !== null ? predictedSamplesPerS / saturation : null;
  const notes = [
    `model: ${input.workers} server workers x 1000 / (${serverMsPerOffload.toFixed(3)} ms server compute per offload x offload ratio ${(offloadRatio * 100).toFixed(1)}%) = ${Number.isFinite(predictedSamplesPerS) ? predictedSamplesPerS.toFixed(0) : "unbounded"} samples/s`,
    saturation === null
      ? `the ramp did not pass ${input.sloMs} ms p99 up to ${steps.at(-1)?.offeredPerS.toFixed(0)} samples/s offered`
      : `measured: p99 T_Total passed ${input.sloMs} ms at ${saturation.toFixed(0)} samples/s offered (the step before held it)`,
  ];
  const deviceMs = rows.length
    ? rows.reduce((a, r) => a + r.answer.timings.device, 0) / rows.length
    : 0;
  if (saturation !== null && (saturation * deviceMs) / 1000 >= 0.5)
    notes.push(
      `at ${saturation.toFixed(0)} samples/s the devices' own compute (mean T_Device ${deviceMs.toFixed(3)} ms) takes ${((saturation * deviceMs) / 1000).toFixed(2)} s per second on the one event loop all agents share here: the devices, not the server, saturate first`,
    );
  if (ratio !== null && (ratio > 1.3 || ratio < 1 / 1.3))
    notes.push(
      `prediction / measurement = ${ratio.toFixed(2)}, outside 30%: the model counts only the server's inference compute, while every tier, the broker and the devices share this machine's ${input.cores} cores in one process, which spent ${input.cpuMsPerSample.toFixed(3)} ms of CPU per sample during the Device&Server pass (agents' start-up and probe requests included; ${fogBoundPerS.toFixed(0)} samples/s at full use of the cores); MQTT, frame coding and the event loop cost more than the model's compute`,
    );
  return {
    sloMs: input.sloMs,
    framesPerS: input.fps,
    serverMsPerOffload,
    offloadRatio,
    serverWorkers: input.workers,
    predictedSamplesPerS,
    predictedDevicesPerReplica: predictedSamplesPerS / input.fps,
    steps,
    measuredSaturationPerS: saturation,
    measuredDevicesPerReplica: saturation === null ? null : saturation / input.fps,
    note: notes.join("; "),
  };
}
