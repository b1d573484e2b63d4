/**
 * The bundle downloader on its own: which proxy a URL takes, https through a CONNECT tunnel,
 * proxy credentials, redirects, and what its messages say. Servers are real, on 127.0.0.1.
 */
import { readFileSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ForwardProxy, startForwardProxy } from "../../test/support/http-proxy.js";
import { makeTestPki, type TestPki } from "../../test/support/tls.js";
import { downloadBundle, maskUrl, proxyFor } from "./download.js";

const body = Buffer.from("pretend this is a bundle archive");

describe("which proxy a URL goes through", () => {
  const via = (url: string, env: Record<string, string>) => proxyFor(new URL(url), env)?.proxy.href;

  it("takes HTTP_PROXY for http://, HTTPS_PROXY for https://, upper case first", () => {
    expect(via("http://models.fog.svc/b.tar.gz", { HTTP_PROXY: "http://p:3128" })).toBe(
      "http://p:3128/",
    );
    expect(via("http://models.fog.svc/b.tar.gz", { http_proxy: "p:3128" })).toBe("http://p:3128/");
    expect(via("http://m/b", { HTTP_PROXY: "http://up:1", http_proxy: "http://low:1" })).toBe(
      "http://up:1/",
    );
    expect(via("https://m/b", { HTTP_PROXY: "http://p:3128" })).toBeUndefined();
    expect(via("https://m/b", { HTTPS_PROXY: "http://p:3128" })).toBe("http://p:3128/");
    expect(via("http://m/b", { HTTPS_PROXY: "http://p:3128" })).toBeUndefined();
    expect(via("http://m/b", { HTTP_PROXY: "  " })).toBeUndefined();
    expect(() => via("http://m/b", { HTTP_PROXY: "socks5://u:pw@p:1080" })).toThrow(
      "http://m/b: HTTP_PROXY names a socks5 proxy; only http:// and https:// proxies are supported",
    );
  });

  const table: [string, string, boolean][] = [
    // url, NO_PROXY, proxied?
    ["http://models.fog.svc/b", "", true],
    ["http://models.fog.svc/b", "fog.svc", false],
    ["http://models.fog.svc/b", ".svc", false],
    ["http://models.fog.svc/b", "*.fog.svc", false],
    ["http://models.fog.svc/b", "models.fog.svc", false],
    ["http://models.fog.svc/b", "MODELS.Fog.Svc", false],
    ["http://models.fog.svc/b", "odels.fog.svc", true],
    ["http://models.fog.svc/b", "svc.cluster.local", true],
    ["http://models.fog.svc/b", " other.example ,  fog.svc ", false],
    ["http://models.fog.svc/b", "other.example fog.svc", false],
    ["http://models.fog.svc/b", "fog.svc:80", false],
    ["http://models.fog.svc/b", "fog.svc:8080", true],
    ["http://models.fog.svc:8080/b", "fog.svc:8080", false],
    ["http://models.fog.svc/b", "*", false],
    ["http://10.1.2.3/b", "10.0.0.0/8", false],
    ["http://10.1.2.3/b", "10.0.0.0/8:80", false],
    ["http://10.1.2.3/b", "11.0.0.0/8", true],
    ["http://10.1.2.3/b", "10.1.2.3", false],
    ["http://10.1.2.3/b", "10.1.2.4", true],
    ["http://models.fog.svc/b", "10.0.0.0/8", true],
    ["http://[fd00::1]:8080/b", "fd00::/8", false],
    ["http://[fd00::1]:8080/b", "[fd00::1]:8080", false],
    ["http://[fd00::1]:8080/b", "fd00:0::1", false],
    ["http://[fd00::1]:8080/b", "[fd00::1]:9", true],
    ["http://[fd00::1]:8080/b", "::1", true],
  ];
  it.each(table)("%s with NO_PROXY=%j: proxied %s", (url, noProxy, proxied) => {
    expect(via(url, { HTTP_PROXY: "http://p:3128", NO_PROXY: noProxy }) !== undefined).toBe(
      proxied,
    );
    expect(via(url, { http_proxy: "http://p:3128", no_proxy: noProxy }) !== undefined).toBe(
      proxied,
    );
  });
});

describe("messages never show credentials", () => {
  it("masks a user and password in a URL", () => {
    expect(maskUrl("http://u:p@h:1/x.tar.gz?v=1")).toBe("http://***@h:1/x.tar.gz?v=1");
    expect(maskUrl("https://token@h/x")).toBe("https://***@h/x");
    expect(maskUrl("http://h/x")).toBe("http://h/x");
    expect(maskUrl("nonsense//user:pw@host")).toBe("nonsense//***@host");
  });
});

describe("downloading through a real proxy", () => {
  let pki: TestPki;
  let httpsOrigin: Server;
  let httpOrigin: Server;
  let other: Server;
  let tlsBase: string;
  let base: string;
  let otherBase: string;
  const otherSaw: (string | undefined)[] = [];
  let plain: ForwardProxy;
  let guarded: ForwardProxy;
  let secure: ForwardProxy;

  const serve = (req: IncomingMessage, res: ServerResponse) => {
    if (req.url === "/bundle.tar.gz") res.end(body);
    else if (req.url === "/loop") res.writeHead(302, { Location: "/loop" }).end();
    else if (req.url === "/ftp") res.writeHead(301, { Location: "ftp://h/x" }).end();
    else if (req.url === "/elsewhere") res.writeHead(302, { Location: `${otherBase}/b` }).end();
    else if (req.url === "/broken") res.writeHead(500).end();
    else if (req.url === "/stall") res.writeHead(200, { "Content-Length": 4096 }).write(body);
    else res.writeHead(404).end();
  };
  const listen = async (s: Server) => {
    await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
    return (s.address() as AddressInfo).port;
  };

  beforeAll(async () => {
    pki = makeTestPki();
    const tls = { key: readFileSync(pki.keyFile), cert: readFileSync(pki.certFile) };
    httpsOrigin = createHttpsServer(tls, serve);
    tlsBase = `https://127.0.0.1:${await listen(httpsOrigin)}`;
    httpOrigin = createServer(serve);
    base = `http://127.0.0.1:${await listen(httpOrigin)}`;
    other = createServer((req, res) => {
      otherSaw.push(req.headers.authorization);
      res.end(body);
    });
    otherBase = `http://127.0.0.1:${await listen(other)}`;
    plain = await startForwardProxy();
    guarded = await startForwardProxy({ credentials: "pu:p@ss" });
    secure = await startForwardProxy({ tls });
  });

  afterAll(async () => {
    for (const s of [httpsOrigin, httpOrigin, other]) {
      s.closeAllConnections();
      await new Promise((r) => s.close(r));
    }
    for (const p of [plain, guarded, secure]) await p?.close();
  });

  const ca = () => readFileSync(pki.caFile);

  it("fetches https through HTTPS_PROXY's CONNECT tunnel, checking the origin's certificate", async () => {
    const url = `${tlsBase}/bundle.tar.gz`;
    const got = await downloadBundle(url, { env: { HTTPS_PROXY: plain.url }, ca: ca() });
    expect(Buffer.from(got)).toEqual(body);
    expect(plain.seen).toEqual([`CONNECT ${new URL(tlsBase).host}`]);
    // By name too (SNI and the certificate's DNS name).
    const byName = url.replace("127.0.0.1", "localhost");
    expect(
      Buffer.from(await downloadBundle(byName, { env: { HTTPS_PROXY: plain.url }, ca: ca() })),
    ).toEqual(body);
    // Without the CA the origin's certificate is refused, through the tunnel as directly.
    await expect(downloadBundle(url, { env: { HTTPS_PROXY: plain.url } })).rejects.toThrow(
      new RegExp(
        `^${esc(url)}: cannot connect through the proxy ${esc(plain.url)} \\(HTTPS_PROXY\\): .*certificate`,
      ),
    );
    await expect(downloadBundle(url, { env: {} })).rejects.toThrow(/cannot connect: .*certificate/);
    expect(Buffer.from(await downloadBundle(url, { env: {}, ca: ca() }))).toEqual(body);
  });

  it("sends the proxy's credentials, and says when the proxy refuses them", async () => {
    const g = new URL(guarded.url);
    const good = `http://pu:${encodeURIComponent("p@ss")}@${g.host}`;
    const wrong = `http://pu:nope@${g.host}`;
    guarded.seen.length = 0;
    const got = await downloadBundle(`${base}/bundle.tar.gz`, { env: { HTTP_PROXY: good } });
    expect(Buffer.from(got)).toEqual(body);
    const tunneled = await downloadBundle(`${tlsBase}/bundle.tar.gz`, {
      env: { HTTPS_PROXY: good },
      ca: ca(),
    });
    expect(Buffer.from(tunneled)).toEqual(body);
    expect(guarded.seen).toEqual([`GET ${base}/bundle.tar.gz`, `CONNECT ${new URL(tlsBase).host}`]);

    const e1 = await downloadBundle(`${base}/bundle.tar.gz`, { env: { HTTP_PROXY: wrong } }).catch(
      String,
    );
    expect(e1).toContain(
      `${base}/bundle.tar.gz: HTTP 407 Proxy Authentication Required through the proxy http://***@${g.host} (HTTP_PROXY)`,
    );
    const e2 = await downloadBundle(`${tlsBase}/bundle.tar.gz`, {
      env: { HTTPS_PROXY: wrong },
      ca: ca(),
    }).catch(String);
    expect(e2).toContain(
      `${tlsBase}/bundle.tar.gz: the proxy http://***@${g.host} (HTTPS_PROXY) refused the tunnel to ${new URL(tlsBase).host}: HTTP 407`,
    );
    expect(`${e1} ${e2}`).not.toContain("nope");
  });

  it("talks TLS to an https:// proxy", async () => {
    const got = await downloadBundle(`${base}/bundle.tar.gz`, {
      env: { HTTP_PROXY: secure.url },
      ca: ca(),
    });
    expect(Buffer.from(got)).toEqual(body);
    expect(secure.seen).toEqual([`GET ${base}/bundle.tar.gz`]);
  });

  it("follows redirects up to a limit, only to http(s), without carrying credentials to another origin", async () => {
    await expect(downloadBundle(`${base}/loop`, { env: {} })).rejects.toThrow(
      `${base}/loop: more than 5 redirects`,
    );
    await expect(downloadBundle(`${base}/ftp`, { env: {} })).rejects.toThrow(
      `${base}/ftp: unsupported URL scheme ftp: (http: and https: are) (redirected to ftp://h/x)`,
    );
    await expect(downloadBundle(`${base}/broken`, { env: {} })).rejects.toThrow(
      `${base}/broken: HTTP 500 Internal Server Error`,
    );
    const withCreds = base.replace("http://", "http://u:secret@");
    expect(Buffer.from(await downloadBundle(`${withCreds}/elsewhere`, { env: {} }))).toEqual(body);
    expect(otherSaw).toEqual([undefined]);
  });

  it("gives up on a body that stops coming, after the timeout, also through a proxy", async () => {
    await expect(downloadBundle(`${base}/stall`, { env: {}, timeoutMs: 200 })).rejects.toThrow(
      `${base}/stall: timed out after 0.2 s (${body.length} bytes received)`,
    );
    await expect(
      downloadBundle(`${base}/stall`, { env: { HTTP_PROXY: plain.url }, timeoutMs: 200 }),
    ).rejects.toThrow(
      `${base}/stall: timed out after 0.2 s through the proxy ${plain.url} (HTTP_PROXY) (${body.length} bytes received)`,
    );
  });

  it("refuses a body over a cap the caller sets", async () => {
    await expect(
      downloadBundle(`${base}/bundle.tar.gz`, { env: {}, maxDownloadBytes: 10 }),
    ).rejects.toThrow(
      `${base}/bundle.tar.gz: larger than 10 bytes, the limit for a bundle download (Content-Length: ${body.length} bytes)`,
    );
  });
});

function esc(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
}
