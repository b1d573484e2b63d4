import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KubeConfig } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openBundleSource } from "../core/bundle/source.js";
import { readViewsBundle } from "../core/views.js";
import { REPO_ROOT } from "../test/cluster/control-plane.js";
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

describe("a multi-view bundle", () => {
  const dir = join(REPO_ROOT, "models", "fashion-views3");
  const digest = createHash("sha256")
    .update(readFileSync(join(dir, "ddnn.json")))
    .digest("hex");
  const files = ["ddnn.json", "server.onnx", "device-view0.onnx", "device-view1.onnx"];

  /** A .tar.gz of the shipped multi-view bundle with `view2` as its view 2 file (none: left out). */
  function archiveWith(view2: Uint8Array | undefined, nested: boolean): string {
    const work = mkdtempSync(join(tmpdir(), "ddnn-views-"));
    const root = join(work, nested ? "fashion-views3" : "bundle");
    mkdirSync(root);
    for (const f of files) copyFileSync(join(dir, f), join(root, f));
    if (view2) writeFileSync(join(root, "device-view2.onnx"), view2);
    const out = join(work, "bundle.tar.gz");
    if (nested) execFileSync("tar", ["-czf", out, "-C", work, "fashion-views3"]);
    else execFileSync("tar", ["-czf", out, "-C", root, "."]);
    return out;
  }

  /** The operator's verdict on an archive, and the agents' (core/views.ts readViewsBundle). */
  async function verdicts(path: string) {
    const bytes = new Uint8Array(readFileSync(path));
    const operator = await new BundleVerifier({ client, fetch: async () => bytes }).verify("fog", {
      url: "http://models.fog.svc/fashion-views3.tar.gz",
      sha256: digest,
    });
    let agents: Verdict;
    try {
      await readViewsBundle(path);
      agents = { ok: true };
    } catch (err) {
      agents = { ok: false, message: (err as Error).message };
    }
    return { operator, agents };
  }

  const view2 = new Uint8Array(readFileSync(join(dir, "device-view2.onnx")));

  it.each([false, true])(
    "is verified with every view's file (nested folder: %s), reporting K",
    async (nested) => {
      const { operator, agents } = await verdicts(archiveWith(view2, nested));
      expect(agents).toEqual({ ok: true });
      expect(operator).toMatchObject({
        ok: true,
        facts: { views: 3, stages: ["device", "server"] },
      });
    },
  );

  it.each([
    ["missing", undefined, "missing (named by ddnn.json views.devices[2].file)"],
    [
      "altered",
      new Uint8Array([...view2.subarray(0, -1), view2.at(-1)! ^ 1]),
      "sha256 mismatch: ddnn.json views.devices[2].sha256 is",
    ],
  ])("with view 2's file %s is refused as the agents refuse it", async (_, file, message) => {
    const { operator, agents } = await verdicts(archiveWith(file, false));
    expect(operator).toMatchObject({ ok: false, reason: "InvalidBundle" });
    expect(!operator.ok && operator.message).toContain(`[device-view2.onnx]: ${message}`);
    expect(!agents.ok && agents.message).toContain(`[device-view2.onnx]: ${message}`);
  });
});
