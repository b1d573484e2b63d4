/**
 * The test cluster's network, kept inside this machine. Every address a node, a Pod, a Service or
 * the cluster DNS uses lies in ranges that are routed onto bridges this module creates, so no
 * packet of the cluster can leave through the machine's real interfaces, even before kube-proxy
 * runs or when a Pod sends to an address nobody has:
 *
 * - `ddnnc0`: /32 addresses for the API server, the cluster DNS and each node's IP; the rest of the
 *   node range, the Service range and the whole Pod range are routed onto it (nothing answers there).
 * - `ddnnc<N>`: node N's Pod bridge, the CNI bridge plugin's gateway (10.244.N.1/24).
 * - Policy routing: whatever arrives from these bridges is routed with a table that knows only the
 *   cluster's ranges and is otherwise unreachable; and an iptables chain drops anything forwarded
 *   between them and another interface.
 *
 * `setUpNetwork` checks that no route of the machine overlaps these ranges before it adds anything,
 * and `checkNetwork` (run before any node program starts) that a sample address of every range
 * resolves to one of the bridges or to lo, refusing otherwise. `tearDownNetwork` removes it all.
 */
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";

export const BRIDGE = "ddnnc0";
/** Interface-name pattern (iptables) of every bridge of the cluster. */
const BRIDGE_PATTERN = "ddnnc+";
export const NODE_RANGE = "10.99.0.0/24";
export const SERVICE_RANGE = "10.96.0.0/24";
export const POD_RANGE = "10.244.0.0/16";
export const API_IP = "10.99.0.1";
export const API_PORT = 6443;
export const DNS_IP = "10.99.0.10";
/** The first address of the Service range: the `kubernetes` Service. */
export const KUBERNETES_SERVICE_IP = "10.96.0.1";
const ROUTE_TABLE = 5999;
const RULE_PRIORITY = 5999;
const GUARD_CHAIN = "DDNN-CLUSTER-GUARD";

export interface NodeNet {
  /** 1-based index: node N has IP 10.99.0.(10+N), Pod bridge ddnnc<N>, Pod subnet 10.244.N.0/24. */
  index: number;
  ip: string;
  bridge: string;
  podSubnet: string;
  podGateway: string;
}

export function nodeNet(index: number): NodeNet {
  if (!Number.isInteger(index) || index < 1 || index > 9) throw new Error(`node index ${index}`);
  return {
    index,
    ip: `10.99.0.${10 + index}`,
    bridge: `ddnnc${index}`,
    podSubnet: `10.244.${index}.0/24`,
    podGateway: `10.244.${index}.1`,
  };
}

function ip(args: string[]): string {
  return execFileSync("ip", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

function ipQuiet(args: string[]): void {
  try {
    ip(args);
  } catch {
    // Already gone (teardown is idempotent).
  }
}

function iptables(args: string[]): string {
  return execFileSync("iptables", ["-w", "5", ...args], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
}

function iptablesQuiet(args: string[]): void {
  try {
    iptables(args);
  } catch {
    // Already gone.
  }
}

function toInt(addr: string): number {
  const parts = addr.split(".").map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255))
    throw new Error(`not an IPv4 address: ${addr}`);
  return ((parts[0]! << 24) | (parts[1]! << 16) | (parts[2]! << 8) | parts[3]!) >>> 0;
}

function parseCidr(cidr: string): { base: number; bits: number } {
  const [addr, bits] = cidr.includes("/") ? cidr.split("/") : [cidr, "32"];
  const n = Number(bits);
  const mask = n === 0 ? 0 : (0xffffffff << (32 - n)) >>> 0;
  return { base: (toInt(addr!) & mask) >>> 0, bits: n };
}

/** Whether two IPv4 prefixes share an address. */
export function overlaps(a: string, b: string): boolean {
  const x = parseCidr(a);
  const y = parseCidr(b);
  const bits = Math.min(x.bits, y.bits);
  const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
  return (x.base & mask) >>> 0 === (y.base & mask) >>> 0;
}

interface Route {
  dst: string;
  dev?: string;
  table?: string;
  type?: string;
}

function allRoutes(): Route[] {
  return JSON.parse(ip(["-j", "-4", "route", "show", "table", "all"])) as Route[];
}

const RANGES = [NODE_RANGE, SERVICE_RANGE, POD_RANGE] as const;

function ourDevices(nodes: readonly NodeNet[]): Set<string> {
  return new Set([BRIDGE, ...nodes.map((n) => n.bridge)]);
}

/**
 * Refuses when a route of the machine that is not ours covers part of the cluster's ranges
 * (a default route does not count: the cluster's more specific routes win over it).
 */
function refuseOverlaps(nodes: readonly NodeNet[]): void {
  const ours = ourDevices(nodes);
  const clashes = allRoutes().filter(
    (r) =>
      r.dst !== "default" &&
      !(r.dev && ours.has(r.dev)) &&
      !(r.table === String(ROUTE_TABLE)) &&
      RANGES.some((range) => overlaps(r.dst, range)),
  );
  if (clashes.length > 0) {
    throw new Error(
      `test cluster: the machine already routes part of ${RANGES.join(", ")}: ${clashes
        .map((r) => `${r.dst} dev ${r.dev ?? "?"} table ${r.table ?? "main"}`)
        .join("; ")}; refusing to start`,
    );
  }
}

function readSysctl(key: string): string {
  return readFileSync(`/proc/sys/${key.replaceAll(".", "/")}`, "utf8").trim();
}

function writeSysctl(key: string, value: string): void {
  writeFileSync(`/proc/sys/${key.replaceAll(".", "/")}`, `${value}\n`);
}

/**
 * Kernel settings the cluster changes (the kubelet sets its "kernel tunables", the bridge plugin
 * forwarding); their values before `up` are kept in the state and written back by `down`.
 */
export const TOUCHED_SYSCTLS = [
  "net.ipv4.ip_forward",
  "net.bridge.bridge-nf-call-iptables",
  "vm.overcommit_memory",
  "vm.panic_on_oom",
  "kernel.panic",
  "kernel.panic_on_oops",
  "kernel.keys.root_maxkeys",
  "kernel.keys.root_maxbytes",
  "net.ipv4.conf.all.route_localnet",
] as const;

export function saveSysctls(): Record<string, string> {
  const saved: Record<string, string> = {};
  for (const key of TOUCHED_SYSCTLS) {
    try {
      saved[key] = readSysctl(key);
    } catch {
      // Not on this kernel.
    }
  }
  return saved;
}

export function restoreSysctls(saved: Record<string, string>): void {
  for (const [key, value] of Object.entries(saved)) {
    try {
      if (readSysctl(key) !== value) writeSysctl(key, value);
    } catch {
      // Best effort: a key the kernel lost.
    }
  }
}

/** Creates the bridges, addresses, routes and the guard; then checks them (checkNetwork). */
export function setUpNetwork(nodes: readonly NodeNet[]): void {
  refuseOverlaps(nodes);
  const links = JSON.parse(ip(["-j", "link", "show"])) as { ifname: string }[];
  const have = new Set(links.map((l) => l.ifname));
  for (const dev of [BRIDGE, ...nodes.map((n) => n.bridge)]) {
    if (!have.has(dev)) ip(["link", "add", dev, "type", "bridge"]);
    // IPv4 only: no IPv6 address (not even link-local) on the cluster's bridges.
    writeSysctl(`net.ipv6.conf.${dev}.disable_ipv6`, "1");
    ip(["link", "set", dev, "up"]);
  }
  const addrs = [API_IP, DNS_IP, ...nodes.map((n) => n.ip)];
  for (const a of addrs) ip(["addr", "replace", `${a}/32`, "dev", BRIDGE]);
  for (const n of nodes) ip(["addr", "replace", `${n.podGateway}/24`, "dev", n.bridge]);
  for (const range of RANGES) ip(["route", "replace", range, "dev", BRIDGE]);

  // Policy routing for what comes from the bridges: only the cluster's ranges, nothing else.
  ipQuiet(["route", "flush", "table", String(ROUTE_TABLE)]);
  for (const range of RANGES)
    ip(["route", "add", range, "dev", BRIDGE, "table", String(ROUTE_TABLE)]);
  for (const n of nodes)
    ip(["route", "add", n.podSubnet, "dev", n.bridge, "table", String(ROUTE_TABLE)]);
  ip(["route", "add", "unreachable", "default", "table", String(ROUTE_TABLE)]);
  for (const dev of ourDevices(nodes)) {
    ipQuiet(["rule", "del", "iif", dev, "lookup", String(ROUTE_TABLE)]);
    ip([
      "rule",
      "add",
      "iif",
      dev,
      "lookup",
      String(ROUTE_TABLE),
      "priority",
      String(RULE_PRIORITY),
    ]);
  }

  // Forwarding only between the cluster's bridges.
  iptablesQuiet(["-D", "FORWARD", "-j", GUARD_CHAIN]);
  iptablesQuiet(["-F", GUARD_CHAIN]);
  iptablesQuiet(["-X", GUARD_CHAIN]);
  iptables(["-N", GUARD_CHAIN]);
  iptables(["-A", GUARD_CHAIN, "-i", BRIDGE_PATTERN, "-o", BRIDGE_PATTERN, "-j", "RETURN"]);
  iptables(["-A", GUARD_CHAIN, "-i", BRIDGE_PATTERN, "-j", "DROP"]);
  iptables(["-A", GUARD_CHAIN, "-o", BRIDGE_PATTERN, "-j", "DROP"]);
  iptables(["-I", "FORWARD", "1", "-j", GUARD_CHAIN]);

  // Pods on one node bridge reach the others (and Services) through the host; with the guard in
  // place first, and checked with forwarding on (an off switch would hide a missing guard).
  writeSysctl("net.ipv4.ip_forward", "1");
  checkNetwork(nodes);
  try {
    writeSysctl("net.bridge.bridge-nf-call-iptables", "1");
  } catch {
    // br_netfilter absent: kube-proxy warns; same-bridge Service hairpin may not work.
  }
}

/** Where the kernel would send a packet for `addr` (from this machine, and from a Pod bridge). */
function routeDevice(addr: string, iif?: string): string {
  const args = ["-j", "route", "get", addr];
  if (iif) args.push("from", "10.244.1.2", "iif", iif);
  let out: string;
  try {
    out = ip(args);
  } catch (err) {
    // The kernel answers an unreachable route (or forwarding off) with an error, not a route.
    const text = String((err as { stderr?: unknown }).stderr ?? err);
    if (/unreachable|No route to host/i.test(text)) return "unreachable";
    throw new Error(`ip ${args.join(" ")}: ${text.trim()}`);
  }
  const r = JSON.parse(out) as { dev?: string; type?: string }[];
  const first = r[0];
  if (!first) throw new Error(`ip route get ${addr} answered nothing`);
  return first.type === "unreachable" ? "unreachable" : (first.dev ?? "?");
}

/**
 * Refuses unless a sample address of every range (each /32, each Pod subnet, unassigned addresses
 * of each range) resolves to lo or a cluster bridge, and an address outside them, sent from a Pod
 * bridge, is unreachable. Run before any bridge user (containerd, kubelet, kube-proxy) starts.
 */
export function checkNetwork(nodes: readonly NodeNet[]): void {
  const allowed = new Set(["lo", ...ourDevices(nodes)]);
  const samples = [
    API_IP,
    DNS_IP,
    "10.99.0.200",
    KUBERNETES_SERVICE_IP,
    "10.96.0.10",
    "10.96.0.254",
    "10.244.0.7",
    "10.244.200.7",
    ...nodes.flatMap((n) => [n.ip, n.podGateway, n.podSubnet.replace(/\.0\/24$/, ".77")]),
  ];
  const bad = samples
    .map((a) => ({ a, dev: routeDevice(a) }))
    .filter((s) => !allowed.has(s.dev))
    .map((s) => `${s.a} -> ${s.dev}`);
  const first = nodes[0];
  if (first && have(first.bridge)) {
    // From a Pod: an outside address must be unreachable (policy routing), never sent out.
    for (const outside of ["192.0.2.77", "8.8.8.8", "172.16.0.1"]) {
      const dev = routeDevice(outside, first.bridge);
      if (dev !== "unreachable") bad.push(`${outside} from a Pod -> ${dev}`);
    }
  }
  if (bad.length > 0) {
    throw new Error(
      `test cluster: these addresses would not stay on this machine: ${bad.join("; ")}; refusing to start`,
    );
  }
}

function have(dev: string): boolean {
  try {
    ip(["link", "show", dev]);
    return true;
  } catch {
    return false;
  }
}

/**
 * The chains the kubelets create in both families (KUBE-FIREWALL, the canaries): kubelet has no
 * cleanup of its own, and this machine runs no other kubelet. (kube-proxy's go with its --cleanup.)
 */
export function removeKubeletChains(): void {
  for (const bin of ["iptables", "ip6tables"]) {
    const t = (args: string[]) => {
      try {
        execFileSync(bin, ["-w", "5", ...args], { stdio: "ignore" });
        return true;
      } catch {
        return false;
      }
    };
    for (const chain of ["INPUT", "OUTPUT"])
      for (let i = 0; i < 10 && t(["-t", "filter", "-D", chain, "-j", "KUBE-FIREWALL"]); i++);
    const drop = (table: string, chain: string) => {
      t(["-t", table, "-F", chain]);
      t(["-t", table, "-X", chain]);
    };
    drop("filter", "KUBE-FIREWALL");
    for (const table of ["filter", "nat", "mangle"]) drop(table, "KUBE-KUBELET-CANARY");
    drop("mangle", "KUBE-IPTABLES-HINT");
  }
}

/** Removes the guard, the rules, the routes and the bridges (idempotent). */
export function tearDownNetwork(nodes: readonly NodeNet[]): void {
  iptablesQuiet(["-D", "FORWARD", "-j", GUARD_CHAIN]);
  iptablesQuiet(["-F", GUARD_CHAIN]);
  iptablesQuiet(["-X", GUARD_CHAIN]);
  for (const dev of ourDevices(nodes))
    ipQuiet(["rule", "del", "iif", dev, "lookup", String(ROUTE_TABLE)]);
  ipQuiet(["route", "flush", "table", String(ROUTE_TABLE)]);
  for (const range of RANGES) ipQuiet(["route", "del", range, "dev", BRIDGE]);
  for (const dev of [...nodes.map((n) => n.bridge), BRIDGE]) ipQuiet(["link", "del", dev]);
}
