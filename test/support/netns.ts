/**
 * Two network namespaces joined by one veth pair, made and removed by a test: the device side and
 * the broker/server side of a WAN link, with faults applied to that link only.
 *
 * Nothing here can reach a network outside this machine: both ends of the veth live in namespaces
 * of their own (the root namespace gets no new interface, route or rule), each namespace has its
 * loopback and a /30 from 198.18.0.0/15 (RFC 2544's benchmarking range) on the veth and no other
 * route, and `open()` checks that with `ip route get` before anything starts.
 *
 * Faults: `tc netem` for delay and loss where the kernel has sch_netem; where it has not (the
 * Firecracker kernels these tests run on build only htb, tbf and ingress), the same delay and loss
 * by netfilter's NFQUEUE and test/support/netem-queue.py on each side's INPUT. Bandwidth with
 * `tc tbf` on both ends; a cut with iptables DROP rules in the device namespace (the link stays up,
 * as when a WAN link fails somewhere along the way).
 */
import { type ChildProcess, execFile, type SpawnOptions, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createInterface } from "node:readline";
import { promisify } from "node:util";
import { root } from "./run.js";

const exec = promisify(execFile);
/** Debian's interpreter: only the standard library is needed. */
const PYTHON = "/usr/bin/python3";
const NETEM_QUEUE = `${root}/test/support/netem-queue.py`;

export interface Side {
  readonly ns: string;
  readonly ifname: string;
  readonly addr: string;
}

export interface LinkFault {
  readonly mechanism: "netem" | "nfqueue";
  /** Packets the fault saw and dropped, both directions (read when it is removed). */
  remove(): Promise<{ packets: number; dropped: number; meanDelayMs: number }>;
}

async function ip(...args: string[]): Promise<string> {
  const { stdout } = await exec("ip", args, { timeout: 10_000 });
  return stdout;
}

async function inNs(ns: string, program: string, args: readonly string[]): Promise<string> {
  const { stdout } = await exec("ip", ["netns", "exec", ns, program, ...args], {
    timeout: 10_000,
  });
  return stdout;
}

/** Adds (-A) or deletes (-D) the rule that hands packets arriving over the veth to queue 0. */
function queueRule(op: "-A" | "-D", side: Side): Promise<string> {
  return inNs(side.ns, "iptables", [
    op,
    "INPUT",
    "-i",
    side.ifname,
    "-j",
    "NFQUEUE",
    "--queue-num",
    "0",
  ]);
}

/**
 * Why this machine cannot run the tests (no network namespaces, no veth), tried for real, or
 * undefined when it can.
 */
export async function netnsUnavailable(): Promise<string | undefined> {
  const probe = `ddnn-probe-${randomBytes(3).toString("hex")}`;
  try {
    await ip("netns", "add", probe);
  } catch (err) {
    return `cannot create a network namespace (ip netns add): ${(err as { stderr?: string }).stderr?.trim() || (err as Error).message}`;
  }
  try {
    await ip("-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1");
  } catch (err) {
    return `cannot create a veth pair: ${(err as { stderr?: string }).stderr?.trim() || (err as Error).message}`;
  } finally {
    await ip("netns", "del", probe).catch(() => {});
  }
  return undefined;
}

export class VethLink {
  private readonly children = new Set<ChildProcess>();

  private constructor(
    readonly device: Side,
    readonly server: Side,
  ) {}

  /** Creates both namespaces and the veth between them, unique per run; `close()` removes them. */
  static async open(): Promise<VethLink> {
    const tag = randomBytes(3).toString("hex");
    const third = randomBytes(1)[0]!;
    const fourth = 4 * (randomBytes(1)[0]! % 64);
    const net = `198.18.${third}`;
    const device: Side = {
      ns: `ddnn-nf-${tag}-dev`,
      ifname: `nf${tag}d`,
      addr: `${net}.${fourth + 1}`,
    };
    const server: Side = {
      ns: `ddnn-nf-${tag}-srv`,
      ifname: `nf${tag}s`,
      addr: `${net}.${fourth + 2}`,
    };
    const link = new VethLink(device, server);
    try {
      await ip("netns", "add", device.ns);
      await ip("netns", "add", server.ns);
      await ip(
        "link",
        "add",
        device.ifname,
        "netns",
        device.ns,
        "type",
        "veth",
        "peer",
        "name",
        server.ifname,
        "netns",
        server.ns,
      );
      for (const side of [device, server]) {
        await ip("-n", side.ns, "addr", "add", `${side.addr}/30`, "dev", side.ifname);
        await ip("-n", side.ns, "link", "set", "lo", "up");
        await ip("-n", side.ns, "link", "set", side.ifname, "up");
      }
      await link.checkContained();
    } catch (err) {
      await link.close();
      throw err;
    }
    return link;
  }

  /** Each side reaches the other over the veth and nothing else: no other route exists. */
  private async checkContained(): Promise<void> {
    for (const [from, to] of [
      [this.device, this.server],
      [this.server, this.device],
    ] as const) {
      const route = await ip("-n", from.ns, "route", "get", to.addr);
      if (!route.includes(`dev ${from.ifname}`))
        throw new Error(`${from.ns}: ${to.addr} is not routed over the veth: ${route}`);
      const routes = (await ip("-n", from.ns, "-4", "route", "show", "table", "all"))
        .split("\n")
        .filter((l) => l.trim() !== "" && !/^(local|broadcast) /.test(l));
      if (routes.length !== 1 || !routes[0]!.includes(`dev ${from.ifname}`))
        throw new Error(`${from.ns}: unexpected routes: ${routes.join("; ")}`);
      // An address elsewhere (TEST-NET-2) has no route at all.
      const elsewhere = await ip("-n", from.ns, "route", "get", "198.51.100.1").then(
        (r) => r,
        (err: { stderr?: string }) => err.stderr ?? "",
      );
      if (!/unreachable/i.test(elsewhere))
        throw new Error(`${from.ns}: 198.51.100.1 is routed (${elsewhere.trim()})`);
    }
  }

  /** Starts `program args` inside the side's namespace; stopped by `close()` if still running. */
  spawn(side: Side, program: string, args: readonly string[], options: SpawnOptions = {}) {
    const child = spawn("ip", ["netns", "exec", side.ns, program, ...args], {
      cwd: root,
      stdio: ["ignore", "pipe", "pipe"],
      ...options,
    });
    this.children.add(child);
    child.once("exit", () => this.children.delete(child));
    return child;
  }

  /** Runs a program in the side's namespace to its end and returns stdout. */
  run(side: Side, program: string, args: readonly string[]): Promise<string> {
    return inNs(side.ns, program, args);
  }

  /** Delay +- jitter (uniform) and loss on both directions of the link. */
  async delayAndLoss(o: {
    delayMs: number;
    jitterMs: number;
    loss: number;
    seed: number;
  }): Promise<LinkFault> {
    const sides = [this.device, this.server];
    const netem = [
      "delay",
      `${o.delayMs}ms`,
      `${o.jitterMs}ms`,
      "loss",
      `${(o.loss * 100).toFixed(3)}%`,
    ];
    try {
      await inNs(this.device.ns, "tc", [
        "qdisc",
        "replace",
        "dev",
        this.device.ifname,
        "root",
        "netem",
        ...netem,
      ]);
    } catch {
      return this.queueDelayAndLoss(o);
    }
    await inNs(this.server.ns, "tc", [
      "qdisc",
      "replace",
      "dev",
      this.server.ifname,
      "root",
      "netem",
      ...netem,
    ]);
    return {
      mechanism: "netem",
      remove: async () => {
        let packets = 0;
        let dropped = 0;
        for (const side of sides) {
          const stats = await inNs(side.ns, "tc", ["-s", "qdisc", "show", "dev", side.ifname]);
          packets += Number(/Sent \d+ bytes (\d+) pkt/.exec(stats)?.[1] ?? 0);
          dropped += Number(/dropped (\d+)/.exec(stats)?.[1] ?? 0);
          await inNs(side.ns, "tc", ["qdisc", "del", "dev", side.ifname, "root"]);
        }
        return { packets: packets + dropped, dropped, meanDelayMs: o.delayMs };
      },
    };
  }

  private async queueDelayAndLoss(o: {
    delayMs: number;
    jitterMs: number;
    loss: number;
    seed: number;
  }): Promise<LinkFault> {
    const queues: { side: Side; child: ChildProcess; counts: Promise<string> }[] = [];
    const remove = async () => {
      const totals = { packets: 0, dropped: 0, delaySum: 0 };
      for (const side of [this.device, this.server]) await queueRule("-D", side).catch(() => {});
      for (const q of queues) {
        q.child.kill("SIGTERM");
        const last = await q.counts;
        const c = JSON.parse(last) as { packets: number; dropped: number; delayMsSum: number };
        totals.packets += c.packets;
        totals.dropped += c.dropped;
        totals.delaySum += c.delayMsSum;
      }
      const passed = totals.packets - totals.dropped;
      return {
        packets: totals.packets,
        dropped: totals.dropped,
        meanDelayMs: passed > 0 ? totals.delaySum / passed : Number.NaN,
      };
    };
    try {
      for (const [k, side] of [this.device, this.server].entries()) {
        const child = this.spawn(side, PYTHON, [
          NETEM_QUEUE,
          "0",
          String(o.delayMs),
          String(o.jitterMs),
          String(o.loss),
          String(o.seed + k),
        ]);
        const lines = createInterface({ input: child.stdout! });
        let stderr = "";
        child.stderr!.on("data", (d: Buffer) => {
          stderr += d.toString();
        });
        const ready = new Promise<void>((resolve, reject) => {
          lines.once("line", () => resolve());
          child.once("exit", (code) =>
            reject(new Error(`netem-queue.py exited (${code}): ${stderr}`)),
          );
        });
        const counts = new Promise<string>((resolve) => {
          let last = "{}";
          lines.on("line", (l) => {
            last = l;
          });
          child.once("exit", () => resolve(last));
        });
        queues.push({ side, child, counts });
        await ready;
        // Only once the listener is bound: a queue nobody reads drops every packet.
        await queueRule("-A", side);
      }
    } catch (err) {
      await remove().catch(() => {});
      throw err;
    }
    return { mechanism: "nfqueue", remove };
  }

  /** Every packet over the link dropped, both ways, until `restore()`. */
  async cut(): Promise<void> {
    const { ns, ifname } = this.device;
    await inNs(ns, "iptables", ["-I", "INPUT", "-i", ifname, "-j", "DROP"]);
    await inNs(ns, "iptables", ["-I", "OUTPUT", "-o", ifname, "-j", "DROP"]);
  }

  async restore(): Promise<void> {
    const { ns, ifname } = this.device;
    await inNs(ns, "iptables", ["-D", "INPUT", "-i", ifname, "-j", "DROP"]);
    await inNs(ns, "iptables", ["-D", "OUTPUT", "-o", ifname, "-j", "DROP"]);
  }

  /** The link's bandwidth, each direction (token bucket; `undefined` removes the limit). */
  async rate(mbit: number | undefined): Promise<void> {
    for (const side of [this.device, this.server]) {
      if (mbit === undefined) {
        await inNs(side.ns, "tc", ["qdisc", "del", "dev", side.ifname, "root"]).catch(() => {});
        continue;
      }
      // A bucket of 2 ms at the rate, at least one full-size packet: shaping, not bursts.
      const burst = Math.max(1600, Math.round((mbit * 1e6) / 8 / 500));
      await inNs(side.ns, "tc", [
        "qdisc",
        "replace",
        "dev",
        side.ifname,
        "root",
        "tbf",
        "rate",
        `${mbit}mbit`,
        "burst",
        String(burst),
        "latency",
        "2s",
      ]);
    }
  }

  /** Stops every process started in the namespaces, then deletes them (and with them the veth). */
  async close(): Promise<void> {
    await Promise.all(
      [...this.children].map(
        (c) =>
          new Promise<void>((resolve) => {
            if (c.exitCode !== null || c.signalCode !== null) return resolve();
            const t = setTimeout(() => c.kill("SIGKILL"), 3000);
            c.once("exit", () => {
              clearTimeout(t);
              resolve();
            });
            c.kill("SIGTERM");
          }),
      ),
    );
    for (const side of [this.device, this.server]) {
      // A process that escaped its parent would keep the namespace alive: end those by pid too.
      const pids = await ip("netns", "pids", side.ns).catch(() => "");
      for (const pid of pids.split(/\s+/).filter(Boolean)) {
        try {
          process.kill(Number(pid), "SIGKILL");
        } catch {}
      }
      await ip("netns", "del", side.ns).catch(() => {});
    }
  }
}
