import * as http from "node:http";
import * as https from "node:https";
import { BlockList, isIP, type Socket } from "node:net";
import * as tls from "node:tls";
import { BundleError } from "./manifest.js";

/**
 * The one way a bundle URL is downloaded, by the tiers (`openBundleSource`) and by the operator's
 * verifier alike, so that a bundle the operator reports verified is one every pod can fetch: the
 * same size cap, timeout, redirects and proxy settings (`HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY`,
 * read as curl and Go's net/http read them).
 */

const MiB = 1024 * 1024;

/** Bundles are held in memory (and unpacked there): keep well inside a pod's memory limit. */
export const MAX_BUNDLE_DOWNLOAD_BYTES = 64 * MiB;
/** For the whole download, redirects included. */
export const BUNDLE_DOWNLOAD_TIMEOUT_MS = 60_000;
const MAX_REDIRECTS = 5;

export interface DownloadOptions {
  /** Refuse a body larger than this (default 64 MiB). */
  maxDownloadBytes?: number;
  /** Give up after this long, redirects included (default 60 s). */
  timeoutMs?: number;
  /** Where the proxy variables are read (default `process.env`). */
  env?: Readonly<Record<string, string | undefined>>;
  /** Certificates trusted for https (default: Node's bundled CAs and NODE_EXTRA_CA_CERTS). */
  ca?: string | Buffer | (string | Buffer)[];
}

/** A download that failed: `<url without credentials>: <what went wrong>`. */
export class BundleDownloadError extends BundleError {
  constructor(url: string, problem: string) {
    super(url, undefined, problem);
    this.name = "BundleDownloadError";
  }
}

/** A URL as messages show it: any user name and password replaced by `***`. */
export function maskUrl(url: string | URL): string {
  try {
    const u = new URL(url);
    if (u.username === "" && u.password === "") return u.href;
    u.username = "***";
    u.password = "";
    return u.href;
  } catch {
    return String(url).replace(/\/\/[^/@?#]*@/, "//***@");
  }
}

/** The proxy a URL goes through, and the variable that named it; undefined when direct. */
export interface ProxyChoice {
  proxy: URL;
  from: string;
}

/**
 * `HTTP_PROXY` for http://, `HTTPS_PROXY` for https:// (upper case first, then lower case); none
 * when `NO_PROXY` names the host. NO_PROXY entries, comma or space separated: `*` (everything), a
 * domain (`example.com`, `.example.com` and `*.example.com` all match the domain and every name
 * under it), an IP address, or a CIDR range (`10.0.0.0/8`, `fd00::/8`), each optionally with
 * `:port` (`[v6]:port` for IPv6) to match only that port.
 */
export function proxyFor(
  target: URL,
  env: DownloadOptions["env"] = process.env,
): ProxyChoice | undefined {
  const names =
    target.protocol === "https:" ? ["HTTPS_PROXY", "https_proxy"] : ["HTTP_PROXY", "http_proxy"];
  const from = names.find((n) => (env[n] ?? "").trim() !== "");
  if (from === undefined) return undefined;
  if (bypassesProxy(target, env.NO_PROXY ?? env.no_proxy ?? "")) return undefined;
  const raw = env[from]!.trim();
  let proxy: URL;
  try {
    proxy = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(raw) ? raw : `http://${raw}`);
  } catch {
    throw new BundleDownloadError(maskUrl(target), `${from} is not a URL (${maskUrl(raw)})`);
  }
  if (proxy.protocol !== "http:" && proxy.protocol !== "https:")
    throw new BundleDownloadError(
      maskUrl(target),
      `${from} names a ${proxy.protocol.slice(0, -1)} proxy; only http:// and https:// proxies are supported`,
    );
  return { proxy, from };
}

function bypassesProxy(target: URL, noProxy: string): boolean {
  const host = bareHost(target.hostname).toLowerCase();
  const port = target.port || (target.protocol === "https:" ? "443" : "80");
  const hostIp = isIP(host);
  for (const raw of noProxy.split(/[\s,]+/)) {
    const entry = raw.trim().toLowerCase();
    if (entry === "") continue;
    if (entry === "*") return true;
    const { name, entryPort } = splitPort(entry);
    if (entryPort !== undefined && entryPort !== port) continue;
    const slash = name.indexOf("/");
    if (slash !== -1) {
      const net = name.slice(0, slash);
      const bits = Number(name.slice(slash + 1));
      const family = isIP(net);
      if (hostIp === 0 || family === 0 || !Number.isInteger(bits)) continue;
      const list = new BlockList();
      try {
        list.addSubnet(net, bits, family === 6 ? "ipv6" : "ipv4");
      } catch {
        continue;
      }
      if (list.check(host, hostIp === 6 ? "ipv6" : "ipv4")) return true;
      continue;
    }
    if (isIP(name) !== 0) {
      if (hostIp !== 0 && sameAddress(name, host)) return true;
      continue;
    }
    const domain = name.replace(/^\*?\.+/, "");
    if (domain !== "" && (host === domain || host.endsWith(`.${domain}`))) return true;
  }
  return false;
}

/** `host:port`, `[v6]:port`, `[v6]`, a bare IPv6 address (no port), or a plain name. */
function splitPort(entry: string): { name: string; entryPort?: string } {
  const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(entry);
  if (bracketed) return { name: bracketed[1]!, entryPort: bracketed[2] };
  const m = /^([^:]+):(\d+)$/.exec(entry);
  return m ? { name: m[1]!, entryPort: m[2] } : { name: entry };
}

function sameAddress(a: string, b: string): boolean {
  const family = isIP(a);
  if (family !== isIP(b)) return false;
  const list = new BlockList();
  list.addAddress(a, family === 6 ? "ipv6" : "ipv4");
  return list.check(b, family === 6 ? "ipv6" : "ipv4");
}

function bareHost(hostname: string): string {
  return hostname.replace(/^\[|\]$/g, "");
}

/**
 * GETs a bundle URL into memory: http or https, directly or through the proxy the environment
 * names (a forward proxy for http://, a CONNECT tunnel for https://), following up to 5
 * redirects. Credentials in the URL are sent as Basic auth and never appear in a message.
 * Throws a BundleDownloadError naming the URL and the problem.
 */
export async function downloadBundle(
  url: string,
  options: DownloadOptions = {},
): Promise<Uint8Array> {
  const maxBytes = options.maxDownloadBytes ?? MAX_BUNDLE_DOWNLOAD_BYTES;
  const timeoutMs = options.timeoutMs ?? BUNDLE_DOWNLOAD_TIMEOUT_MS;
  const env = options.env ?? process.env;
  const shown = maskUrl(url);
  let target: URL;
  try {
    target = new URL(url);
  } catch {
    throw new BundleDownloadError(shown, "not a URL");
  }
  const fail = (problem: string, at: URL): BundleDownloadError =>
    new BundleDownloadError(
      shown,
      at.href === target.href ? problem : `${problem} (redirected to ${maskUrl(at)})`,
    );
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), timeoutMs);
  const origin = target.origin;
  let at = target;
  try {
    for (let redirects = 0; ; redirects++) {
      if (at.protocol !== "http:" && at.protocol !== "https:")
        throw fail(`unsupported URL scheme ${at.protocol} (http: and https: are)`, at);
      let route: ProxyChoice | undefined;
      try {
        route = proxyFor(at, env);
      } catch (err) {
        throw fail((err as BundleDownloadError).detail, at);
      }
      const through = route ? ` through the proxy ${showProxy(route.proxy)} (${route.from})` : "";
      let res: http.IncomingMessage;
      try {
        // Credentials go only to the origin the user named, never to a redirect elsewhere.
        res = await get(at, at.origin === origin, route, options.ca, abort.signal);
      } catch (err) {
        if (abort.signal.aborted) throw fail(`timed out after ${seconds(timeoutMs)}${through}`, at);
        if (err instanceof ProxyFailure) throw fail(err.message, at);
        throw fail(`cannot connect${through}: ${(err as Error).message}`, at);
      }
      const code = res.statusCode ?? 0;
      const location = res.headers.location;
      if ([301, 302, 303, 307, 308].includes(code) && location) {
        res.destroy();
        if (redirects >= MAX_REDIRECTS) throw fail(`more than ${MAX_REDIRECTS} redirects`, at);
        try {
          at = new URL(location, at);
        } catch {
          throw fail(`HTTP ${code} to a Location that is not a URL`, at);
        }
        continue;
      }
      if (code < 200 || code > 299) {
        res.destroy();
        throw fail(`HTTP ${code} ${res.statusMessage ?? ""}`.trim() + through, at);
      }
      const declared = Number(res.headers["content-length"]);
      if (Number.isFinite(declared) && declared > maxBytes) {
        res.destroy();
        throw fail(
          `larger than ${formatBytes(maxBytes)}, the limit for a bundle download (Content-Length: ${declared} bytes)`,
          at,
        );
      }
      const chunks: Buffer[] = [];
      let size = 0;
      try {
        for await (const chunk of res as AsyncIterable<Buffer>) {
          size += chunk.length;
          if (size > maxBytes) {
            res.destroy();
            throw fail(
              `larger than ${formatBytes(maxBytes)}, the limit for a bundle download (sent without Content-Length)`,
              at,
            );
          }
          chunks.push(chunk);
        }
      } catch (err) {
        if (err instanceof BundleDownloadError) throw err;
        if (abort.signal.aborted)
          throw fail(
            `timed out after ${seconds(timeoutMs)}${through} (${size} bytes received)`,
            at,
          );
        throw fail(`download interrupted after ${size} bytes: ${(err as Error).message}`, at);
      }
      if (!res.complete) throw fail(`download interrupted after ${size} bytes`, at);
      const body = Buffer.concat(chunks);
      return new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
    }
  } finally {
    clearTimeout(timer);
  }
}

/** A proxy that could not be reached or refused the tunnel: its message is the whole story. */
class ProxyFailure extends Error {}

/** Sends one GET and resolves with the response head (the body still to be read). */
async function get(
  target: URL,
  withCredentials: boolean,
  route: ProxyChoice | undefined,
  ca: DownloadOptions["ca"],
  signal: AbortSignal,
): Promise<http.IncomingMessage> {
  const headers: http.OutgoingHttpHeaders = { "user-agent": "ddnn-fog", accept: "*/*" };
  if (withCredentials && (target.username || target.password))
    headers.authorization = basic(target.username, target.password);
  const host = bareHost(target.hostname);
  const port = Number(target.port) || (target.protocol === "https:" ? 443 : 80);
  const path = target.pathname + target.search;
  if (target.protocol === "http:") {
    if (!route) return send(http.request, { host, port, path, headers, agent: false }, signal);
    // A forward proxy takes the absolute URL (without credentials: they travel as a header).
    const absolute = new URL(target.href);
    absolute.username = "";
    absolute.password = "";
    return send(
      requestVia(route.proxy, ca),
      {
        host: bareHost(route.proxy.hostname),
        port: proxyPort(route.proxy),
        path: absolute.href,
        headers: { ...headers, host: target.host, ...proxyAuth(route.proxy) },
        agent: false,
      },
      signal,
      route,
    );
  }
  const secure: https.RequestOptions = {
    host,
    port,
    path,
    headers,
    ca,
    servername: isIP(host) === 0 ? host : undefined,
  };
  if (!route) return send(https.request, { ...secure, agent: false }, signal);
  const authority = `${isIP(host) === 6 ? `[${host}]` : host}:${port}`;
  const tunnel = await connectTunnel(route, authority, ca, signal);
  // TLS to the origin inside the tunnel: the proxy sees where, never what.
  const socket = tls.connect({
    socket: tunnel,
    host,
    servername: secure.servername,
    ca,
    ALPNProtocols: ["http/1.1"],
  });
  return send(https.request, { ...secure, createConnection: () => socket }, signal);
}

type Request = (
  options: https.RequestOptions,
  cb?: (res: http.IncomingMessage) => void,
) => http.ClientRequest;

/** How to talk to the proxy itself: plain HTTP, or TLS for an https:// proxy. */
function requestVia(proxy: URL, ca: DownloadOptions["ca"]): Request {
  return proxy.protocol === "https:"
    ? (o, cb) =>
        https.request(
          {
            ...o,
            ca,
            servername: isIP(bareHost(proxy.hostname)) === 0 ? bareHost(proxy.hostname) : undefined,
          },
          cb,
        )
    : http.request;
}

/** One request; through a proxy, a failure to reach it is told apart from the origin's. */
function send(
  request: Request,
  options: https.RequestOptions,
  signal: AbortSignal,
  route?: ProxyChoice,
): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    let connected = false;
    const req = request({ ...options, method: "GET", signal }, resolve);
    req.on("socket", (s) =>
      s.once(s instanceof tls.TLSSocket ? "secureConnect" : "connect", () => (connected = true)),
    );
    req.on("error", (err) => reject(route && !connected ? unreachable(route, err) : err));
    req.end();
  });
}

/** Opens a CONNECT tunnel through the proxy to `authority` and returns its socket. */
function connectTunnel(
  route: ProxyChoice,
  authority: string,
  ca: DownloadOptions["ca"],
  signal: AbortSignal,
): Promise<Socket> {
  return new Promise((resolve, reject) => {
    let connected = false;
    const req = requestVia(
      route.proxy,
      ca,
    )({
      host: bareHost(route.proxy.hostname),
      port: proxyPort(route.proxy),
      method: "CONNECT",
      path: authority,
      headers: { host: authority, ...proxyAuth(route.proxy) },
      agent: false,
      signal,
    });
    req.on("socket", (s) => s.once("connect", () => (connected = true)));
    req.on("connect", (res, socket) => {
      if (res.statusCode === 200) {
        resolve(socket);
        return;
      }
      socket.destroy();
      reject(
        new ProxyFailure(
          `the proxy ${showProxy(route.proxy)} (${route.from}) refused the tunnel to ${authority}: HTTP ${res.statusCode} ${res.statusMessage ?? ""}`.trim(),
        ),
      );
    });
    req.on("error", (err) => reject(!connected ? unreachable(route, err) : err));
    req.end();
  });
}

function unreachable(route: ProxyChoice, err: Error): Error {
  return new ProxyFailure(
    `cannot reach the proxy ${showProxy(route.proxy)} (${route.from}): ${err.message}`,
  );
}

/** A proxy as messages show it: `http://***@proxy:3128`. */
function showProxy(proxy: URL): string {
  return maskUrl(proxy).replace(/\/$/, "");
}

function proxyPort(proxy: URL): number {
  return Number(proxy.port) || (proxy.protocol === "https:" ? 443 : 80);
}

function proxyAuth(proxy: URL): http.OutgoingHttpHeaders {
  return proxy.username || proxy.password
    ? { "proxy-authorization": basic(proxy.username, proxy.password) }
    : {};
}

function basic(user: string, password: string): string {
  // The URL parser keeps them percent-encoded; a stray `%` is taken as written.
  const decode = (s: string) => {
    try {
      return decodeURIComponent(s);
    } catch {
      return s;
    }
  };
  return `Basic ${Buffer.from(`${decode(user)}:${decode(password)}`).toString("base64")}`;
}

function seconds(ms: number): string {
  return `${ms / 1000} s`;
}

/** `64 MiB` when the size is a whole number of MiB, otherwise `N bytes`. */
export function formatBytes(n: number): string {
  return n >= MiB && n % MiB === 0 ? `${n / MiB} MiB` : `${n} bytes`;
}
