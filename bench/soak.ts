/**
 * Soak: a long steady load through a real Mosquitto, watching every tier's memory (issue 11,
 * "must hold": at least 200,000 offloads, no memory growth beyond 10% after warm-up in any tier,
 * no request without a result).
 *
 * Load: 16 simulated devices, closed loop (one request in flight each, the next as soon as the
 * answer arrives), each with the device agent's own MQTT connection and OffloadClient (it encodes
 * every request, u8q+deflate by default, and keeps its waiting requests in memory: the device
 * tier's long-lived state), sending the device-stage features of the shipped evaluation sample.
 * The server is `ddnn server` in its own process; with --gateway the 3-stage fashion-3tier bundle
 * runs, its middle stage in a `ddnn gateway` process that forwards what its exit does not answer
 * to the server.
 *
 * Memory, sampled every --sample-ms once the first --warmup offloads are answered and at least
 * --warmup-s seconds have passed (a fast machine answers 20,000 offloads in seconds, before V8 has
 * grown its old generation to its working size): RSS and V8 heap
 * used of each tier (the server's and gateway's from their /metrics, the devices' from this
 * process, the broker's RSS from /proc). The readings of the first quarter of the measured part are
 * compared with those of the last quarter: for RSS their medians, for the heap their minima (the
 * heap is a saw-tooth between collections; its low points are what stays alive). A leak of even
 * a few bytes per request shows over 180,000 requests; garbage between two collections does not.
 *
 *   node dist/bench/soak.js [--offloads 200000] [--warmup 20000] [--warmup-s 30] [--devices 16] [--gateway]
 *                           [--bundle DIR] [--sample-ms 1000] [--max-growth 0.10]
 *                           [--dtype u8q] [--compression deflate] [--timeout-ms 30000]
 *
 * Goals: 1. every tier's RSS and heap within --max-growth of their warm-up readings; 2. every
 * offload answered with an ok reply (none timed out, none an error reply, none left waiting).
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { packageRoot } from "../cli/paths.js";
import { renderTable } from "../cli/table.js";
import { parseModelRef } from "../core/topics.js";
import type { Compression, WireDtype } from "../core/wire/frame.js";
import { type Device, startDevice } from "./support/devices.js";
import { startMosquitto } from "./support/mosquitto.js";
import { printGoals, round } from "./support/report.js";
import { bundlePath, loadSample } from "./support/sample.js";
import { metricSum, startServerProcess } from "./support/server-process.js";

const { values } = parseArgs({
  options: {
    bundle: { type: "string" },
    offloads: { type: "string", default: "200000" },
    warmup: { type: "string", default: "20000" },
    "warmup-s": { type: "string", default: "30" },
    devices: { type: "string", default: "16" },
    gateway: { type: "boolean", default: false },
    "sample-ms": { type: "string", default: "1000" },
    "max-growth": { type: "string", default: "0.10" },
    dtype: { type: "string", default: "u8q" },
    compression: { type: "string", default: "deflate" },
    "timeout-ms": { type: "string", default: "30000" },
    workers: { type: "string", default: "2" },
  },
});
const total = Number(values.offloads);
const warmup = Number(values.warmup);
const warmupMs = Number(values["warmup-s"]) * 1000;
const deviceCount = Number(values.devices);
const sampleMs = Number(values["sample-ms"]);
const maxGrowth = Number(values["max-growth"]);
const timeoutMs = Number(values["timeout-ms"]);
const withGateway = values.gateway;
if (!(warmup < total)) throw new Error("--warmup must be below --offloads");
const encoding = {
  dtype: values.dtype as WireDtype,
  compression: values.compression as Compression,
};

const bundle = bundlePath(
  values.bundle ?? (withGateway ? join(packageRoot(), "models", "fashion-3tier") : undefined),
);
const sample = await loadSample({ bundle, only: [0] });
const { pipeline } = sample;
const stages = pipeline.manifest.stages.map((s) => s.name);
if (withGateway && stages.length < 3)
  throw new Error(`--gateway needs a bundle of 3 or more stages; ${bundle} has ${stages.length}`);
const work = sample.offloaded;
if (work.length === 0) throw new Error("the device exit answered every sample: nothing to offload");
const next = { index: 1, name: stages[1]! };
const digest = pipeline.bundle.digest;
await pipeline.release();
const model = parseModelRef("bench/soak");

interface Reading {
  readonly rss: number;
  readonly heap?: number;
}

interface Tier {
  readonly name: string;
  read(): Promise<Reading>;
  readonly samples: Reading[];
}

async function procRss(pid: number | undefined): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const kb = /^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1];
  if (kb === undefined) throw new Error(`no VmRSS for process ${pid}`);
  return Number(kb) * 1024;
}

function fromMetrics(metrics: () => Promise<string>): () => Promise<Reading> {
  return async () => {
    const text = await metrics();
    return {
      rss: metricSum(text, "process_resident_memory_bytes"),
      heap: metricSum(text, "nodejs_heap_size_used_bytes"),
    };
  };
}

const broker = await startMosquitto();
const cleanups: (() => Promise<unknown>)[] = [() => broker.stop()];
let exitCode = 1;
try {
  const server = await startServerProcess({
    bundle,
    broker: broker.url,
    model: `${model.namespace}/${model.name}`,
    workers: Number(values.workers),
    maxBatch: 32,
    // With a gateway the server runs only the last stage; alone, every stage after the device's.
    ...(withGateway ? { extraArgs: ["--stages", stages[stages.length - 1]!] } : {}),
  });
  cleanups.push(() => server.stop());
  const tiers: Tier[] = [
    { name: "server", read: fromMetrics(() => server.metrics()), samples: [] },
  ];
  if (withGateway) {
    const gateway = await startServerProcess({
      program: "gateway",
      bundle,
      broker: broker.url,
      model: `${model.namespace}/${model.name}`,
    });
    cleanups.push(() => gateway.stop());
    tiers.push({ name: "gateway", read: fromMetrics(() => gateway.metrics()), samples: [] });
  }
  tiers.push(
    {
      name: `devices (${deviceCount}, this process)`,
      read: async () => {
        const m = process.memoryUsage();
        return { rss: m.rss, heap: m.heapUsed };
      },
      samples: [],
    },
    {
      name: "broker (mosquitto)",
      read: async () => ({ rss: await procRss(broker.pid) }),
      samples: [],
    },
  );

  const devices: Device[] = [];
  for (let d = 0; d < deviceCount; d++) {
    const device = await startDevice({
      broker: broker.url,
      model,
      digest,
      id: `soak-${d}`,
      encoding,
    });
    cleanups.push(() => device.close());
    devices.push(device);
  }

  let sent = 0;
  let ok = 0;
  const errors = new Map<string, number>();
  const started = performance.now();
  let warmedAt = Number.NaN;
  const loops = devices.map(async (device) => {
    while (sent < total) {
      const o = work[sent++ % work.length]!;
      try {
        await device.offload.offload(next, o.features, o.dims, Date.now() + timeoutMs);
        ok++;
      } catch (err) {
        const e = err as { upstreamCode?: string; reason?: string };
        const code = e.upstreamCode ?? e.reason ?? "error";
        errors.set(code, (errors.get(code) ?? 0) + 1);
      }
    }
  });
  const answered = () => ok + [...errors.values()].reduce((a, b) => a + b, 0);
  let done = false;
  const all = Promise.all(loops).finally(() => {
    done = true;
  });
  let lastReport = performance.now();
  while (!done) {
    await Promise.race([all, new Promise((r) => setTimeout(r, sampleMs))]);
    if (done) break;
    if (answered() >= warmup && performance.now() - started >= warmupMs) {
      if (Number.isNaN(warmedAt)) warmedAt = performance.now();
      for (const t of tiers) t.samples.push(await t.read());
    }
    if (performance.now() - lastReport > 10_000) {
      lastReport = performance.now();
      const s = (performance.now() - started) / 1000;
      process.stderr.write(
        `soak: ${answered()} of ${total} answered in ${s.toFixed(0)} s (${(answered() / s).toFixed(0)}/s)\n`,
      );
    }
  }
  const wallS = (performance.now() - started) / 1000;
  const measuredS = (performance.now() - warmedAt) / 1000;

  const median = (xs: number[]) => {
    const s = [...xs].sort((a, b) => a - b);
    return s[Math.floor(s.length / 2)] ?? Number.NaN;
  };
  const min = (xs: number[]) => Math.min(...xs);
  const mb = (x: number) => (Number.isFinite(x) ? (x / 2 ** 20).toFixed(1) : "-");
  const pct = (x: number) => (Number.isFinite(x) ? `${(x * 100).toFixed(1)}%` : "-");
  const rows: string[][] = [];
  const figures: Record<string, unknown>[] = [];
  let worst = 0;
  let tooFewSamples = false;
  for (const t of tiers) {
    const n = t.samples.length;
    const q = Math.max(1, Math.floor(n / 4));
    if (n < 8) tooFewSamples = true;
    const first = t.samples.slice(0, q);
    const last = t.samples.slice(n - q);
    const rss0 = median(first.map((s) => s.rss));
    const rss1 = median(last.map((s) => s.rss));
    const heaps = (xs: Reading[]) => xs.flatMap((s) => (s.heap === undefined ? [] : [s.heap]));
    const heap0 = heaps(first).length ? min(heaps(first)) : Number.NaN;
    const heap1 = heaps(last).length ? min(heaps(last)) : Number.NaN;
    const rssGrowth = rss1 / rss0 - 1;
    const heapGrowth = heap1 / heap0 - 1;
    worst = Math.max(worst, rssGrowth, Number.isFinite(heapGrowth) ? heapGrowth : 0);
    rows.push([
      t.name,
      String(n),
      mb(rss0),
      mb(rss1),
      pct(rssGrowth),
      mb(heap0),
      mb(heap1),
      pct(heapGrowth),
    ]);
    figures.push({
      tier: t.name,
      samples: n,
      rssMiB: [round(rss0 / 2 ** 20, 1), round(rss1 / 2 ** 20, 1)],
      rssGrowth: round(rssGrowth),
      ...(Number.isFinite(heapGrowth)
        ? {
            heapMiB: [round(heap0 / 2 ** 20, 1), round(heap1 / 2 ** 20, 1)],
            heapGrowth: round(heapGrowth),
          }
        : {}),
    });
  }
  console.log(
    `soak: ${total} offloads (warm-up: ${warmup} and ${warmupMs / 1000} s) from ${deviceCount} devices through Mosquitto into ${withGateway ? "a gateway and a server" : "a server"}, ${bundle}, ${encoding.dtype}+${encoding.compression}; ${wallS.toFixed(0)} s, ${(total / wallS).toFixed(0)} offloads/s; memory sampled every ${sampleMs} ms over the last ${measuredS.toFixed(0)} s`,
  );
  console.log(
    renderTable(
      [
        "tier",
        "samples",
        "RSS first MiB",
        "RSS last MiB",
        "RSS growth",
        "heap first MiB",
        "heap last MiB",
        "heap growth",
      ],
      rows,
    ),
  );
  console.log(
    "first/last: the first and last quarter of the readings after warm-up; RSS: their medians, heap: their minima",
  );
  const missing = total - answered();
  const errorText = [...errors].map(([c, n]) => `${c} ${n}`).join(", ");
  exitCode = printGoals([
    {
      name: "no memory growth",
      met: worst <= maxGrowth && !tooFewSamples,
      detail: `largest growth after warm-up ${pct(worst)}, limit ${pct(maxGrowth)}${tooFewSamples ? "; too few readings (at least 8 per tier): raise --offloads or lower --sample-ms" : ""}`,
    },
    {
      name: "every offload answered",
      met: ok === total,
      detail: `${ok} of ${total} ok${errorText ? `; ${errorText}` : ""}${missing ? `; ${missing} without any result` : ""}`,
    },
  ]);
  const served = metricSum(await server.metrics(), "ddnn_requests_total");
  console.log(
    JSON.stringify({
      bench: "soak",
      offloads: total,
      warmup,
      warmupS: warmupMs / 1000,
      devices: deviceCount,
      gateway: withGateway,
      ok,
      errors: Object.fromEntries(errors),
      serverRequests: served,
      wallS: round(wallS, 1),
      offloadsPerS: round(total / wallS, 0),
      maxGrowth: round(worst),
      tiers: figures,
    }),
  );
} finally {
  for (const c of cleanups.reverse()) await c().catch(() => {});
}
process.exit(exitCode);
