/**
 * Two real `ddnn operator` processes against a real kube-apiserver: exactly one writes, the other
 * takes over when the leader is killed (SIGKILL, so no release), the new leader's first pass over
 * an unchanged model writes nothing, and SIGTERM stops gracefully and releases the Lease. And a
 * leader whose renewal is held up (a stalled TCP proxy in front of the API server) gives up at the
 * renew deadline and stays given up when the late answer arrives.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KubeClient } from "../../operator/kube.js";
import { LeaderElector } from "../../operator/leader.js";
import { type ControlPlane, REPO_ROOT } from "../cluster/control-plane.js";
import {
  adminClient,
  BundleServer,
  chartOperatorProcess,
  DEMO_DIGEST_URL,
  demoBundleBytes,
  getOrUndefined,
  kubeConfigVia,
  operatorRequests,
  StallingProxy,
  sleep,
  startCluster,
  waitFor,
} from "./harness.js";

const LEASE_MS = 4000;
const RENEW_MS = 3000;
const RETRY_MS = 500;

interface Proc {
  id: string;
  child: ChildProcess;
  output: string[];
  port: Promise<number>;
  exit: Promise<number | null>;
}

let cp: ControlPlane;
let admin: KubeClient;
const bundles = new BundleServer();
let proxy = "";
const procs: Proc[] = [];

function startOperator(id: string): Proc {
  const chart = chartOperatorProcess();
  const child = spawn(
    join(REPO_ROOT, "node_modules", ".bin", "vite-node"),
    [
      join(REPO_ROOT, "test", "operator", "run-operator.ts"),
      "--",
      `--kubeconfig=${cp.kubeconfigPath("operator")}`,
      `--identity=${id}`,
      "--image=ddnn-fog:test",
      "--http-port=0",
      // Two replicas on one machine: each its own device identity port.
      "--identity-port=0",
      "--lease-namespace=ddnn-system",
      `--lease-duration-ms=${LEASE_MS}`,
      `--renew-deadline-ms=${RENEW_MS}`,
      `--retry-period-ms=${RETRY_MS}`,
      ...chart.args,
    ],
    {
      cwd: REPO_ROOT,
      env: { ...process.env, HTTP_PROXY: proxy, ...chart.env },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  const output: string[] = [];
  const port = new Promise<number>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      const text = chunk.toString("utf8");
      output.push(text);
      const m = /listening on :(\d+)/.exec(output.join(""));
      if (m) resolve(Number(m[1]));
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    child.once("exit", (code) =>
      reject(new Error(`${id} exited (${code}) before listening:\n${output.join("")}`)),
    );
  });
  port.catch(() => {});
  const exit = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const proc = { id, child, output, port, exit };
  procs.push(proc);
  return proc;
}

async function http(port: number, path: string): Promise<{ code: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`);
  return { code: res.status, body: await res.text() };
}

async function holder(): Promise<string | undefined> {
  const lease = await getOrUndefined<{ spec: { holderIdentity?: string } }>(admin, {
    apiVersion: "coordination.k8s.io/v1",
    plural: "leases",
    namespace: "ddnn-system",
    name: "ddnn-operator",
  });
  return lease?.spec.holderIdentity;
}

/** Requests that changed something, by the operator process with this identity. */
function writesBy(id: string, since = 0, includeLeases = false) {
  const all = includeLeases
    ? cp
        .auditEvents()
        .slice(since)
        .filter((e) => e.verb !== "watch" && (e.userAgent ?? "").includes(id))
    : operatorRequests(cp, since, id);
  // Refused attempts do not count: two candidates that start together both try to create the
  // Lease, and the API server lets only one create succeed (the other gets 409).
  return all.filter(
    (e) =>
      ["create", "update", "patch", "delete"].includes(e.verb) &&
      (e.responseStatus?.code ?? 0) < 300,
  );
}

beforeAll(async () => {
  cp = await startCluster();
  admin = adminClient(cp);
  proxy = await bundles.start();
  bundles.files.set(DEMO_DIGEST_URL, demoBundleBytes());
}, 180_000);

afterAll(async () => {
  for (const p of procs)
    if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill("SIGKILL");
  await bundles.stop();
  await cp?.stop();
});

describe("leader election between two operator processes", () => {
  let leader: Proc;
  let standby: Proc;

  it("exactly one of two operators writes", async () => {
    const a = startOperator("op-a");
    const b = startOperator("op-b");
    const [portA, portB] = await Promise.all([a.port, b.port]);
    const first = await waitFor("a lease holder", holder, 30_000);
    [leader, standby] = first === "op-a" ? [a, b] : [b, a];
    await cp.kubectlOk(["apply", "-f", join(REPO_ROOT, "examples", "ddnnmodel.yaml")]);
    await waitFor(
      "the owned objects",
      async () =>
        (await cp.kubectlOk(["get", "deployments,daemonsets", "-n", "fog", "-o", "name"]))
          .split("\n")
          .filter(Boolean).length === 4,
      30_000,
    );
    await sleep(2 * RETRY_MS + 500);
    expect(writesBy(leader.id).length).toBeGreaterThan(0);
    // The standby only reads: not even the Lease is written while the leader renews it.
    expect(writesBy(standby.id, 0, true).map((e) => `${e.verb} ${e.requestURI}`)).toEqual([]);

    const ports = { [a.id]: portA, [b.id]: portB };
    for (const p of [leader, standby]) {
      expect((await http(ports[p.id]!, "/healthz")).code).toBe(200);
      expect((await http(ports[p.id]!, "/readyz")).code).toBe(200);
    }
    const leaderMetrics = (await http(ports[leader.id]!, "/metrics")).body;
    expect(leaderMetrics).toMatch(/^ddnn_operator_leader 1$/m);
    expect(leaderMetrics).toMatch(/^ddnn_operator_reconcile_total\{result="success"\} [1-9]/m);
    expect(leaderMetrics).toContain("ddnn_operator_reconcile_duration_seconds_bucket");
    expect(leaderMetrics).toMatch(/^ddnn_operator_queue_depth \d+$/m);
    expect((await http(ports[standby.id]!, "/metrics")).body).toMatch(/^ddnn_operator_leader 0$/m);
  });

  it("killing the leader hands over within the lease duration, and the new leader writes only what changed", async () => {
    const killedAt = Date.now();
    leader.child.kill("SIGKILL");
    await leader.exit;
    // A request the leader had in flight may still be answered (and audited) just after the kill.
    await sleep(200);
    const auditBefore = cp.auditEvents().length;
    const took = await waitFor(
      "the standby to take the lease",
      async () => ((await holder()) === standby.id ? Date.now() - killedAt : undefined),
      LEASE_MS * 4,
      50,
    );
    process.stdout.write(
      `lease hand-over after SIGKILL: ${took} ms (leaseDuration ${LEASE_MS} ms, retryPeriod ${RETRY_MS} ms)\n`,
    );
    // client-go's rule: the lease counts as expired leaseDuration after the candidate last saw it
    // change, so the bound is leaseDuration plus the candidate's polling period.
    expect(took).toBeLessThanOrEqual(LEASE_MS + RETRY_MS * 1.2 + 300);

    // Its first pass over the unchanged model (with caches it filled itself) writes nothing.
    await sleep(2000);
    expect(writesBy(standby.id, auditBefore).map((e) => `${e.verb} ${e.requestURI}`)).toEqual([]);

    await cp.kubectlOk([
      "patch",
      "ddnn",
      "demo",
      "-n",
      "fog",
      "--type=merge",
      "-p",
      '{"spec":{"tiers":{"server":{"replicas":4}}}}',
    ]);
    await waitFor("the new leader to scale the server", async () => {
      const d = await getOrUndefined<{ spec: { replicas: number } }>(admin, {
        apiVersion: "apps/v1",
        plural: "deployments",
        namespace: "fog",
        name: "demo-server",
      });
      return d?.spec.replicas === 4;
    });
    expect(writesBy(standby.id, auditBefore).length).toBeGreaterThan(0);
    expect(writesBy(leader.id, auditBefore, true)).toEqual([]);
  });

  it("SIGTERM stops gracefully and releases the lease", async () => {
    standby.child.kill("SIGTERM");
    expect(await standby.exit).toBe(0);
    expect(await holder()).toBe("");
    expect(standby.output.join("")).toContain("SIGTERM: stopping");
    expect(standby.output.join("")).not.toContain(cp.tokens.operator);
  });
});

describe("a lease renewal slower than the renew deadline", () => {
  it("stops leading at the deadline, and the late answer neither renews the lease nor makes it leader again", async () => {
    const lease = async () =>
      (await getOrUndefined<{ spec: { holderIdentity?: string; renewTime?: string } }>(admin, {
        apiVersion: "coordination.k8s.io/v1",
        plural: "leases",
        namespace: "ddnn-system",
        name: "stalled-renew",
      }))!;
    const proxy = new StallingProxy(new URL(cp.server));
    const client = new KubeClient(kubeConfigVia(cp, "admin", await proxy.start()), "stalled-renew");
    const calls: string[] = [];
    const deadline = 2000;
    const retry = 250;
    const elector = new LeaderElector(client, {
      namespace: "ddnn-system",
      name: "stalled-renew",
      identity: "stalled",
      leaseDurationMs: 3000,
      renewDeadlineMs: deadline,
      retryPeriodMs: retry,
      onStartedLeading: () => calls.push("started"),
      onStoppedLeading: () => calls.push("stopped"),
    });
    const stop = new AbortController();
    const running = elector.run(stop.signal);
    try {
      await waitFor("leadership", () => calls.includes("started"), 10_000, 20);
      const first = (await lease()).spec.renewTime;
      await waitFor(
        "a renewal through the proxy",
        async () => (await lease()).spec.renewTime !== first,
      );

      proxy.stall();
      const stalledAt = Date.now();
      await waitFor(
        "the renew deadline to end leadership",
        () => calls.includes("stopped"),
        10_000,
        5,
      );
      const took = Date.now() - stalledAt;
      expect(elector.isLeader()).toBe(false);
      const atStop = await lease();
      expect(atStop.spec.holderIdentity).toBe("stalled");

      // The held renewal now reaches the API server, and its answer comes back.
      proxy.release();
      await waitFor("the late answer", () => proxy.deliveredSinceRelease > 0, 10_000, 5);
      await sleep(1000);
      expect.soft(elector.isLeader()).toBe(false);
      expect.soft((await lease()).spec.renewTime).toBe(atStop.spec.renewTime);
      expect(calls).toEqual(["started", "stopped"]);
      await running;
      process.stdout.write(
        `stalled renewal: leadership ended ${took} ms after the stall (renewDeadline ${deadline} ms, retryPeriod ${retry} ms)\n`,
      );
      // The last renewal was at most one retryPeriod (plus its request) before the stall.
      expect(took).toBeGreaterThanOrEqual(deadline - retry - 200);
      expect(took).toBeLessThanOrEqual(deadline + 500);
    } finally {
      stop.abort();
      client.close();
      await proxy.stop();
    }
  });
});
