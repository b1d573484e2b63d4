import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { readdir, utimes, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  packBundle,
  packedSmallBundle,
  smallStages,
  tempDir,
  writeBundle,
} from "../../test/support/bundle-fixture.js";
import { type ForwardProxy, startForwardProxy } from "../../test/support/http-proxy.js";
import { BundleError } from "./manifest.js";
import { CACHED_BUNDLES, type CacheLog, openBundleSource } from "./source.js";

const MiB = 1024 * 1024;
const { archive, digest } = packedSmallBundle();
/** Another bundle (another version), for a cache holding several. */
const other = (version: string) => {
  const { dir } = writeBundle(smallStages(), {
    edit: (m) => {
      m.version = version;
    },
  });
  const digest = createHash("sha256")
    .update(readFileSync(join(dir, "ddnn.json")))
    .digest("hex");
  return { archive: readFileSync(packBundle(dir)), digest };
};

/** What the origin saw: request lines with their Via header, and bytes of the big bodies sent. */
const origin = { seen: [] as string[], sent: 0, closedEarly: false };
/** What /v/<name> serves; a name missing answers 503, as an origin that is down. */
const served = new Map<string, Buffer>();
let server: Server;
let base: string;
let proxy: ForwardProxy;

function route(req: IncomingMessage, res: ServerResponse): void {
  origin.seen.push(`${req.url} via=${req.headers.via ?? "-"}`);
  const path = req.url ?? "";
  if (path.startsWith("/v/")) {
    const body = served.get(path.slice(3));
    if (body) res.writeHead(200, { "Content-Length": body.length }).end(body);
    else res.writeHead(503).end("down");
  } else if (path === "/bundle.tar.gz") {
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

describe("the node's bundle cache (--bundle-cache)", () => {
  const logged = () => {
    const lines: string[] = [];
    const log: CacheLog = {
      info: (_o, msg) => lines.push(`info ${msg}`),
      warn: (o, msg) => lines.push(`warn ${msg} ${JSON.stringify(o)}`),
    };
    return { lines, log };
  };

  it("keeps the verified bundle, then loads it with the origin down, without a request", async () => {
    const cacheDir = join(tempDir(), "cache");
    served.set("a", archive);
    const { lines, log } = logged();
    const first = await openBundleSource(`${base}/v/a`, digest, { cacheDir, log });
    expect(first.digest).toBe(digest);
    expect(await readdir(cacheDir)).toEqual([`${digest}.tar.gz`]);
    expect(readFileSync(join(cacheDir, `${digest}.tar.gz`)).equals(archive)).toBe(true);
    expect(lines).toEqual(["info bundle kept in the node's cache"]);

    served.delete("a");
    origin.seen.length = 0;
    const again = await openBundleSource(`${base}/v/a`, digest, { cacheDir, log });
    expect(again.digest).toBe(digest);
    expect(again.manifest).toEqual(first.manifest);
    expect(origin.seen).toEqual([]);
    expect(lines.at(-1)).toBe("info bundle loaded from the node's cache, not downloaded");
  });

  it("replaces a cached copy that fails verification by a fresh download", async () => {
    const cacheDir = tempDir();
    const file = join(cacheDir, `${digest}.tar.gz`);
    await writeFile(file, archive.subarray(0, archive.length - 40));
    served.set("b", archive);
    const { lines, log } = logged();
    expect((await openBundleSource(`${base}/v/b`, digest, { cacheDir, log })).digest).toBe(digest);
    expect(origin.seen.map((l) => l.split(" ")[0])).toEqual(["/v/b"]);
    expect(lines[0]).toMatch(/^warn the cached bundle failed verification: removed/);
    expect(lines[0]).toContain(file);
    expect(readFileSync(file).equals(archive)).toBe(true);

    // The origin down and the copy corrupt again: the download's error, saying the cache is empty.
    await writeFile(file, "not a tar.gz");
    served.delete("b");
    await expect(openBundleSource(`${base}/v/b`, digest, { cacheDir, log })).rejects.toThrow(
      `${base}/v/b: HTTP 503 Service Unavailable (and the bundle cache ${cacheDir} holds no copy of ${digest})`,
    );
  });

  it("never trusts a cached copy without the expected digest", async () => {
    const cacheDir = tempDir();
    served.set("c", archive);
    await openBundleSource(`${base}/v/c`, undefined, { cacheDir });
    expect(await readdir(cacheDir)).toEqual([`${digest}.tar.gz`]);
    served.delete("c");
    const err = await openBundleSource(`${base}/v/c`, undefined, { cacheDir }).catch((e) => e);
    expect(err).toBeInstanceOf(BundleError);
    expect((err as Error).message).toContain("used only with the bundle's digest");
    // A digest the download does not match is refused, and nothing of it is cached.
    served.set("c", archive);
    const wrong = "1".repeat(64);
    await expect(openBundleSource(`${base}/v/c`, wrong, { cacheDir })).rejects.toThrow(
      /digest mismatch/,
    );
    expect(await readdir(cacheDir)).toEqual([`${digest}.tar.gz`]);
  });

  it(`keeps the ${CACHED_BUNDLES} most recently used bundles`, async () => {
    const cacheDir = tempDir();
    const versions = ["1.0.1", "1.0.2", "1.0.3"].map(other);
    for (const [i, v] of versions.entries()) {
      served.set(`v${i}`, v.archive);
      await openBundleSource(`${base}/v/v${i}`, v.digest, { cacheDir });
      // mtime has a resolution; make the order plain.
      const at = new Date(Date.now() - (versions.length - i) * 10_000);
      await utimes(join(cacheDir, `${v.digest}.tar.gz`), at, at);
    }
    expect((await readdir(cacheDir)).sort()).toEqual(
      [versions[1]!.digest, versions[2]!.digest].map((d) => `${d}.tar.gz`).sort(),
    );
    // Rolling back to the one before works offline, and it is then the most recent.
    served.clear();
    await openBundleSource(`${base}/v/v1`, versions[1]!.digest, { cacheDir });
    served.set("new", archive);
    await openBundleSource(`${base}/v/new`, digest, { cacheDir });
    expect((await readdir(cacheDir)).sort()).toEqual(
      [versions[1]!.digest, digest].map((d) => `${d}.tar.gz`).sort(),
    );
  });

  it("a cache it cannot write costs a warning, not the start", async () => {
    const parent = tempDir();
    const cacheDir = join(parent, "file-not-dir");
    await writeFile(cacheDir, "x");
    served.set("d", archive);
    const { lines, log } = logged();
    expect((await openBundleSource(`${base}/v/d`, digest, { cacheDir, log })).digest).toBe(digest);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^warn cannot write the bundle cache/);
  });
});
