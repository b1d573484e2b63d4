import { afterEach, describe, expect, it } from "vitest";
import { type FixtureStage, writeBundle } from "../../test/support/bundle-fixture.js";
import { BundleError } from "../bundle/manifest.js";
import { readBundle } from "../bundle/read.js";
import { isForward, Pipeline } from "../pipeline.js";
import { type PoolError, Turns, WorkerPool } from "./worker-pool.js";

const stages: FixtureStage[] = [
  {
    name: "device",
    inputName: "image",
    inShape: [1, 4, 4],
    featuresName: "features",
    featureSize: 32,
    logitsName: "logits",
    classes: 3,
    seed: 7,
    threshold: 0.5,
  },
  {
    name: "server",
    inputName: "features",
    inShape: [32],
    logitsName: "logits",
    classes: 3,
    seed: 11,
  },
];

function features(n: number): Float32Array[] {
  let s = 1;
  return Array.from({ length: n }, () =>
    Float32Array.from({ length: 32 }, () => {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      return (s >>> 16) / 65536;
    }),
  );
}

let pool: WorkerPool | undefined;
afterEach(async () => {
  await pool?.close(1000);
  pool = undefined;
});

async function start(options: Partial<Parameters<typeof WorkerPool.start>[0]> = {}) {
  const dir = writeBundle(stages).dir;
  const bundle = await readBundle(dir);
  const reference = await Pipeline.load(dir, { only: [...(options.only ?? [1])] });
  const batches: number[] = [];
  pool = await WorkerPool.start({
    bundle,
    only: [1],
    thresholds: [0.5, undefined],
    workers: 2,
    maxBatch: 8,
    maxDelayMs: 2,
    maxQueue: 1000,
    onBatch: (b) => batches.push(b.size),
    ...options,
  });
  return { pool, reference, batches };
}

describe("WorkerPool", () => {
  it("answers like the in-process pipeline and batches a burst", async () => {
    const { pool, reference, batches } = await start();
    const inputs = features(64);
    const answers = await Promise.all(
      inputs.map((data) => pool.submit({ from: 1, to: 1, data, dims: [1, 32] })),
    );
    for (const [i, a] of answers.entries()) {
      const [expected] = await reference.runRange(1, 1, reference.tensor(inputs[i]!, [1, 32]));
      expect(isForward(a.result)).toBe(false);
      expect([a.result.stage, !isForward(a.result) && a.result.label]).toEqual([
        expected!.stage,
        !isForward(expected!) && expected!.label,
      ]);
    }
    expect(Math.max(...batches)).toBeGreaterThan(1);
    expect(batches.reduce((a, b) => a + b, 0)).toBe(64);
  });

  it("runs a lone request at an idle pool on the calling thread (max delay 0), the same answer", async () => {
    const { pool, reference, batches } = await start({ maxDelayMs: 0 });
    const inputs = features(6);
    for (const [i, data] of inputs.entries()) {
      // One at a time: every request finds the pool idle.
      const a = await pool.submit({
        from: 1,
        to: 1,
        data,
        dims: [1, 32],
        ignoreExits: i % 2 === 0,
      });
      const [expected] = await reference.runRange(1, 1, reference.tensor(data, [1, 32]));
      expect([a.result.stage, a.result.label, a.batchSize, a.queueMs]).toEqual([
        expected!.stage,
        expected!.label,
        1,
        0,
      ]);
      expect(a.result.entropy).toBeCloseTo(expected!.entropy, 6);
    }
    expect(pool.inlineRuns).toBe(6);
    expect(batches).toEqual([1, 1, 1, 1, 1, 1]);
    expect(pool.busySeconds).toBeGreaterThan(0);
    // A burst: the first runs here, the rest queue for the workers while it runs.
    const burst = await Promise.all(
      features(20).map((data) => pool.submit({ from: 1, to: 1, data, dims: [1, 32] })),
    );
    expect(burst).toHaveLength(20);
    expect(pool.inlineRuns).toBeLessThan(6 + 20);
    expect(batches.reduce((x, y) => x + y, 0)).toBe(26);
  });

  it("keeps every request on the workers with inline off, or with a max delay", async () => {
    for (const options of [{ maxDelayMs: 0, inline: false }, { maxDelayMs: 2 }]) {
      const { pool } = await start(options);
      await pool.submit({ from: 1, to: 1, data: features(1)[0]!, dims: [1, 32] });
      expect(pool.inlineRuns).toBe(0);
      await pool.close(1000);
    }
  });

  it("counts the time its workers run batches (utilisation), not the time they wait", async () => {
    const ms: number[] = [];
    const { pool } = await start({ onBatch: (b) => ms.push(b.ms) });
    expect(pool.busySeconds).toBe(0);
    await Promise.all(
      features(64).map((data) => pool.submit({ from: 1, to: 1, data, dims: [1, 32] })),
    );
    const busy = pool.busySeconds;
    expect(busy).toBeGreaterThan(0);
    expect(busy).toBeCloseTo(ms.reduce((a, b) => a + b, 0) / 1000, 9);
    // Idle workers add nothing.
    await new Promise((r) => setTimeout(r, 100));
    expect(pool.busySeconds).toBe(busy);
  });

  it("never mixes requests with different exit rules in one batch", async () => {
    const { pool, reference } = await start({
      only: [0, 1],
      workers: 1,
      maxBatch: 64,
      maxDelayMs: 5,
    });
    const px = features(40).map((f) => f.slice(0, 16));
    const answers = await Promise.all(
      px.map((data, i) =>
        pool.submit({ from: 0, to: 1, data, dims: [1, 1, 4, 4], ignoreExits: i % 2 === 0 }),
      ),
    );
    const expected = await reference.runRange(
      0,
      1,
      reference.tensor(Float32Array.from(px.flatMap((p) => Array.from(p))), [40, 1, 4, 4]),
    );
    answers.forEach((a, i) => {
      expect(a.result.stage).toBe(i % 2 === 0 ? 1 : expected[i]!.stage);
    });
    expect(answers.some((a, i) => i % 2 === 1 && a.result.stage === 0)).toBe(true);
  });

  it("settles every request when a worker dies during close()", async () => {
    const { pool } = await start({ workers: 1, maxBatch: 8, maxDelayMs: 0 });
    const pending = features(64).map((data) =>
      pool.submit({ from: 1, to: 1, data, dims: [1, 32] }),
    );
    const closing = pool.close(2000);
    pool.crashOne(5);
    // Every request settles well within close()'s bound: none is left waiting forever.
    const settled = await Promise.race([
      Promise.allSettled(pending),
      new Promise<"hung">((r) => setTimeout(() => r("hung"), 5000)),
    ]);
    await closing;
    expect(settled).not.toBe("hung");
    const results = settled as PromiseSettledResult<Awaited<(typeof pending)[number]>>[];
    // Each one is either answered by the stage or refused with a reason naming the shutdown.
    for (const r of results) {
      if (r.status === "fulfilled") expect(r.value.result.stage).toBe(1);
      else
        expect([(r.reason as PoolError).code, (r.reason as Error).message]).toEqual([
          "internal",
          expect.stringMatching(/exited \(code 5\)|pool closed/),
        ]);
    }
    // The crash took the batch it held; with no worker left (none is replaced while closing),
    // what was queued behind it is refused when close() gives up, not left waiting.
    const reasons = results.flatMap((r) =>
      r.status === "rejected" ? [(r.reason as Error).message] : [],
    );
    expect(reasons.some((m) => /exited \(code 5\)/.test(m))).toBe(true);
  });

  it("fails to start with the bundle's error when a stage cannot be opened, and replaces no worker", async () => {
    const dir = writeBundle(stages).dir;
    const bundle = await readBundle(dir);
    const broken = {
      ...bundle,
      stageBytes: [bundle.stageBytes[0]!, new TextEncoder().encode("not onnx")],
    };
    const exits: number[] = [];
    const failed = await start({
      bundle: broken,
      workers: 3,
      onWorkerExit: (e) => exits.push(e.code),
    }).catch((err: unknown) => err);
    expect(failed).toBeInstanceOf(BundleError);
    expect((failed as BundleError).message).toMatch(/server\.onnx.*not a loadable ONNX model/);
    await new Promise((r) => setTimeout(r, 200));
    expect(exits).toEqual([]);
  });

  it("refuses work beyond the queue bound as overloaded and expired work as deadline_exceeded", async () => {
    const { pool } = await start({ workers: 1, maxQueue: 4, maxBatch: 1, maxDelayMs: 0 });
    const inputs = features(40);
    const settled = await Promise.allSettled(
      inputs.map((data) => pool.submit({ from: 1, to: 1, data, dims: [1, 32] })),
    );
    const overloaded = settled.filter(
      (s) => s.status === "rejected" && (s.reason as PoolError).code === "overloaded",
    );
    expect(overloaded.length).toBeGreaterThan(0);
    expect(settled.filter((s) => s.status === "fulfilled").length + overloaded.length).toBe(40);
    await expect(
      pool.submit({ from: 1, to: 1, data: inputs[0]!, dims: [1, 32], deadline: Date.now() - 1 }),
    ).rejects.toMatchObject({
      code: "deadline_exceeded",
    });
  });

  it("replaces a worker that dies and still answers the requests it held", async () => {
    const exits: number[] = [];
    const { pool } = await start({
      workers: 2,
      maxBatch: 4,
      maxDelayMs: 1,
      onWorkerExit: (e) => exits.push(e.code),
    });
    const inputs = features(200);
    const pending = inputs.map((data) => pool.submit({ from: 1, to: 1, data, dims: [1, 32] }));
    pool.crashOne(3);
    const settled = await Promise.allSettled(pending);
    expect(settled.every((s) => s.status === "fulfilled")).toBe(true);
    // The replacement comes up and serves.
    for (let i = 0; i < 100 && pool.readyWorkers < 2; i++)
      await new Promise((r) => setTimeout(r, 20));
    expect(pool.readyWorkers).toBe(2);
    expect(exits).toEqual([3]);
    const again = await pool.submit({ from: 1, to: 1, data: inputs[0]!, dims: [1, 32] });
    expect(again.result.stage).toBe(1);
  });

  it("gives each client one place per turn in a batch, so a burst does not go first", async () => {
    // Batches here form by size, not by time: with a 5 ms delay a pause of the loaded host
    // between two submits (Node 22, CI) sent a first batch of two.
    const { pool, batches } = await start({ workers: 1, maxBatch: 4, maxDelayMs: 200 });
    const inputs = features(23);
    const order: string[] = [];
    const submit = (client: string, data: Float32Array) =>
      pool.submit({ from: 1, to: 1, data, dims: [1, 32], client }).then(() => order.push(client));
    // A burst of 20 from one client, then one request from each of three others.
    const all = [
      ...inputs.slice(0, 20).map((d) => submit("flood", d)),
      ...["a", "b", "c"].map((c, i) => submit(c, inputs[20 + i]!)),
    ];
    await Promise.all(all);
    expect(batches.slice(0, 2)).toEqual([4, 4]);
    // The burst's first four filled the idle worker's batch; the others queued behind the rest of
    // the burst, yet the next batch held them and one of the burst (in queue order: the last one).
    expect(order.slice(0, 4)).toEqual(["flood", "flood", "flood", "flood"]);
    expect(order.slice(4, 8).sort()).toEqual(["a", "b", "c", "flood"]);
    expect(order.filter((c) => c === "flood")).toHaveLength(20);
  });
});

describe("Turns", () => {
  const q = (...clients: (string | undefined)[]) =>
    clients.map((client, i) => ({ i, job: client === undefined ? {} : { client } }));
  const ids = (ps: { i: number }[]) => ps.map((p) => p.i);

  it("is the queue's order when one client (or none) is waiting", () => {
    expect(ids(new Turns().take(q("x", "x", "x", "x"), 3))).toEqual([0, 1, 2]);
    expect(ids(new Turns().take(q(undefined, undefined), 8))).toEqual([0, 1]);
  });

  it("takes one of each client per turn, clients in the order of their oldest request", () => {
    // x x x x y z y  ->  turn 0: x0 y4 z5, turn 1: x1 y6, turn 2: x2, turn 3: x3
    const queued = q("x", "x", "x", "x", "y", "z", "y");
    expect(ids(new Turns().take(queued, 7))).toEqual([0, 4, 5, 1, 6, 2, 3]);
    expect(ids(new Turns().take(queued, 4))).toEqual([0, 4, 5, 1]);
    // Requests without a client share one turn.
    expect(ids(new Turns().take(q(undefined, undefined, "x"), 2))).toEqual([0, 2]);
  });

  it("goes on from batch to batch with the client served longest ago, even one place at a time", () => {
    const turns = new Turns();
    // A burst of x, then y and z: batches of one still alternate instead of draining x first.
    const queued = q("x", "x", "x", "x", "y", "z");
    const order: number[] = [];
    for (let left = [...queued]; left.length > 0; ) {
      const [p] = turns.take(left, 1);
      order.push(p!.i);
      left = left.filter((r) => r !== p);
    }
    expect(order).toEqual([0, 4, 5, 1, 2, 3]);
  });
});
