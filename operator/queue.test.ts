import { describe, expect, it } from "vitest";
import { WorkQueue } from "./queue.js";

const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));

describe("WorkQueue", () => {
  it("never runs one key twice at once, and runs it again once if it changed meanwhile", async () => {
    const q = new WorkQueue({ workers: 4 });
    let running = 0;
    let maxRunning = 0;
    let runs = 0;
    q.run(async () => {
      running++;
      runs++;
      maxRunning = Math.max(maxRunning, running);
      await tick(20);
      running--;
      return {};
    });
    q.add("fog/a");
    await tick(2);
    q.add("fog/a");
    q.add("fog/a");
    q.add("fog/a");
    await tick(80);
    await q.whenIdle();
    expect(maxRunning).toBe(1);
    expect(runs).toBe(2);
    await q.stop();
  });

  it("runs different keys in parallel", async () => {
    const q = new WorkQueue({ workers: 2 });
    let running = 0;
    let maxRunning = 0;
    q.run(async () => {
      running++;
      maxRunning = Math.max(maxRunning, running);
      await tick(20);
      running--;
      return {};
    });
    q.add("a");
    q.add("b");
    await tick(5);
    await q.whenIdle();
    expect(maxRunning).toBe(2);
    await q.stop();
  });

  it("retries failures with growing backoff and forgets them after a success", async () => {
    const outcomes: string[] = [];
    const q = new WorkQueue({
      baseDelayMs: 10,
      maxDelayMs: 1000,
      onDone: (_k, r) => outcomes.push(r),
    });
    const times: number[] = [];
    let calls = 0;
    q.run(async () => {
      times.push(performance.now());
      calls++;
      if (calls <= 3) throw new Error("API server unavailable");
      return {};
    });
    q.add("fog/a");
    await tick(200);
    expect(outcomes).toEqual(["error", "error", "error", "success"]);
    const gaps = times.slice(1).map((t, i) => t - times[i]!);
    expect(gaps[0]).toBeGreaterThanOrEqual(9);
    expect(gaps[1]).toBeGreaterThanOrEqual(19);
    expect(gaps[2]).toBeGreaterThanOrEqual(39);
    expect(q.retryDelay("fog/a")).toBe(10);
    await q.stop();
  });

  it("requeues after the time a reconcile asks for", async () => {
    const q = new WorkQueue();
    let calls = 0;
    q.run(async () => (++calls === 1 ? { requeueAfter: 30 } : {}));
    q.add("k");
    await tick(10);
    expect(calls).toBe(1);
    await tick(60);
    expect(calls).toBe(2);
    await q.stop();
  });

  it("stop() waits for the reconcile in flight and takes nothing new", async () => {
    const q = new WorkQueue();
    let finished = false;
    q.run(async () => {
      await tick(30);
      finished = true;
      return {};
    });
    q.add("k");
    await tick(2);
    await q.stop();
    expect(finished).toBe(true);
    q.add("k2");
    expect(q.depth()).toBe(0);
  });
});
