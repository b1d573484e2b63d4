import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { packedSmallBundle } from "../../test/support/bundle-fixture.js";
import { type ForwardProxy, startForwardProxy } from "../../test/support/http-proxy.js";
import { openBundleSource } from "./source.js";

const MiB = 1024 * 1024;
const { archive, digest } = packedSmallBundle();

/** What the origin saw: request lines with their Via header, and bytes of the big bodies sent. */
const origin = { seen: [] as string[], sent: 0, closedEarly: false };
let server: Server;
let base: string;
let proxy: ForwardProxy;

function route(req: IncomingMessage, res: ServerResponse): void {
  origin.seen.push(`${req.url} via=${req.headers.via ?? "-"}`);
  const path = req.url ?? "";
  if (path === "/bundle.tar.gz") {
    res.writeHead(200, { "Content-Length": archive.length }).end(archive);
  } else if (path === "/private/bundle.tar.gz") {
    const ok =
      req.headers.authorization === `Basic ${Buffer.from("user:s3cret").toString("base64")}`;
    if (ok) res.writeHead(200, { "Content-Length": archive.length }).end(archive);
    else res.writeHead(401).end();
  } else if (path === "/declared-huge") {
    // Says 65 MiB, sends 1 KiB, then waits: a client that trusts the header reads forever.
    res.writeHead(200, { "Content-Length": 65 * MiB });
    res.write(Buffer.alloc(1024));
    res.on("close", () => {
      origin.closedEarly = true;
    });
  } else if (path === "/chunked-huge") {
    // No Content-Length: 100 MiB in 1 MiB chunks, stopped when the client goes away.
    res.writeHead(200, { "Content-Type": "application/gzip" });
    const chunk = Buffer.alloc(MiB, 1);
    let left = 100;
    const pump = () => {
      while (left > 0 && !res.destroyed) {
        left--;
        origin.sent += chunk.length;
        if (!res.write(chunk)) {
          res.once("drain", pump);
          return;
        }
      }
      if (!res.destroyed) res.end();
    };
    res.on("close", () => {
      origin.closedEarly = left > 0;
    });
    pump();
  } else if (path === "/slow") {
    // Never answers.
  } else if (path === "/moved") {
    res.writeHead(302, { Location: "/bundle.tar.gz" }).end();
  } else {
    res.writeHead(404).end("not found");
  }
}

const PROXY_VARS = [
  "HTTP_PROXY",
  "http_proxy",
  "HTTPS_PROXY",
  "https_proxy",
  "NO_PROXY",
  "no_proxy",
];
const savedEnv = Object.fromEntries(PROXY_VARS.map((k) => [k, process.env[k]]));
/** Sets exactly these proxy variables (the others unset). */
function setEnv(vars: Record<string, string | undefined>): void {
  for (const k of PROXY_VARS) delete process.env[k];
  for (const [k, v] of Object.entries(vars)) if (v !== undefined) process.env[k] = v;
}

beforeAll(async () => {
  server = createServer(route);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  proxy = await startForwardProxy();
});

afterEach(() => {
  setEnv({});
  origin.seen.length = 0;
  origin.sent = 0;
  origin.closedEarly = false;
  proxy.seen.length = 0;
});

afterAll(async () => {
  setEnv(savedEnv);
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  await proxy.close();
});

describe("a tier loading its bundle from an http URL", () => {
  it("loads a bundle served over http, following a redirect, and checks its digest", async () => {
    setEnv({});
    const started = performance.now();
    const bundle = await openBundleSource(`${base}/bundle.tar.gz`, digest);
    console.log(
      `download+verify of a ${archive.length}-byte bundle: ${(performance.now() - started).toFixed(1)} ms`,
    );
    expect(bundle.digest).toBe(digest);
    expect(bundle.manifest.stages.map((s) => s.name)).toEqual(["device", "server"]);
    expect((await openBundleSource(`${base}/moved`, digest)).digest).toBe(digest);
    await expect(openBundleSource(`${base}/bundle.tar.gz`, "0".repeat(64))).rejects.toThrow(
      /digest mismatch: expected 0{64}/,
    );
    await expect(openBundleSource(`${base}/nothing-here`)).rejects.toThrow(
      `${base}/nothing-here: HTTP 404 Not Found`,
    );
  });

  it("refuses a response whose Content-Length is over the cap, at its headers", async () => {
    setEnv({});
    const started = performance.now();
    await expect(openBundleSource(`${base}/declared-huge`)).rejects.toThrow(
      `${base}/declared-huge: larger than 64 MiB, the limit for a bundle download (Content-Length: 68157440 bytes)`,
    );
    expect(performance.now() - started).toBeLessThan(5_000);
    await expect.poll(() => origin.closedEarly).toBe(true);
  }, 20_000);

  it("refuses a chunked response without Content-Length as soon as it passes the cap", async () => {
    setEnv({});
    const started = performance.now();
    await expect(openBundleSource(`${base}/chunked-huge`)).rejects.toThrow(
      `${base}/chunked-huge: larger than 64 MiB, the limit for a bundle download (sent without Content-Length)`,
    );
    console.log(
      `chunked 100 MiB response refused after ${(performance.now() - started).toFixed(0)} ms; the server sent ${origin.sent / MiB} MiB`,
    );
    await expect.poll(() => origin.closedEarly).toBe(true);
    expect(origin.sent).toBeLessThan(100 * MiB);
  }, 30_000);

  it("goes through HTTP_PROXY, and straight to the origin for hosts NO_PROXY names", async () => {
    const url = `${base}/bundle.tar.gz`;
    setEnv({ HTTP_PROXY: proxy.url });
    expect((await openBundleSource(url, digest)).digest).toBe(digest);
    expect(proxy.seen).toEqual([`GET ${url}`]);
    expect(origin.seen).toEqual(["/bundle.tar.gz via=1.1 test-proxy"]);

    const port = new URL(base).port;
    for (const noProxy of [
      "127.0.0.1",
      `127.0.0.1:${port}`,
      "127.0.0.0/8",
      "*",
      "example.com, 127.0.0.1",
    ]) {
      proxy.seen.length = 0;
      origin.seen.length = 0;
      setEnv({ http_proxy: proxy.url, no_proxy: noProxy });
      expect((await openBundleSource(url, digest)).digest, noProxy).toBe(digest);
      expect(proxy.seen, noProxy).toEqual([]);
      expect(origin.seen, noProxy).toEqual(["/bundle.tar.gz via=-"]);
    }
    // Another port of the same host is still proxied.
    proxy.seen.length = 0;
    setEnv({ HTTP_PROXY: proxy.url, NO_PROXY: "127.0.0.1:1" });
    await openBundleSource(url, digest);
    expect(proxy.seen).toEqual([`GET ${url}`]);
  });

  it("names the proxy when it cannot be reached, without its credentials", async () => {
    const closed = await unusedPort();
    setEnv({ HTTP_PROXY: `http://puser:ppass@127.0.0.1:${closed}` });
    const err = await openBundleSource(`${base}/bundle.tar.gz`).catch((e: Error) => e);
    expect(String(err)).toContain(
      `${base}/bundle.tar.gz: cannot reach the proxy http://***@127.0.0.1:${closed} (HTTP_PROXY)`,
    );
    expect(String(err)).toMatch(/ECONNREFUSED/);
    expect(String(err)).not.toContain("ppass");
    expect(origin.seen).toEqual([]);
  });

  it("sends a URL's credentials as Basic auth and never prints them", async () => {
    setEnv({});
    const at = base.replace("http://", "http://user:s3cret@");
    expect((await openBundleSource(`${at}/private/bundle.tar.gz`, digest)).digest).toBe(digest);
    const err = await openBundleSource(`${at}/nothing-here`).catch((e: Error) => e);
    expect(String(err)).toContain(
      `${base.replace("http://", "http://***@")}/nothing-here: HTTP 404`,
    );
    expect(String(err)).not.toContain("s3cret");
    const bad = base.replace("http://", "http://user:wrong@");
    const denied = await openBundleSource(`${bad}/private/bundle.tar.gz`).catch((e: Error) => e);
    expect(String(denied)).toContain("HTTP 401");
    expect(String(denied)).not.toContain("wrong");
  });

  it("gives up on a server that does not answer, after the timeout", async () => {
    setEnv({});
    const started = performance.now();
    await expect(openBundleSource(`${base}/slow`, undefined, { timeoutMs: 300 })).rejects.toThrow(
      `${base}/slow: timed out after 0.3 s`,
    );
    expect(performance.now() - started).toBeLessThan(3_000);
  });
});

async function unusedPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}
