/**
 * The `ddnn profile --json FILE` report (`ddnn-profile/v1`), documented field by field in
 * docs/profile.md. Times are milliseconds, accuracies and rates fractions in [0, 1], sizes bytes.
 * Every figure comes from the run itself; a figure the run could not measure is null and a note
 * says why.
 */

export const PROFILE_FORMAT = "ddnn-profile/v1";

/** mean, p50, p95, p99 of a time in ms over the samples of a configuration. */
export interface LatencyStats {
  readonly n: number;
  readonly mean: number;
  readonly p50: number;
  readonly p95: number;
  readonly p99: number;
}

/** One row of the reference paper's Table II: one configuration as measured on the fog. */
export interface TableIIRow {
  /** "Device&Server", "Server Only", "Server Only (HTTP)". */
  readonly configuration: string;
  /** "MQTT" or "HTTP". */
  readonly transport: string;
  /** Samples answered (degraded answers included). */
  readonly samples: number;
  readonly accuracy: {
    /** The first exit's answer over every sample (the device alone); null for Server Only. */
    readonly local: number | null;
    /** Accuracy of the samples the last stage answered; null when it answered none. */
    readonly server: number | null;
    /** Accuracy of the answers the system gave. */
    readonly overall: number | null;
    /** Fraction of samples some exit classifies correctly; null unless every exit's answer is known for every sample. */
    readonly ideal: number | null;
  };
  /** Per-sample times; device null for Server Only. */
  readonly timingsMs: {
    readonly device: LatencyStats | null;
    /** Upstream compute (edge + server), 0 for a sample answered on the device. */
    readonly server: LatencyStats | null;
    /** Round trip less upstream compute (broker, encoding, queues), 0 for a local answer. */
    readonly comm: LatencyStats | null;
    /** What the device saw, from its input to the answer. */
    readonly total: LatencyStats | null;
  };
  /** Mean bytes of one upstream frame (header included); null when nothing was sent. */
  readonly bytesPerOffload: number | null;
  /** Upstream bytes divided by all samples. */
  readonly bytesPerSample: number | null;
  /** Fraction of samples each stage's exit answered (degraded answers are in none). */
  readonly exitRates: readonly { readonly stage: string; readonly rate: number }[];
  /** Answers given by the device alone because upstream did not answer in time. */
  readonly degraded: number;
  readonly note?: string;
}

/** One exit's figures over the Device&Server run. */
export interface ExitReport {
  readonly stage: string;
  readonly threshold: number | null;
  readonly exitRate: number;
  /** This exit's accuracy over every sample (needs its answer for every sample); null otherwise. */
  readonly accuracyAll: number | null;
  /** Accuracy over the samples that exited here; null when none did. */
  readonly accuracyExited: number | null;
}

/** The whole system's figures with one exit's threshold set to `threshold`, the others unchanged. */
export interface SweepPoint {
  readonly threshold: number;
  readonly exitRate: number;
  readonly overallAccuracy: number;
  readonly exitAccuracy: number | null;
  readonly meanTotalMs: number;
  readonly p95TotalMs: number;
  /** Device uplink bytes per sample (confident samples count 0). */
  readonly bytesPerSample: number;
  /** Per stage: fraction of samples answered there. */
  readonly exitRates: readonly number[];
}

export interface ExitSweep {
  readonly exit: string;
  readonly currentThreshold: number;
  readonly advisedThreshold?: number;
  readonly points: readonly SweepPoint[];
}

export interface Sweep {
  /** Samples with every exit's answer and every path's time known: the ones the sweep uses. */
  readonly samples: number;
  /** What the times are made of, in words. */
  readonly method: string;
  readonly exits: readonly ExitSweep[];
}

export interface CapacityStep {
  readonly offeredPerS: number;
  readonly achievedPerS: number;
  readonly p50TotalMs: number;
  readonly p99TotalMs: number;
  readonly degraded: number;
  /** The server process's CPU during the step per offload it answered, ms; null when not readable. */
  readonly serverCpuMsPerOffload: number | null;
  /** CPU of every process of the fog on this machine (server and this one) per sample, ms. */
  readonly cpuMsPerSample: number | null;
}

export interface Capacity {
  readonly sloMs: number;
  readonly framesPerS: number;
  /**
   * Server cost per offloaded sample, ms: the server process's own CPU in the busiest step of the
   * ramp that held ("process"), or, when the server runs elsewhere, its replies' compute time
   * ("reply-timings").
   */
  readonly serverMsPerOffload: number;
  readonly serverCpuSource: "process" | "reply-timings";
  readonly offloadRatio: number;
  readonly serverWorkers: number;
  /** Cores one replica can keep busy: min(cores here, workers + 1 main thread). */
  readonly serverCores: number;
  /** serverCores * 1000 / (serverMsPerOffload * offloadRatio): samples per second one replica carries. */
  readonly predictedSamplesPerS: number;
  /** predictedSamplesPerS / framesPerS. */
  readonly predictedDevicesPerReplica: number;
  /** CPU of the whole fog on this machine (server process and the devices' process) per sample, ms. */
  readonly cpuMsPerSample: number;
  /** cores * 1000 / cpuMsPerSample: what this machine carries with everything on it; null without CPU figures. */
  readonly machineBoundPerS: number | null;
  /** min(predictedSamplesPerS, machineBoundPerS): the prediction for the ramp run here. */
  readonly predictedHerePerS: number;
  readonly steps: readonly CapacityStep[];
  /** Offered load of the first step whose p99 T_Total passed the SLO or that carried under 90% of it; null if none did. */
  readonly measuredSaturationPerS: number | null;
  /** With a saturation: the most samples per second any step carried; null otherwise. */
  readonly measuredThroughputPerS: number | null;
  /** measuredThroughputPerS / framesPerS. */
  readonly measuredDevicesPerReplica: number | null;
  /** predictedHerePerS / measuredThroughputPerS; null without a saturation. */
  readonly predictionOverMeasured: number | null;
  readonly note: string;
}

export interface Advice {
  readonly sloMs: number | null;
  readonly bytesPerSecondBudget: number | null;
  readonly framesPerS: number;
  /** The thresholds advised; null when no setting meets the constraints. */
  readonly thresholds: Readonly<Record<string, number>> | null;
  readonly predicted: {
    readonly overallAccuracy: number;
    readonly p95TotalMs: number;
    readonly bytesPerSecond: number;
  } | null;
  /** Stage name -> tier, when moving a stage is predicted to do better; null otherwise. */
  readonly placement: Readonly<Record<string, string>> | null;
  /** The best thresholds on the current placement (what a threshold change alone gives); null if none meets the constraints. */
  readonly bestHere: {
    readonly thresholds: Readonly<Record<string, number>>;
    readonly overallAccuracy: number;
    readonly p95TotalMs: number;
  } | null;
  readonly summary: readonly string[];
  /** The DDNNModel patch as YAML; null when nothing should change. */
  readonly patchYaml: string | null;
}

/** One Device&Server pass's figures that the link moves. */
export interface LinkSide {
  /** T_Comm of the samples answered upstream (a local answer sends nothing). */
  readonly comm: LatencyStats | null;
  /** The least and the 10th percentile of that T_Comm, ms: the floor a link adds to, least moved by load. */
  readonly commMinMs: number | null;
  readonly commP10Ms: number | null;
  readonly total: LatencyStats | null;
  readonly bytesPerSample: number | null;
  readonly degraded: number;
  /** The best thresholds on the current placement under --slo-ms and the byte budget (the advice's bestHere); null if none meets them. */
  readonly advisedThresholds: Readonly<Record<string, number>> | null;
  readonly advisedOverallAccuracy: number | null;
  readonly advisedP95TotalMs: number | null;
}

/** `--link`: the emulated link, and the same Device&Server pass without and across it. */
export interface LinkReport {
  /** As given: RTT,BANDWIDTH,LOSS. */
  readonly spec: string;
  readonly rttMs: number;
  /** Each direction; null for no limit. */
  readonly mbitPerS: number | null;
  /** Fraction of packets dropped, each direction. */
  readonly loss: number;
  /** "netem" where the kernel has sch_netem, else "nfqueue". */
  readonly mechanism: string;
  /** How the link was made, in words. */
  readonly method: string;
  /** Packets the delay and loss saw over the link, both directions, and those dropped. */
  readonly packets: number;
  readonly dropped: number;
  readonly withoutLink: LinkSide;
  /** The pass the rest of the report describes. */
  readonly withLink: LinkSide;
}

/** One device of a multi-view run: what it saw. */
export interface ViewDevice {
  readonly view: number;
  /** Answers this device got (one per capture when none was lost). */
  readonly answered: number;
  /** Answers it gave alone (its own view's exit) because the fused answer did not come in time. */
  readonly degraded: number;
  /** Its own exit's accuracy over every capture with only its view, in process (the device alone). */
  readonly aloneAccuracy: number;
  /** The whole system's Overall with only this view present, in process. */
  readonly aloneOverall: number;
  /** T_Total of its answers, ms. */
  readonly total: LatencyStats | null;
}

/**
 * A multi-view bundle's run (the horizontal DDNN, docs/bundle-views.md): K devices, one view each,
 * the gateway fusing every capture. `tableII[0]` is the run's Device&Server row, per capture (view
 * 0's device's answer; every device of a capture gets the same answer, `sameAnswerOnEveryDevice`
 * counts it); its Local is the gateway's local aggregate exit.
 */
export interface ViewsReport {
  readonly count: number;
  /** How the gateway merges the devices' exit logits, and their features. */
  readonly localAggregation: string;
  readonly featureAggregation: string;
  readonly fusionWindowMs: number;
  readonly captures: number;
  readonly devices: readonly ViewDevice[];
  /** The view whose device alone (in process) has the best Overall. */
  readonly bestSingleView: number;
  /** Captures fused from every view, and captures every device got the same answer for. */
  readonly capturesFusedComplete: number;
  readonly sameAnswerOnEveryDevice: number;
  /** The in-process multi-view pipeline (core/views-pipeline.ts) on the same captures, every view present. */
  readonly inProcess: {
    readonly local: number;
    readonly server: number | null;
    readonly overall: number;
    readonly ideal: number;
    readonly exitRates: Readonly<Record<string, number>>;
  };
  /** Fraction of captures answered with the in-process pipeline's exit and label (a degraded answer does not agree). */
  readonly agreementWithInProcess: number;
  readonly bytes: {
    /** Mean bytes of one device's view frame to the gateway (header with its logits, and features), as a subscriber on the views topic saw them. */
    readonly viewFrame: number | null;
    /** Mean bytes of the gateway's request for the next stage, as a subscriber on its topic saw them. */
    readonly forwardedFrame: number | null;
    /** Requests the gateway forwarded in the run. */
    readonly forwarded: number;
    /** Every view frame plus every forwarded request, divided by the captures. */
    readonly perCapture: number | null;
  };
  /**
   * The probe pass: the same captures again with the aggregator's threshold 0, so every capture
   * goes on to the later stages: their answers for Ideal and the sweep, not counted in any other
   * column. null when the run made none.
   */
  readonly probePass: {
    readonly answered: number;
    readonly degraded: number;
    /** Captures whose probe pass fused another set of views or gave another aggregate answer than the run (their later exits are not used). */
    readonly differed: number;
    readonly wallSeconds: number;
  } | null;
}

export interface ProfileReport {
  readonly format: typeof PROFILE_FORMAT;
  readonly generatedAt: string;
  readonly command: string;
  readonly model: {
    readonly name: string;
    readonly version: string;
    readonly digest: string;
    readonly stages: readonly string[];
    readonly thresholds: Readonly<Record<string, number>>;
  };
  readonly run: {
    readonly samples: number;
    readonly devices: number;
    readonly fps: number;
    readonly deviceSlowdown: number;
    /** With a slowdown: the device stages' compute on an idle thread, ms, which the slowdown multiplies. */
    readonly deviceStageMs: number | null;
    readonly encoding: { readonly dtype: string; readonly compression: string };
    /** "embedded", "external" (--broker), or "attached" (--attach: the tiers ran elsewhere). */
    readonly broker: string;
    readonly wallSeconds: number;
  };
  readonly tableII: readonly TableIIRow[];
  readonly exits: readonly ExitReport[];
  readonly probe: {
    /** Samples whose every exit's answer is known. */
    readonly complete: number;
    /** Samples missing the answer of some exit, by stage name. */
    readonly missing: Readonly<Record<string, number>>;
    /** Probe requests that got no answer. */
    readonly failed: number;
  };
  /** Every sample's T_Total per configuration (for histograms). */
  readonly latencySamples: readonly {
    readonly configuration: string;
    readonly totalMs: readonly number[];
  }[];
  readonly sweep: Sweep | null;
  readonly capacity: Capacity | null;
  readonly advice: Advice | null;
  /** With --link: the link and what it moved; null without one. */
  readonly link: LinkReport | null;
  /** A multi-view bundle: the horizontal configuration's devices and fusion; absent for one view (and in reports written before views). */
  readonly views?: ViewsReport;
  readonly notes: readonly string[];
}
