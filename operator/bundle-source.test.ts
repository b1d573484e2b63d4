import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { KubeConfig } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openBundleSource } from "../core/bundle/source.js";
import { packedSmallBundle } from "../test/support/bundle-fixture.js";
import { type ForwardProxy, startForwardProxy } from "../test/support/http-proxy.js";
import { BundleVerifier } from "./bundle-source.js";
import { KubeClient } from "./kube.js";

const MiB = 1024 * 1024;
const { archive, digest } = packedSmallBundle();

let server: Server;
let base: string;
let proxy: ForwardProxy;

// URL sources never reach the API server; the client only has to exist.
const kc = new KubeConfig();
kc.loadFromOptions({
  clusters: [{ name: "none", server: "https://127.0.0.1:1" }],
  users: [{ name: "none" }],
  contexts: [{ name: "none", cluster: "none", user: "none" }],
  currentContext: "none",
});
const client = new KubeClient(kc, "bundle-source-test");

type Verdict = { ok: true } | { ok: false; message: string };

async function tierVerdict(url: string, sha256: string): Promise<Verdict> {
  try {
    await openBundleSource(url, sha256);
    return { ok: true };
  } catch (err) {
    return { ok: false, message: (err as Error).message };
  }
}

async function operatorVerdict(url: string, sha256: string) {
  return new BundleVerifier({ client }).verify("fog", { url, sha256 });
}

beforeAll(async () => {
  server = createServer((req, res) => {
    if (req.url === "/bundle.tar.gz") res.end(archive);
    else if (req.url === "/egress-only.tar.gz") {
      // As in a cluster whose only way out is its proxy.
      if (req.headers.via) res.end(archive);
      else res.writeHead(403).end("direct egress refused");
    } else if (req.url === "/not-a-bundle.tar.gz") res.end(Buffer.from("hello, not gzip"));
    else if (req.url === "/chunked-huge") {
      const chunk = Buffer.alloc(MiB);
      let left = 100;
      const pump = () => {
        while (left-- > 0 && !res.destroyed) if (!res.write(chunk)) return res.once("drain", pump);
        if (!res.destroyed) res.end();
      };
      pump();
    } else res.writeHead(404).end();
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  proxy = await startForwardProxy();
});

afterAll(async () => {
  delete process.env.HTTP_PROXY;
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  await proxy.close();
});

describe("the operator's verifier and the tiers' loader", () => {
  it("give the same verdict, with the same message, for the same URL", async () => {
    const cases: { name: string; path: string; sha?: string; proxy?: string; ok: boolean }[] = [
      { name: "a good bundle", path: "/bundle.tar.gz", ok: true },
      {
        name: "a bundle only the proxy reaches",
        path: "/egress-only.tar.gz",
        proxy: "up",
        ok: true,
      },
      { name: "direct egress refused", path: "/egress-only.tar.gz", ok: false },
      { name: "a missing bundle", path: "/missing.tar.gz", ok: false },
      { name: "a response over the size cap", path: "/chunked-huge", ok: false },
      { name: "not a bundle", path: "/not-a-bundle.tar.gz", ok: false },
      { name: "a proxy that is down", path: "/bundle.tar.gz", proxy: "down", ok: false },
    ];
    for (const c of cases) {
      if (c.proxy === "up") process.env.HTTP_PROXY = proxy.url;
      else if (c.proxy === "down") process.env.HTTP_PROXY = "http://127.0.0.1:1";
      else delete process.env.HTTP_PROXY;
      const url = `${base}${c.path}`;
      const tier = await tierVerdict(url, c.sha ?? digest);
      const op = await operatorVerdict(url, c.sha ?? digest);
      expect(tier.ok, `${c.name}: tiers`).toBe(c.ok);
      expect(op.ok, `${c.name}: operator`).toBe(c.ok);
      if (!op.ok && !tier.ok) {
        expect(op.message, c.name).toBe(tier.message);
        expect(op.message, c.name).toContain(url);
        expect(op.reason, c.name).toBe(
          c.path === "/not-a-bundle.tar.gz" ? "InvalidBundle" : "FetchFailed",
        );
      }
    }
  }, 60_000);

  it("both refuse a bundle whose digest is not the one asked for", async () => {
    delete process.env.HTTP_PROXY;
    const wrong = "f".repeat(64);
    const tier = await tierVerdict(`${base}/bundle.tar.gz`, wrong);
    const op = await operatorVerdict(`${base}/bundle.tar.gz`, wrong);
    expect(tier).toMatchObject({ ok: false, message: expect.stringContaining(digest) });
    expect(op).toMatchObject({ ok: false, reason: "DigestMismatch" });
  });

  it("never shows a URL's credentials in a condition message", async () => {
    delete process.env.HTTP_PROXY;
    const url = `${base.replace("http://", "http://user:s3cret@")}/missing.tar.gz`;
    const op = await operatorVerdict(url, digest);
    expect(op.ok).toBe(false);
    expect(!op.ok && op.message).toContain("http://***@127.0.0.1");
    expect(!op.ok && op.message).not.toContain("s3cret");
  });
});
