/**
 * The device agent's own path, HTTP in to answer out (issue 14, goal 5): a camera posts raw pixels
 * to `ddnn agent`'s POST /v1/infer and reads its JSON answer, one request in flight, through a
 * real Mosquitto on loopback, against bare baselines measured in the same run, in interleaved
 * rounds:
 *
 * - **bare HTTP echo**: a node:http server in its own process (bench/support/http-echo.ts) that
 *   reads the same 784-byte body and answers a JSON object of the agent's answer's size, over the
 *   same keep-alive client;
 * - **bare MQTT echo**: the offload's transport alone, as in offload-rtt (the device's request
 *   frames encoded at every call, QoS 1 both ways, the echo in its own process);
 * - **agent, device exit**: `ddnn agent --threshold <stage 0>=1` (every sample answered by the
 *   device's exit), compute from the answers' `timings.device`;
 * - **agent, offloaded**: `ddnn agent --threshold <stage 0>=0` (every sample offloaded to a
 *   `ddnn server`), compute from `timings.device + timings.upstream`.
 *
 *   node dist/bench/agent.js [--bundle DIR] [--requests 500] [--rounds 4] [--warmup 300]
 *
 * Goals (bench/README.md explains their floors), on p50 from the POST to the parsed answer:
 *   5c. agent device exit - HTTP echo <= 2.0 x the device compute p50;
 *   5d. agent offloaded - HTTP echo - MQTT echo <= 2.0 x (device + upstream compute) p50.
 */
import { Agent, request } from "node:http";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { shipped } from "../cli/paths.js";
import { renderTable } from "../cli/table.js";
import { readIdx } from "../core/dataset/idx.js";
import { summarize } from "../core/stats.js";
import { parseModelRef, replyTopic } from "../core/topics.js";
import { startEcho } from "./support/echo-client.js";
import { startHelper } from "./support/helper-process.js";
import { startMosquitto } from "./support/mosquitto.js";
import { printGoals, ratio, round } from "./support/report.js";
import { roundOptions, roundSettings } from "./support/rounds.js";
import { bundlePath, loadSample } from "./support/sample.js";
import { startServerProcess, startTierProcess } from "./support/server-process.js";

const { values } = parseArgs({
  options: {
    ...roundOptions(500, 4),
  },
});
const { requests, rounds, warmup, encoding, deadlineAt } = roundSettings(values);

const bundle = bundlePath(values.bundle);
const sample = await loadSample({ bundle, only: [0] });
const { pipeline } = sample;
const manifest = pipeline.manifest;
const first = manifest.stages[0]!.name;
const next = { index: 1, name: manifest.stages[1]!.name };
const images = await readIdx(shipped().images);
const per = pipeline.samplePixels;
const pixelsOf = (i: number) => images.data.subarray(i * per, (i + 1) * per);
const exitImages = sample.deviceExits.slice(0, 512).map((e) => pixelsOf(e.index));
const offloadWork = sample.offloaded.slice(0, 512);
const offloadImages = offloadWork.map((o) => pixelsOf(o.index));
if (exitImages.length === 0 || offloadImages.length === 0)
  throw new Error("the sample needs both device exits and offloads");
await pipeline.release();

interface Row {
  readonly name: string;
  readonly calls: number[];
  readonly computeMs: number[];
  readonly errors: Map<string, number>;
  readonly send: (i: number) => Promise<{ ms: number; computeMs?: number; error?: string }>;
}

const broker = await startMosquitto();
const cleanups: (() => Promise<unknown>)[] = [() => broker.stop()];
const httpAgent = new Agent({ keepAlive: true, maxSockets: 1 });
cleanups.push(async () => httpAgent.destroy());

/** POSTs raw pixels and parses the JSON answer; the time is from the call to the parsed answer. */
const post = (port: number, body: Uint8Array) =>
  new Promise<{ ms: number; status: number; json: Record<string, unknown> }>((resolve, reject) => {
    const started = performance.now();
    const req = request(
      {
        host: "127.0.0.1",
        port,
        path: "/v1/infer",
        method: "POST",
        agent: httpAgent,
        headers: { "content-type": "application/octet-stream", "content-length": body.length },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (d: Buffer) => chunks.push(d));
        res.on("end", () => {
          try {
            const json = JSON.parse(Buffer.concat(chunks).toString("utf8")) as Record<
              string,
              unknown
            >;
            resolve({ ms: performance.now() - started, status: res.statusCode ?? 0, json });
          } catch (err) {
            reject(err);
          }
        });
      },
    );
    req.setTimeout(10_000, () => req.destroy(new Error("HTTP request timed out")));
    req.on("error", reject);
    req.end(body);
  });

try {
  const model = parseModelRef("bench/agent");
  const modelArg = `${model.namespace}/${model.name}`;
  const server = await startServerProcess({
    bundle,
    broker: broker.url,
    model: modelArg,
    workers: 2,
    maxBatch: 32,
  });
  cleanups.push(() => server.stop());
  const agentFor = async (id: string, threshold: number) => {
    const agent = await startTierProcess("agent", [
      "--bundle",
      bundle,
      "--broker",
      broker.url,
      "--model",
      modelArg,
      "--device-id",
      id,
      "--threshold",
      `${first}=${threshold}`,
      // Long enough that a slow moment is measured as such, not answered locally.
      "--deadline-ms",
      "5000",
      "--dtype",
      encoding.dtype,
      "--compression",
      encoding.compression,
    ]);
    cleanups.push(() => agent.stop());
    return agent;
  };
  const exitAgent = await agentFor("dev-exit", 1);
  const offloadAgent = await agentFor("dev-offload", 0);
  const httpEcho = await startHelper("http-echo.js", []);
  cleanups.push(() => httpEcho.stop());
  const echoPort = (httpEcho.ready as { port: number }).port;
  const echoClient = await startEcho({
    broker: broker.url,
    name: "echo",
    relays: 1,
    target: {
      model,
      digest: sample.pipeline.bundle.digest,
      replyTo: replyTopic(model, "dev-echo"),
      encoding,
    },
    stage: next.index,
  });
  cleanups.push(() => echoClient.close());

  const timings = (json: Record<string, unknown>) =>
    (json.timings ?? {}) as { device?: number; upstream?: number };
  const row = (name: string, send: Row["send"]): Row => ({
    name,
    calls: [],
    computeMs: [],
    errors: new Map(),
    send,
  });
  const rows: Row[] = [
    row("bare HTTP echo", async (i) => {
      const r = await post(echoPort, exitImages[i % exitImages.length]!);
      return r.status === 200 ? { ms: r.ms } : { ms: r.ms, error: `http ${r.status}` };
    }),
    row("bare MQTT echo", async (i) => {
      const o = offloadWork[i % offloadWork.length]!;
      const e = await echoClient.once(o.features, o.dims);
      return { ms: e.callMs };
    }),
    row(`agent, device exit (--threshold ${first}=1)`, async (i) => {
      const r = await post(exitAgent.httpPort, exitImages[i % exitImages.length]!);
      const t = timings(r.json);
      if (r.status !== 200) return { ms: r.ms, error: `http ${r.status}` };
      if (r.json.tier !== "device")
        return { ms: r.ms, error: `answered by ${String(r.json.tier)}` };
      return { ms: r.ms, computeMs: t.device ?? Number.NaN };
    }),
    row(`agent, offloaded (--threshold ${first}=0)`, async (i) => {
      const r = await post(offloadAgent.httpPort, offloadImages[i % offloadImages.length]!);
      const t = timings(r.json);
      if (r.status !== 200) return { ms: r.ms, error: `http ${r.status}` };
      if (r.json.degraded === true)
        return { ms: r.ms, error: `degraded (${String(r.json.reason)})` };
      return { ms: r.ms, computeMs: (t.device ?? Number.NaN) + (t.upstream ?? Number.NaN) };
    }),
  ];

  let cursor = 0;
  const one = async (r: Row, record: boolean) => {
    let out: Awaited<ReturnType<Row["send"]>>;
    try {
      out = await r.send(cursor++);
    } catch (err) {
      out = { ms: Number.NaN, error: (err as Error).message };
    }
    if (!record) return;
    if (out.error !== undefined) r.errors.set(out.error, (r.errors.get(out.error) ?? 0) + 1);
    else {
      r.calls.push(out.ms);
      if (out.computeMs !== undefined) r.computeMs.push(out.computeMs);
    }
  };
  for (const r of rows)
    for (let i = 0; i < warmup && Date.now() < deadlineAt; i++) await one(r, false);
  let roundsDone = 0;
  for (let k = 0; k < rounds && Date.now() < deadlineAt; k++) {
    const order = rows.map((_, j) => rows[(j + k) % rows.length]!);
    for (const r of order)
      for (let i = 0; i < requests && Date.now() < deadlineAt; i++) await one(r, true);
    roundsDone++;
  }

  const stats = rows.map((r) => ({ r, call: summarize(r.calls), compute: summarize(r.computeMs) }));
  const [httpE, mqttE, exit, off] = stats as [
    (typeof stats)[0],
    (typeof stats)[0],
    (typeof stats)[0],
    (typeof stats)[0],
  ];
  const fmt = (x: number) => (Number.isFinite(x) ? x.toFixed(3) : "-");
  const errorsOf = (r: Row) => [...r.errors.values()].reduce((a, b) => a + b, 0);
  console.log(
    `device agent, HTTP in to answer out (one request in flight); bundle ${manifest.name} ${manifest.version}; ` +
      `raw ${per}-byte images; offloads as ${encoding.dtype}+${encoding.compression} through Mosquitto on loopback to ddnn server (own process, 2 workers); ` +
      `${roundsDone} interleaved rounds of ${requests} requests per row after ${warmup} warm-up requests`,
  );
  console.log("");
  console.log(
    renderTable(
      ["path", "n", "p50 ms", "p99 ms", "mean ms", "max ms", "compute p50 ms", "errors"],
      stats.map(({ r, call, compute }) => [
        r.name,
        String(call.n),
        fmt(call.p50),
        fmt(call.p99),
        fmt(call.mean),
        fmt(call.max),
        fmt(compute.p50),
        String(errorsOf(r)),
      ]),
    ),
  );
  console.log("");
  console.log(
    "times: from the call (POST of the raw pixels; the MQTT echo: encoding the device's frame) to the parsed answer. compute: the answers' timings.device (device exit) and timings.device + timings.upstream (offloaded)",
  );
  for (const { r } of stats)
    if (r.errors.size)
      console.log(`${r.name}: errors ${JSON.stringify(Object.fromEntries(r.errors))}`);
  const exitOver = (exit.call.p50 - httpE.call.p50) / exit.compute.p50;
  const offOver = (off.call.p50 - httpE.call.p50 - mqttE.call.p50) / off.compute.p50;
  const clean = (s: (typeof stats)[0]) => s.call.n > 0 && errorsOf(s.r) === 0;
  const code = printGoals([
    {
      name: "5c: agent device-exit p50 minus HTTP echo p50 at most 2.0x the device compute p50",
      met: exitOver <= 2 && clean(exit) && clean(httpE),
      detail: `${ratio(exitOver)}: ${fmt(exit.call.p50)} - ${fmt(httpE.call.p50)} ms against compute ${fmt(exit.compute.p50)} ms`,
    },
    {
      name: "5d: agent offloaded p50 minus HTTP echo and MQTT echo p50 at most 2.0x the device + upstream compute p50",
      met: offOver <= 2 && clean(off) && clean(httpE) && clean(mqttE),
      detail: `${ratio(offOver)}: ${fmt(off.call.p50)} - ${fmt(httpE.call.p50)} - ${fmt(mqttE.call.p50)} ms against compute ${fmt(off.compute.p50)} ms`,
    },
  ]);
  console.log(
    JSON.stringify({
      bench: "agent",
      bundle: `${manifest.name}@${manifest.version}`,
      encoding: `${encoding.dtype}+${encoding.compression}`,
      rounds: roundsDone,
      requestsPerRound: requests,
      rows: stats.map(({ r, call, compute }) => ({
        name: r.name,
        n: call.n,
        p50Ms: round(call.p50),
        p99Ms: round(call.p99),
        computeP50Ms: round(compute.p50),
        errors: Object.fromEntries(r.errors),
      })),
      exitOverCompute: round(exitOver, 3),
      offloadOverCompute: round(offOver, 3),
      goalMet: code === 0,
    }),
  );
  process.exitCode = code;
} finally {
  for (const c of cleanups.reverse()) await c().catch(() => {});
}
