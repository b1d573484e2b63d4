/**
 * An emulated WAN link: two network namespaces joined by one veth pair, made and removed by
 * `ddnn profile --link` and by the network-fault tests: the device side and the broker/server
 * side, with delay, loss, bandwidth or a cut applied to that link only.
 *
 * Nothing here can reach a network outside this machine: both ends of the veth live in namespaces
 * of their own (the root namespace gets no new interface, route or rule), each namespace has its
 * loopback and a /30 from 198.18.0.0/15 (RFC 2544's benchmarking range) on the veth and no other
 * route, and `open()` checks that with `ip route get` before anything starts.
 *
 * Faults: `tc netem` for delay and loss where the kernel has sch_netem; where it has not (the
 * Firecracker kernels these tests run on build only htb, tbf and ingress), the same delay and loss
 * by netfilter's NFQUEUE and profile/netem-queue.py on each side's INPUT. Bandwidth with
 * `tc tbf` on both ends; a cut with iptables DROP rules in the device namespace (the link stays up,
 * as when a WAN link fails somewhere along the way).
 */
import { type ChildProcess, execFile, type SpawnOptions, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { type Endpoint, endpointText, relay } from "./link-relay.js";

const exec = promisify(execFile);
/** Debian's interpreter: only the standard library is needed. */
const PYTHON = "/usr/bin/python3";

/** A file shipped beside this module's source, whether it runs from dist/profile or profile/. */
function besideSource(name: string, built = name): string {
  const candidates = [
    new URL(`./${built}`, import.meta.url),
    new URL(`../../profile/${name}`, import.meta.url),
    new URL(`../dist/profile/${built}`, import.meta.url),
    new URL(`./${name}`, import.meta.url),
  ].map((u) => fileURLToPath(u));
  return candidates.find((c) => existsSync(c)) ?? candidates[0]!;
}
const NETEM_QUEUE = besideSource("netem-queue.py");
/** The relay runs as its own program in each namespace: the compiled one. */
const RELAY = besideSource("link-relay.ts", "link-relay.js");

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

/** What `--link RTT,BANDWIDTH,LOSS` asks for. */
export interface LinkSpec {
  /** Round-trip time added, ms (half of it each way). */
  readonly rttMs: number;
  /** Bandwidth each way, Mbit/s; null for no limit. */
  readonly mbit: number | null;
  /** Fraction of packets lost, each direction. */
  readonly loss: number;
  /** As written. */
  readonly text: string;
}

const RATE_UNITS: Record<string, number> = { kbit: 1e-3, mbit: 1, gbit: 1e3 };

/** Parses `50ms,1mbit,1%` (RTT in ms or s; bandwidth in kbit, mbit or gbit, or "none"; loss in %). */
export function parseLinkSpec(text: string): LinkSpec {
  const parts = text.split(",").map((p) => p.trim().toLowerCase());
  const [rtt, bandwidth, loss] = parts;
  const bad = (what: string) =>
    new Error(`"${text}": ${what} (expected RTT,BANDWIDTH,LOSS like 50ms,1mbit,1%)`);
  if (parts.length !== 3 || rtt === undefined || bandwidth === undefined || loss === undefined)
    throw bad("three comma-separated values");
  const r = /^(\d+(?:\.\d+)?)(ms|s)$/.exec(rtt);
  if (!r) throw bad(`RTT "${rtt}" is not like 50ms or 0.05s`);
  const rttMs = Number(r[1]) * (r[2] === "s" ? 1000 : 1);
  let mbit: number | null = null;
  if (bandwidth !== "none") {
    const b = /^(\d+(?:\.\d+)?)(kbit|mbit|gbit)$/.exec(bandwidth);
    if (!b || Number(b[1]) <= 0)
      throw bad(`bandwidth "${bandwidth}" is not like 1mbit, 500kbit or none`);
    mbit = Number(b[1]) * RATE_UNITS[b[2]!]!;
    if (mbit < 0.008) throw bad("bandwidth below 8kbit");
  }
  const l = /^(\d+(?:\.\d+)?)%$/.exec(loss);
  if (!l || Number(l[1]) >= 100) throw bad(`loss "${loss}" is not a percentage below 100, like 1%`);
  if (rttMs > 10_000) throw bad("RTT above 10 s");
  return { rttMs, mbit, loss: Number(l[1]) / 100, text };
}

function onPath(program: string): boolean {
  const dirs = [...(process.env.PATH ?? "").split(":"), "/usr/sbin", "/sbin"];
  return dirs.some((d) => d !== "" && existsSync(join(d, program)));
}

/**
 * Why this machine cannot emulate `spec` (one line naming what is missing), or undefined when it
 * can: root, ip, tc and iptables, network namespaces and veth pairs, tried for real, and Debian's
 * python3 for the NFQUEUE delay where the kernel has no sch_netem.
 */
export async function linkUnavailable(spec: LinkSpec): Promise<string | undefined> {
  if (process.getuid?.() !== 0)
    return "--link needs root (it makes network namespaces, a veth pair, tc qdiscs and iptables rules): run ddnn profile as root, or without --link";
  const missing = ["ip", "tc", "iptables"].filter((p) => !onPath(p));
  if (missing.length)
    return `--link needs ${missing.join(", ")} on PATH (Debian: iproute2, iptables), missing here`;
  if (!existsSync(RELAY)) return `--link needs the built relay ${RELAY} (npm run build)`;
  const netns = await netnsUnavailable();
  if (netns) return `--link: ${netns}`;
  if ((spec.rttMs > 0 || spec.loss > 0) && !(await netemWorks()) && !existsSync(PYTHON))
    return `--link: this kernel has no sch_netem, and the NFQUEUE delay needs ${PYTHON} (Debian's python3), missing here`;
  return undefined;
}

/** Whether `tc qdisc ... netem` works here, tried on a throw-away namespace's loopback. */
async function netemWorks(): Promise<boolean> {
  const probe = `ddnn-probe-${randomBytes(3).toString("hex")}`;
  try {
    await ip("netns", "add", probe);
    await inNs(probe, "tc", ["qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]);
    return true;
  } catch {
    return false;
  } finally {
    await ip("netns", "del", probe).catch(() => {});
  }
}

export class VethLink {
  private readonly children = new Set<ChildProcess>();
  private readonly forwards: { close(): Promise<void> }[] = [];
  private sockets: string | undefined;

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
      cwd: process.cwd(),
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
  async delayAndLoss(
    o: {
      delayMs: number;
      jitterMs: number;
      loss: number;
      seed: number;
    },
    mbit: number | null = null,
  ): Promise<LinkFault> {
    const sides = [this.device, this.server];
    const netem = [
      "delay",
      `${o.delayMs}ms`,
      `${o.jitterMs}ms`,
      "loss",
      `${(o.loss * 100).toFixed(3)}%`,
      ...(mbit === null ? [] : ["rate", `${Math.round(mbit * 1000)}kbit`]),
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

  /**
   * The link of `--link`: delay (half the RTT each way), loss (each direction) and bandwidth (each
   * direction, token bucket) together; `remove()` lifts all of it.
   */
  async emulate(spec: LinkSpec, seed: number): Promise<LinkFault> {
    const delayMs = spec.rttMs / 2;
    const fault =
      delayMs > 0 || spec.loss > 0
        ? await this.delayAndLoss({ delayMs, jitterMs: 0, loss: spec.loss, seed }, spec.mbit)
        : null;
    // netem shapes with its own rate; the NFQUEUE delay leaves the root qdisc free for tbf.
    if (spec.mbit !== null && fault?.mechanism !== "netem") await this.rate(spec.mbit);
    return {
      mechanism: fault?.mechanism ?? "nfqueue",
      remove: async () => {
        if (spec.mbit !== null && fault?.mechanism !== "netem") await this.rate(undefined);
        return fault ? fault.remove() : { packets: 0, dropped: 0, meanDelayMs: 0 };
      },
    };
  }

  /**
   * A TCP address on this machine's loopback whose connections cross the link to `target`: the
   * profiler's clients (the device agents) connect to it, their bytes go over the veth from the
   * device namespace to the server namespace, and from there to `target` in the profiler's own
   * namespace. Unix sockets join the namespaces (a path is one file in all of them), so the
   * profiler's namespace gains no interface or route.
   */
  async forward(target: { host: string; port: number }): Promise<{ host: string; port: number }> {
    this.sockets ??= mkdtempSync(join(tmpdir(), "ddnn-link-"));
    const n = this.forwards.length;
    const intoServer = join(this.sockets, `server-${n}.sock`);
    const intoDevice = join(this.sockets, `device-${n}.sock`);
    const port = 17_000 + n;
    // From the far end inwards, so each leg's target listens before anything connects to it.
    this.forwards.push(await relay({ unix: intoServer }, target));
    await this.relayIn(this.server, { host: this.server.addr, port }, { unix: intoServer });
    await this.relayIn(this.device, { unix: intoDevice }, { host: this.server.addr, port });
    const local = await relay({ host: "127.0.0.1", port: 0 }, { unix: intoDevice });
    this.forwards.push(local);
    return { host: "127.0.0.1", port: local.port };
  }

  private async relayIn(side: Side, from: Endpoint, to: Endpoint): Promise<void> {
    const child = this.spawn(side, process.execPath, [RELAY, endpointText(from), endpointText(to)]);
    let stderr = "";
    child.stderr!.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    await new Promise<void>((resolve, reject) => {
      createInterface({ input: child.stdout! }).once("line", () => resolve());
      child.once("exit", (code) =>
        reject(new Error(`link relay in ${side.ns} exited (${code}): ${stderr.trim()}`)),
      );
    });
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
        `${Math.round(mbit * 1000)}kbit`,
        "burst",
        String(burst),
        "latency",
        "2s",
      ]);
    }
  }

  /** Stops every process started in the namespaces, then deletes them (and with them the veth). */
  async close(): Promise<void> {
    for (const f of this.forwards.splice(0)) await f.close().catch(() => {});
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
    if (this.sockets) rmSync(this.sockets, { recursive: true, force: true });
  }
}
