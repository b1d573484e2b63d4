/**
 * The reference of bench/throughput's goal 3: the leanest server this protocol allows on mqtt.js,
 * to show what a server must spend per answer before any framework. A plain mqtt.js client
 * (TCP_NODELAY, QoS 1 both ways) on a shared subscription; every request decoded and checked with
 * the project's own decoders (decodeRequest, decodeTensor) and the model, digest, stage and shape
 * checked like StageService does; the requests that arrived in one event-loop turn run as one
 * batch of session.run on this same thread (no worker hand-off, no queue, no deadlines, no
 * metrics, no per-client fairness, no error replies: a request it cannot read is dropped); one
 * ok reply per request. Not a server to deploy: a measuring stick.
 *
 * Started by the benchmark with an IPC channel (and the event-loop-delay probe preloaded); sends
 * {"type":"lean-ready","port":N} once subscribed, and serves the batch counts as
 * ddnn_batch_size_sum/_count on http://127.0.0.1:N/metrics.
 *
 *   node dist/bench/support/lean-server.js --broker URL --bundle DIR --model NS/NAME [--max-batch 32]
 */
import { createServer } from "node:http";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { argmax, normalizedEntropy } from "../../core/exit.js";
import { Pipeline } from "../../core/pipeline.js";
import { modelKey, parseModelRef, requestTopic, sharedRequestFilter } from "../../core/topics.js";
import { decodeRequest, encodeFrame } from "../../core/wire/frame.js";
import { decodeTensor } from "../../core/wire/tensor.js";
import { connected, plainClient } from "./plain-mqtt.js";

const { values } = parseArgs({
  options: {
    broker: { type: "string" },
    bundle: { type: "string" },
    model: { type: "string" },
    "max-batch": { type: "string", default: "32" },
  },
});
if (!values.broker || !values.bundle || !values.model) {
  process.stderr.write("usage: lean-server.js --broker URL --bundle DIR --model NS/NAME\n");
  process.exit(2);
}
const model = parseModelRef(values.model);
const maxBatch = Number(values["max-batch"]);
const pipeline = await Pipeline.load(values.bundle, { only: [1], intraOpThreads: 1 });
const stage = pipeline.stage(1);
if (!stage.last) throw new Error("the lean server runs a bundle's second and last stage only");
const shape = [...stage.sampleShape];
const width = shape.reduce((a, b) => a * b, 1);
const classes = pipeline.classes;
const key = modelKey(model);
const digest = pipeline.bundle.digest;
const topic = requestTopic(model, stage.spec.name);

interface Job {
  readonly id: string;
  readonly replyTo: string;
  readonly data: Float32Array;
}
const batch = new Float32Array(width * maxBatch);
let queue: Job[] = [];
let scheduled = false;
let batches = 0;
let samples = 0;

const client = plainClient(values.broker, `bench-lean-${process.pid}`);
const run = async () => {
  const jobs = queue.splice(0, maxBatch);
  scheduled = queue.length > 0;
  if (scheduled) setImmediate(run);
  const n = jobs.length;
  for (let i = 0; i < n; i++) batch.set(jobs[i]!.data, i * width);
  const started = performance.now();
  const out = await pipeline.runStage(
    1,
    pipeline.tensor(batch.subarray(0, n * width), [n, ...shape]),
  );
  const ms = (performance.now() - started) / n;
  batches++;
  samples += n;
  for (let i = 0; i < n; i++) {
    const job = jobs[i]!;
    const reply = {
      kind: "result",
      id: job.id,
      status: "ok",
      stage: 1,
      label: argmax(out.logits, i * classes, classes),
      entropy: normalizedEntropy(out.logits, i * classes, classes),
      tier: "server",
      timings: { server: Math.round(ms * 1000) / 1000, serverQueue: 0 },
    };
    client.publish(job.replyTo, Buffer.from(encodeFrame(reply)), { qos: 1 });
  }
};
client.on("message", (t, payload) => {
  if (t !== topic) return;
  try {
    const { header, body } = decodeRequest(
      new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength),
    );
    const fits =
      header.model === key &&
      header.digest === digest &&
      header.stage === 1 &&
      header.shape.length === shape.length + 1 &&
      header.shape[0] === 1 &&
      shape.every((d, i) => header.shape[i + 1] === d);
    if (!fits) return;
    queue.push({ id: header.id, replyTo: header.replyTo, data: decodeTensor(header, body, width) });
  } catch {
    return;
  }
  if (!scheduled) {
    scheduled = true;
    setImmediate(run);
  }
});
await connected(client);
await client.subscribeAsync(sharedRequestFilter(model, stage.spec.name), { qos: 1 });
const http = createServer((_req, res) => {
  res.end(`ddnn_batch_size_sum ${samples}\nddnn_batch_size_count ${batches}\n`);
});
http.listen(0, "127.0.0.1", () => {
  const address = http.address();
  process.send?.({
    type: "lean-ready",
    port: typeof address === "object" && address ? address.port : 0,
  });
});
const stop = () => {
  queue = [];
  http.close();
  client.end(false, {}, () => void pipeline.release().finally(() => process.exit(0)));
};
process.once("SIGTERM", stop);
process.once("SIGINT", stop);
process.once("disconnect", stop);
