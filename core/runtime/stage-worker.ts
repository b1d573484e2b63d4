/**
 * A worker thread that owns one onnxruntime session per stage (one intra-op thread each), so a
 * tier's MQTT loop never blocks on inference. Messages are defined in worker-pool.ts.
 */
import { parentPort, workerData } from "node:worker_threads";
import type { BackendChoice } from "../bundle/backend.js";
import { BundleError } from "../bundle/manifest.js";
import type { VerifiedBundle } from "../bundle/read.js";
import { openStages } from "../bundle/stages.js";
import { ExitPolicy } from "../exit.js";
import { Pipeline } from "../pipeline.js";
import type { WorkerReply, WorkerRequest } from "./worker-pool.js";

export interface StageWorkerData {
  bundle: VerifiedBundle;
  only: number[];
  thresholds: (number | undefined)[];
  backend: BackendChoice;
}

const port = parentPort;
if (!port) throw new Error("stage-worker must run in a worker thread");
const data = workerData as StageWorkerData;

async function main(): Promise<void> {
  const stages = await openStages(data.bundle, {
    only: data.only,
    intraOpThreads: 1,
    backend: data.backend,
  });
  const pipeline = new Pipeline(data.bundle, stages, new ExitPolicy(data.thresholds));
  // "Server Only": every stage runs and the last exit answers (threshold 0 never exits early).
  const noEarlyExit = new ExitPolicy(data.thresholds.map((t) => (t === undefined ? undefined : 0)));
  port!.on("message", (msg: WorkerRequest) => {
    void run(pipeline, msg, noEarlyExit);
  });
  port!.postMessage({
    type: "ready",
    backend: stages[0]?.runtime.backend,
    shapes: Object.fromEntries(stages.map((s) => [s.index, [...s.sampleShape]])),
  } satisfies WorkerReply);
}

async function run(pipeline: Pipeline, msg: WorkerRequest, noEarlyExit: ExitPolicy): Promise<void> {
  if (msg.type === "crash") process.exit(msg.code);
  try {
    const input = pipeline.tensor(msg.data, msg.dims);
    const results = await pipeline.runRange(
      msg.from,
      msg.to,
      input,
      msg.ignoreExits ? noEarlyExit : pipeline.policy,
    );
    const transfer = results.flatMap((r) =>
      "forward" in r ? [r.forward.features.buffer as ArrayBuffer] : [],
    );
    port!.postMessage({ type: "done", batch: msg.batch, results } satisfies WorkerReply, transfer);
  } catch (err) {
    port!.postMessage({
      type: "failed",
      batch: msg.batch,
      message: (err as Error).message,
    } satisfies WorkerReply);
  }
}

main().catch((err: unknown) => {
  // A bad stage file is the user's to fix: hand its parts over so the pool rethrows a BundleError.
  const bundle =
    err instanceof BundleError
      ? { file: err.file, field: err.field, detail: err.detail }
      : undefined;
  port.postMessage({
    type: "fatal",
    message: (err as Error).message,
    ...(bundle ? { bundle } : {}),
  } satisfies WorkerReply);
});
