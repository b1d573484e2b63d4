/**
 * The protocol floor of bench/offload-rtt: everything `ddnn server` does for a request except the
 * inference. The real StageService (frame and tensor decoding, validation, the reply) on the
 * tier's own broker connection (connectTierBroker), with a stand-in pool that answers at once:
 * exit at the first stage of the range, label 0. Its answers are not predictions; the benchmark
 * only times them. Started by the benchmark over IPC; prints nothing.
 *
 *   node dist/bench/support/floor-server.js --broker URL --bundle DIR --model NS/NAME --stage I --shape C,H,W
 */
import { parseArgs } from "node:util";
import pino from "pino";
import { openBundleSource } from "../../core/bundle/source.js";
import { tierMetrics } from "../../core/metrics.js";
import { StageService } from "../../core/runtime/stage-service.js";
import { connectTierBroker } from "../../core/runtime/tier.js";
import { modelKey, parseModelRef } from "../../core/topics.js";

const { values } = parseArgs({
  options: {
    broker: { type: "string" },
    bundle: { type: "string" },
    model: { type: "string" },
    stage: { type: "string", default: "1" },
    shape: { type: "string" },
  },
});
if (!values.broker || !values.bundle || !values.model || !values.shape) {
  process.stderr.write(
    "usage: floor-server.js --broker URL --bundle DIR --model NS/NAME --stage I --shape C,H,W\n",
  );
  process.exit(2);
}
const bundle = await openBundleSource(values.bundle);
const model = parseModelRef(values.model);
const stage = Number(values.stage);
const log = pino({ level: "warn" }, pino.destination(2));
const metrics = tierMetrics("server", modelKey(model));
const client = connectTierBroker({ broker: values.broker }, "bench-floor", metrics, log);
const service = new StageService({
  client,
  bundle,
  model,
  pool: {
    submit: (job) =>
      Promise.resolve({
        result: { stage: job.from, label: 0, entropy: 1, stageMs: [] },
        queueMs: 0,
        batchSize: 1,
      }),
  },
  from: stage,
  to: stage,
  sampleShape: values.shape.split(",").map(Number),
  tier: "server",
  forward: { dtype: "f32", compression: "none" },
  sharedSubscription: true,
  maxFrameBytes: 4 << 20,
  metrics,
  log,
});
service.start();
while (!service.subscribed) await new Promise((r) => setTimeout(r, 5));
process.send?.("ready");
const stop = async () => {
  await service.drain();
  await client.endAsync();
  process.exit(0);
};
process.once("SIGTERM", stop);
process.once("SIGINT", stop);
process.once("disconnect", stop);
