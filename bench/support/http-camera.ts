/**
 * A camera beside a device agent: posts idx images as raw pixels to the agent's POST /v1/infer and
 * prints one JSON line per answer (send time, client-side latency, the agent's answer). It runs
 * where the agent runs (test/netfaults.test.ts starts it inside the device's network namespace),
 * so the camera-to-agent path is local like a board's own camera, and only the agent's broker
 * link crosses the emulated network.
 *
 *   node dist/bench/support/http-camera.js --url URL --images IDX[.gz] [--rate N | --count N]
 *
 * --rate N sends N images a second whatever the answers do (open loop) until stdin closes;
 * without it, one image at a time (closed loop), --count of them, or until stdin closes. At the
 * end it waits for every answer, prints the agent's ddnn_offload and ddnn_degraded counters as
 * {"metrics":{...}} and exits.
 */
import { parseArgs } from "node:util";
import { readIdx } from "../../core/dataset/idx.js";

/** One answer as the camera prints it. */
export interface Shot {
  i: number;
  /** Unix ms when the image was sent. */
  sentAt: number;
  ms: number;
  status: number;
  label?: number;
  tier?: string;
  degraded?: boolean;
  reason?: string;
  comm?: number;
  error?: string;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      url: { type: "string" },
      images: { type: "string" },
      rate: { type: "string" },
      count: { type: "string" },
      timeout: { type: "string", default: "10000" },
    },
  });
  if (!values.url || !values.images) throw new Error("--url and --images are required");
  const url = values.url;
  const images = await readIdx(values.images);
  const n = images.shape[0] ?? 0;
  const per = n ? images.data.length / n : 0;
  const rate = values.rate === undefined ? undefined : Number(values.rate);
  const count = values.count === undefined ? Number.POSITIVE_INFINITY : Number(values.count);
  const timeoutMs = Number(values.timeout);
  let stopped = false;
  process.stdin.on("end", () => {
    stopped = true;
  });
  process.stdin.on("data", () => {});
  process.stdin.resume();
  const write = (o: object) => process.stdout.write(`${JSON.stringify(o)}\n`);

  const shoot = async (i: number): Promise<void> => {
    const k = i % n;
    const sentAt = Date.now();
    const t0 = performance.now();
    const shot: Shot = { i, sentAt, ms: 0, status: 0 };
    try {
      const res = await fetch(url, {
        method: "POST",
        headers: { "content-type": "application/octet-stream" },
        body: images.data.subarray(k * per, (k + 1) * per),
        signal: AbortSignal.timeout(timeoutMs),
      });
      shot.status = res.status;
      const body = (await res.json()) as {
        label?: number;
        tier?: string;
        degraded?: boolean;
        reason?: string;
        timings?: { comm?: number };
      };
      shot.label = body.label;
      shot.tier = body.tier;
      shot.degraded = body.degraded;
      if (body.reason) shot.reason = body.reason;
      shot.comm = body.timings?.comm;
    } catch (err) {
      shot.error = (err as Error).message;
    }
    shot.ms = performance.now() - t0;
    write(shot);
  };

  // fetch's first call loads and sets up its HTTP client (hundreds of ms on a loaded machine): do it
  // on /healthz, which runs no inference and counts nothing, so the first shot times the agent only.
  await fetch(new URL("/healthz", url), { signal: AbortSignal.timeout(timeoutMs) })
    .then((res) => res.arrayBuffer())
    .catch(() => {});
  const pending = new Set<Promise<void>>();
  let i = 0;
  const started = performance.now();
  while (!stopped && i < count) {
    if (rate === undefined) {
      await shoot(i++);
      continue;
    }
    const p = shoot(i++).finally(() => pending.delete(p));
    pending.add(p);
    const wait = started + (i * 1000) / rate - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
  await Promise.all([...pending]);
  const metrics: Record<string, number> = {};
  try {
    const text = await (await fetch(new URL("/metrics", url))).text();
    // Keyed by name and its outcome or reason label: ddnn_offloads_total{outcome="ok"}.
    for (const m of text.matchAll(/^(ddnn_(?:offload|degraded)\w*)(\{[^}]*\})? (\S+)$/gm)) {
      const which = /(outcome|reason)="([^"]*)"/.exec(m[2] ?? "");
      const key = which ? `${m[1]}{${which[1]}="${which[2]}"}` : m[1]!;
      metrics[key] = (metrics[key] ?? 0) + Number(m[3]);
    }
  } catch (err) {
    metrics.error = Number.NaN;
    process.stderr.write(`http-camera: cannot read /metrics: ${(err as Error).message}\n`);
  }
  write({ metrics });
  process.exit(0);
}

main().catch((err: unknown) => {
  process.stderr.write(`http-camera: ${(err as Error).message}\n`);
  process.exit(1);
});
