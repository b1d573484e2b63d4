/**
 * What each step of a request costs on this machine, measured alone in one process (CPU time of
 * a hot loop over the shipped sample's real frames): the per-step costs bench/README.md explains
 * the goals' floors with. No goal: it prints a table and one JSON line, and exits 0.
 *
 *   node dist/bench/steps.js [--bundle DIR] [--iterations 20000]
 *
 * Steps: the device's encoding of a request (encodeRequestFrame: u8q, deflate, header, frame),
 * the server's decoding of it (decodeRequest: prefix, JSON header, checks; inflateSync;
 * decodeTensor, inflate and dequantization together; the same with compression "sparse"), the
 * ok reply (encodeFrame) and the device's reading of it (decodeResult), StageService's whole
 * handling of one request with a stand-in broker client and pool (decode, checks, metrics, reply
 * frame), a worker-thread round trip of a batch of 3 the way WorkerPool sends it (postMessage
 * with the features transferred, an answer of 3 results), and session.run of the server stage at
 * batch 1. MQTT itself (mqtt.js parsing, PUBACKs, socket writes) is not here: offload-rtt's echo
 * measures it.
 */
import { EventEmitter } from "node:events";
import { parseArgs } from "node:util";
import { Worker } from "node:worker_threads";
import { inflateSync } from "node:zlib";
import type { MqttClient } from "mqtt";
import pino from "pino";
import { renderTable } from "../cli/table.js";
import { tierMetrics } from "../core/metrics.js";
import { encodeRequestFrame } from "../core/runtime/offload-client.js";
import { StageService } from "../core/runtime/stage-service.js";
import { requestTopic } from "../core/topics.js";
import { decodeRequest, decodeResult, encodeFrame } from "../core/wire/frame.js";
import { decodeTensor } from "../core/wire/tensor.js";
import { bundlePath, loadSample } from "./support/sample.js";

const { values } = parseArgs({
  options: {
    bundle: { type: "string" },
    iterations: { type: "string", default: "20000" },
  },
});
const iterations = Number(values.iterations);
const bundle = bundlePath(values.bundle);
const sample = await loadSample({ bundle, only: [0, 1] });
const { pipeline } = sample;
const work = sample.offloaded.slice(0, 256);
if (work.length === 0) throw new Error("the device exit answered every sample: nothing to offload");
const model = { namespace: "bench", name: "steps" };
const target = (compression: "deflate" | "sparse", replyTo: string) => ({
  model,
  digest: pipeline.bundle.digest,
  replyTo,
  encoding: { dtype: "u8q" as const, compression },
});
const frameOf = (compression: "deflate" | "sparse", i: number) =>
  encodeRequestFrame(
    target(compression, `ddnn/bench/steps/reply/dev-${i % 16}`),
    1,
    `dev-${i % 16}-0123abcd-${i}`,
    work[i % work.length]!.features,
    work[i % work.length]!.dims,
    { deadline: Date.now() + 3_600_000, sentAt: Date.now() },
  );
const deflated = work.map((_, i) => frameOf("deflate", i));
const sparse = work.map((_, i) => frameOf("sparse", i));
const decoded = deflated.map((f) => decodeRequest(f));
const decodedSparse = sparse.map((f) => decodeRequest(f));
const replyHeader = {
  kind: "result",
  id: "dev-0-0123abcd-1",
  status: "ok",
  stage: 1,
  label: 3,
  entropy: 0.123456,
  tier: "server",
  timings: { server: 0.123, serverQueue: 0 },
};
const replyFrame = encodeFrame(replyHeader);
const n = work.length;

/** CPU microseconds per call of `f` over `count` calls, after a warm-up. */
function cpuUs(f: (i: number) => unknown, count = iterations): number {
  for (let i = 0; i < Math.min(2000, count); i++) f(i);
  const before = process.cpuUsage();
  for (let i = 0; i < count; i++) f(i);
  const used = process.cpuUsage(before);
  return (used.user + used.system) / count;
}

async function cpuUsAsync(f: (i: number) => Promise<unknown>, count: number): Promise<number> {
  for (let i = 0; i < Math.min(500, count); i++) await f(i);
  const before = process.cpuUsage();
  for (let i = 0; i < count; i++) await f(i);
  const used = process.cpuUsage(before);
  return (used.user + used.system) / count;
}

const rows: { step: string; us: number }[] = [];
const add = (step: string, us: number) => rows.push({ step, us });

add(
  "device: encodeRequestFrame (u8q, deflate, header, frame)",
  cpuUs((i) => frameOf("deflate", i), iterations / 4),
);
add(
  "device: encodeRequestFrame, compression sparse",
  cpuUs((i) => frameOf("sparse", i), iterations / 4),
);
add(
  "server: decodeRequest (prefix, JSON header, checks)",
  cpuUs((i) => decodeRequest(deflated[i % n]!)),
);
add(
  "server: inflateSync of the body",
  cpuUs((i) => inflateSync(decoded[i % n]!.body)),
);
add(
  "server: decodeTensor, deflate (inflate + dequantize)",
  cpuUs((i) => decodeTensor(decoded[i % n]!.header, decoded[i % n]!.body, 1 << 20)),
);
add(
  "server: decodeTensor, sparse",
  cpuUs((i) => decodeTensor(decodedSparse[i % n]!.header, decodedSparse[i % n]!.body, 1 << 20)),
);
add(
  "server: encodeFrame of the ok reply",
  cpuUs(() => encodeFrame(replyHeader)),
);
add(
  "device: decodeResult of the reply",
  cpuUs(() => decodeResult(replyFrame)),
);

// StageService's whole handling, with a stand-in broker client (publishes resolve at once) and
// a pool that answers at once: everything the service does per request but MQTT and inference.
{
  const client = Object.assign(new EventEmitter(), {
    connected: false,
    publishAsync: () => Promise.resolve(undefined),
    subscribeAsync: () => Promise.resolve([]),
  });
  let handled = 0;
  const service = new StageService({
    client: client as unknown as MqttClient,
    bundle: pipeline.bundle,
    model,
    pool: {
      submit: () => {
        handled++;
        return Promise.resolve({
          result: { stage: 1, label: 0, entropy: 0.5, stageMs: [0, 0.1] },
          queueMs: 0,
          batchSize: 1,
        });
      },
    },
    from: 1,
    to: 1,
    sampleShape: work[0]!.dims.slice(1),
    tier: "server",
    forward: { dtype: "f32", compression: "none" },
    sharedSubscription: true,
    maxFrameBytes: 4 << 20,
    metrics: tierMetrics("server", "bench/steps"),
    log: pino({ level: "silent" }),
  });
  service.start();
  const topic = requestTopic(model, pipeline.manifest.stages[1]!.name);
  const burst = 4;
  const turn = async (k: number) => {
    for (let j = 0; j < burst; j++) client.emit("message", topic, deflated[(k * burst + j) % n]);
    while (service.pending > 0) await new Promise((r) => setImmediate(r));
  };
  const count = Math.max(1, Math.floor(iterations / burst / 2));
  const perTurn = await cpuUsAsync(turn, count);
  if (handled === 0) throw new Error("the stage service handled nothing");
  add("server: StageService handling, no MQTT, no inference", perTurn / burst);
}

// A worker round trip as WorkerPool makes one: the batch's features transferred, 3 results back.
{
  const worker = new Worker(
    `const { parentPort } = require("node:worker_threads");
     parentPort.on("message", (m) => parentPort.postMessage({ type: "done", batch: m.batch,
       results: Array.from({ length: m.dims[0] }, (_, i) => ({ stage: 1, label: i, entropy: 0.1, stageMs: [0, 0.05] })) }));`,
    { eval: true },
  );
  const width = work[0]!.features.length;
  let batch = 0;
  const roundTrip = () =>
    new Promise<void>((resolve) => {
      worker.once("message", () => resolve());
      const data = new Float32Array(width * 3);
      worker.postMessage(
        {
          type: "run",
          batch: ++batch,
          from: 1,
          to: 1,
          ignoreExits: false,
          data,
          dims: [3, 32, 7, 7],
        },
        [data.buffer],
      );
    });
  add(
    "pool: worker round trip of a batch of 3 (both threads)",
    await cpuUsAsync(roundTrip, iterations / 4),
  );
  await worker.terminate();
}

{
  const stage = pipeline.stage(1);
  const input = pipeline.tensor(work[0]!.features, work[0]!.dims);
  const run = () => stage.session.run({ [stage.spec.input]: input });
  add("inference: session.run of the server stage, batch 1", await cpuUsAsync(run, iterations / 4));
}
await pipeline.release();

const service = rows.find((r) => r.step.startsWith("server: StageService"))!.us;
console.log(
  `per-step CPU of the request path, ${pipeline.manifest.name} ${pipeline.manifest.version}, u8q features [${work[0]!.dims.join(", ")}] (${decoded[0]!.body.length} B deflated, ${decodedSparse[0]!.body.length} B sparse), hot loops in one process`,
);
console.log("");
console.log(
  renderTable(
    ["step", "CPU us per call", "vs StageService handling"],
    rows.map((r) => [r.step, r.us.toFixed(2), `${((r.us / service) * 100).toFixed(0)}%`]),
  ),
);
console.log(JSON.stringify({ bench: "steps", iterations, rows }));
