/**
 * The CRD's schema and CEL rules, checked by the real API server: every object in
 * test/fixtures/invalid is refused with the message its `# expect:` line names, and every
 * example is accepted.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ControlPlane, REPO_ROOT } from "../cluster/control-plane.js";
import { startCluster } from "./harness.js";

const INVALID = join(REPO_ROOT, "test", "fixtures", "invalid");
const fixtures = readdirSync(INVALID)
  .filter((f) => f.endsWith(".yaml"))
  .sort()
  .map((file) => {
    const text = readFileSync(join(INVALID, file), "utf8");
    const expected = /^# expect: (.+)$/m.exec(text)?.[1];
    if (!expected) throw new Error(`${file} has no "# expect:" line`);
    return { file, text, expected };
  });
const examples = readdirSync(join(REPO_ROOT, "examples")).filter((f) => f.endsWith(".yaml"));

let cp: ControlPlane;
const messages: string[] = [];

beforeAll(async () => {
  cp = await startCluster();
}, 180_000);

afterAll(async () => {
  if (messages.length) process.stdout.write(`${messages.join("\n")}\n`);
  await cp?.stop();
});

describe("the DDNNModel CRD refuses invalid objects with a clear message", () => {
  it.each(fixtures.filter((f) => !f.file.includes("duplicate")))(
    "$file",
    async ({ file, expected }) => {
      const r = await cp.kubectl(["apply", "-f", join(INVALID, file)]);
      expect(r.code, r.stdout).not.toBe(0);
      expect(r.stderr).toContain(expected);
      messages.push(`${file}: ${r.stderr.trim()}`);
      // Refused by the API server, not by kubectl: nothing was stored.
      const get = await cp.kubectl(["get", "ddnn", "-n", "fog", file.replace(/\.yaml$/, "")]);
      expect(get.stderr).toContain("NotFound");
    },
  );

  it("placement-duplicate-stage.yaml: the API server refuses a stage placed twice", async () => {
    const { text, expected } = fixtures.find((f) => f.file.includes("duplicate"))!;
    // Sent as written (kubectl would already refuse it while reading the YAML), with the strict
    // field validation that kubectl apply asks for by default.
    const kc = cp.kubeConfig("admin");
    const https = await import("node:https");
    const opts: import("node:https").RequestOptions = {};
    await kc.applyToHTTPSOptions(opts);
    const reply = await new Promise<{ code: number; body: string }>((resolve, reject) => {
      const req = https.request(
        `${cp.server}/apis/fog.ddnn.io/v1alpha1/namespaces/fog/ddnnmodels?fieldValidation=Strict`,
        {
          ...opts,
          agent: undefined,
          method: "POST",
          headers: { ...(opts.headers as object), "Content-Type": "application/yaml" },
        },
        (res) => {
          let body = "";
          res.setEncoding("utf8");
          res.on("data", (c: string) => {
            body += c;
          });
          res.on("end", () => resolve({ code: res.statusCode ?? 0, body }));
        },
      );
      req.on("error", reject);
      req.end(text);
    });
    expect(reply.code).toBe(400);
    const message = JSON.parse(reply.body).message as string;
    expect(message).toContain(expected);
    messages.push(`placement-duplicate-stage.yaml: ${message}`);
    // kubectl itself reads YAML leniently: the last "device" wins before the API server sees
    // the object. The operator then reports PlacementMismatch (the bundle's edge stage is not
    // placed); docs/operator.md says so.
    const viaKubectl = await cp.kubectl([
      "apply",
      "-f",
      join(INVALID, "placement-duplicate-stage.yaml"),
    ]);
    expect(viaKubectl.code).toBe(0);
    const stored = JSON.parse(
      await cp.kubectlOk(["get", "ddnn", "-n", "fog", "placement-duplicate-stage", "-o", "json"]),
    );
    expect(stored.spec.placement).toEqual({ device: "edge", server: "server" });
    await cp.kubectlOk(["delete", "ddnn", "-n", "fog", "placement-duplicate-stage"]);
  });
});

describe("the examples are valid", () => {
  it.each(examples)("%s is accepted (server-side dry run)", async (file) => {
    const r = await cp.kubectl([
      "apply",
      "--dry-run=server",
      "-f",
      join(REPO_ROOT, "examples", file),
    ]);
    expect(r.stderr).not.toMatch(/error|invalid/i);
    expect(r.code).toBe(0);
  });

  it("defaults fill in what a minimal object leaves out", async () => {
    const minimal = `apiVersion: fog.ddnn.io/v1alpha1
kind: DDNNModel
metadata: { name: minimal, namespace: fog }
spec:
  bundle: { url: "http://models.fog.svc/x.tar.gz", sha256: "${"a".repeat(64)}" }
  placement: { device: device, server: server }
`;
    const out = await cp.kubectlOk(["apply", "--dry-run=server", "-o", "json", "-f", "-"], {
      input: minimal,
    });
    const spec = JSON.parse(out).spec;
    expect(spec).toMatchObject({
      deadlineMs: 250,
      broker: { managed: { kind: "mosquitto" } },
      tiers: {
        device: {
          nodeSelector: { "fog.ddnn.io/device": "true" },
          source: { http: { port: 8080 } },
        },
        edge: { replicas: 1 },
        server: { replicas: 1, batching: { maxBatch: 32, maxDelayMs: 2 } },
      },
    });
  });
});
