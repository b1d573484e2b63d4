/**
 * `ddnn bundle pack` through the built CLI: what it writes for a shipped bundle, that it writes
 * the same bytes every time, that the ConfigMap it writes is a bundle the tiers and the operator
 * read (core's readBundleArchive), that GNU tar reads the archive, and the bundles it refuses.
 */
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { cpSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parse, parseAllDocuments } from "yaml";
import { readBundleArchive } from "../core/bundle/read.js";
import { readTarGz } from "../core/bundle/tar.js";
import { readViewsBundle } from "../core/views.js";
import { ddnnModelSpecSchema } from "../operator/spec.js";
import { tempDir } from "../test/support/bundle-fixture.js";
import { ddnn, root } from "../test/support/run.js";
import { CONFIGMAP_MAX_BYTES } from "./bundle.js";

const FASHION_DEEP = join(root, "models", "fashion-deep");
const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

interface ConfigMap {
  apiVersion: string;
  kind: string;
  metadata: {
    name: string;
    namespace?: string;
    labels: Record<string, string>;
    annotations: Record<string, string>;
  };
  binaryData: Record<string, string>;
}

/** The DDNNModel printed on stderr after the `---` line. */
function snippet(stderr: string): { metadata: { name: string }; spec: Record<string, unknown> } {
  const docs = parseAllDocuments(stderr.slice(stderr.indexOf("\n---\n") + 1));
  return docs[docs.length - 1]!.toJSON();
}

/** A bundle directory whose one stage is `size` random (incompressible) bytes. */
function syntheticBundle(size: number, file = "server.onnx"): string {
  const dir = tempDir("ddnn-pack-");
  const bytes = randomBytes(size);
  mkdirSync(join(dir, file, ".."), { recursive: true });
  writeFileSync(join(dir, file), bytes);
  const manifest = {
    format: "ddnn-bundle/v1",
    name: "Big Model",
    version: "2.0.0+build.7",
    labels: ["a", "b"],
    input: { shape: [4], dtype: "float32", scale: 1, mean: [0], std: [1] },
    stages: [{ name: "server", file, sha256: sha256(bytes), input: "x", logits: "logits" }],
  };
  writeFileSync(join(dir, "ddnn.json"), JSON.stringify(manifest));
  return dir;
}

describe("ddnn bundle pack", () => {
  it("--help explains the command and its flags", async () => {
    const r = await ddnn(["bundle", "pack", "--help"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("Usage: ddnn bundle pack DIR");
    for (const flag of ["--name", "--namespace", "--out", "--archive"])
      expect(r.stdout).toContain(flag);
    const top = await ddnn(["--help"]);
    expect(top.stdout).toMatch(/^ {2}bundle {4}/m);
  });

  it("packs models/fashion-deep as a ConfigMap under 1 MiB that reads back as the same bundle", async () => {
    const r = await ddnn(["bundle", "pack", "models/fashion-deep", "--namespace", "fog"]);
    expect(r.code, r.stderr).toBe(0);
    const digest = sha256(readFileSync(join(FASHION_DEEP, "ddnn.json")));
    const cm = parse(r.stdout) as ConfigMap;
    expect(cm).toMatchObject({
      apiVersion: "v1",
      kind: "ConfigMap",
      metadata: {
        name: "fashion-deep-bundle",
        namespace: "fog",
        labels: {
          "app.kubernetes.io/name": "fashion-deep",
          "app.kubernetes.io/version": "1.0.0",
          "app.kubernetes.io/component": "model-bundle",
          "app.kubernetes.io/part-of": "ddnn-fog",
        },
        annotations: { "fog.ddnn.io/bundle-sha256": digest },
      },
    });
    expect(Object.keys(cm.binaryData)).toEqual(["bundle.tar.gz"]);
    const archive = Buffer.from(cm.binaryData["bundle.tar.gz"]!, "base64");
    expect(archive.length).toBeLessThan(CONFIGMAP_MAX_BYTES);
    process.stdout.write(
      `fashion-deep: ${archive.length} bytes of .tar.gz, ${r.stdout.length} bytes of ConfigMap YAML\n`,
    );

    // What the operator and every tier do with the ConfigMap's bytes.
    const bundle = await readBundleArchive(archive, "configmap");
    expect(bundle.digest).toBe(digest);
    expect(bundle.manifest.name).toBe("fashion-deep");
    // Only what ddnn.json pins: the trainer's checkpoint.pt (487 KiB, read by no tier, not
    // covered by the digest) stays out, which also keeps the ConfigMap far from 1 MiB.
    const files = await readTarGz(archive, "configmap");
    expect([...files.keys()]).toEqual(["ddnn.json", "device.onnx", "server.onnx"]);
    expect(r.stderr).toContain("left out (ddnn.json does not name them");
    expect(r.stderr).toContain("checkpoint.pt");

    expect(r.stderr).toContain(`spec.bundle.sha256: ${digest}`);
    expect(r.stderr).toContain("kubectl apply --server-side");
    const model = snippet(r.stderr);
    expect(model).toMatchObject({
      apiVersion: "fog.ddnn.io/v1alpha1",
      kind: "DDNNModel",
      metadata: { name: "fashion-deep", namespace: "fog" },
      spec: {
        bundle: {
          configMap: { name: "fashion-deep-bundle", key: "bundle.tar.gz" },
          sha256: digest,
        },
        placement: { device: "device", server: "server" },
      },
    });
    // Ready as printed: the operator's own schema takes it.
    const spec = ddnnModelSpecSchema.safeParse(model.spec);
    expect(spec.success, spec.error?.message).toBe(true);
  });

  it("packs a multi-view bundle (models/fashion-views3) with every view's device stage, as the tiers read it", async () => {
    const r = await ddnn(["bundle", "pack", "models/fashion-views3", "--namespace", "fog"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain("device-view1.onnx, device-view2.onnx");
    const cm = parse(r.stdout) as ConfigMap;
    const archive = Buffer.from(cm.binaryData["bundle.tar.gz"]!, "base64");
    expect(archive.length).toBeLessThan(CONFIGMAP_MAX_BYTES);
    const dir = tempDir("ddnn-pack-views-");
    const file = join(dir, "bundle.tar.gz");
    writeFileSync(file, archive);
    // What an agent of view 2 and the operator's verifier read: every view's file, sha256 checked.
    const views = await readViewsBundle(file);
    expect(views.deviceBytes.map((b) => sha256(b))).toEqual(
      views.views.devices.map((d) => d.sha256),
    );
    expect(views.deviceBytes).toHaveLength(3);
  });

  it("writes the same bytes on every run, and GNU tar reads the archive", async () => {
    const dir = tempDir("ddnn-pack-");
    const args = (n: number) => [
      "bundle",
      "pack",
      "models/fashion-deep",
      "--out",
      join(dir, "cm.yaml"),
      "--archive",
      join(dir, `bundle-${n}.tar.gz`),
    ];
    const first = await ddnn(args(1));
    expect(first.code, first.stderr).toBe(0);
    const yaml1 = readFileSync(join(dir, "cm.yaml"));
    const second = await ddnn(args(1));
    expect(second.code, second.stderr).toBe(0);
    expect(sha256(readFileSync(join(dir, "cm.yaml")))).toBe(sha256(yaml1));
    expect(first.stdout).toBe("");
    await ddnn(args(2));
    const archive = readFileSync(join(dir, "bundle-1.tar.gz"));
    expect(sha256(readFileSync(join(dir, "bundle-2.tar.gz")))).toBe(sha256(archive));
    // The ConfigMap holds exactly the archive --archive wrote.
    const cm = parse(yaml1.toString("utf8")) as ConfigMap;
    expect(Buffer.from(cm.binaryData["bundle.tar.gz"]!, "base64").equals(archive)).toBe(true);
    // The file starts with the command that made it (to regenerate it) and the digest.
    expect(yaml1.toString("utf8")).toMatch(
      /^# Made by: ddnn bundle pack models\/fashion-deep --out /,
    );

    // gzip header: no file name (FLG 0), mtime 0, OS Unix; as `gzip -n` writes.
    expect([...archive.subarray(0, 10)]).toEqual([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3]);
    const listing = execFileSync("tar", ["-tvzf", join(dir, "bundle-1.tar.gz")], {
      encoding: "utf8",
    });
    expect(listing.trim().split("\n")).toEqual([
      expect.stringMatching(/^-rw-r--r-- 0\/0 +\d+ 1970-01-01 00:00 ddnn\.json$/),
      expect.stringMatching(/^-rw-r--r-- 0\/0 +\d+ 1970-01-01 00:00 device\.onnx$/),
      expect.stringMatching(/^-rw-r--r-- 0\/0 +\d+ 1970-01-01 00:00 server\.onnx$/),
    ]);
    const out = join(dir, "x");
    mkdirSync(out);
    execFileSync("tar", ["-xzf", join(dir, "bundle-1.tar.gz"), "-C", out]);
    for (const f of ["ddnn.json", "device.onnx", "server.onnx"])
      expect(sha256(readFileSync(join(out, f)))).toBe(sha256(readFileSync(join(FASHION_DEEP, f))));
  });

  it("refuses a corrupt bundle with one line naming the file, and writes nothing", async () => {
    const dir = join(tempDir("ddnn-pack-"), "fashion-deep");
    cpSync(FASHION_DEEP, dir, { recursive: true, filter: (f) => !f.endsWith(".pt") });
    const onnx = readFileSync(join(dir, "server.onnx"));
    onnx[onnx.length - 10]! ^= 0xff;
    writeFileSync(join(dir, "server.onnx"), onnx);
    const out = join(dir, "..", "cm.yaml");
    const r = await ddnn(["bundle", "pack", dir, "--out", out]);
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(r.stderr).toContain(`${join(dir, "server.onnx")}: sha256 mismatch`);
    expect(r.stdout).toBe("");
    expect(existsSync(out)).toBe(false);

    rmSync(join(dir, "ddnn.json"));
    const missing = await ddnn(["bundle", "pack", dir]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toBe(`ddnn: ${join(dir, "ddnn.json")}: missing\n`);
  });

  it("refuses bad flags with one line", async () => {
    for (const [args, message] of [
      [["bundle", "pack"], "name the bundle directory"],
      [["bundle", "pack", "a", "b"], "one DIR, not 2"],
      [["bundle", "pack", "models/fashion-deep", "--namespace", "Fog"], "--namespace"],
      [["bundle", "pack", "models/fashion-deep", "--name", "a_b"], "--name"],
      [["bundle", "pack", "models/fashion-deep", "--nmae", "x"], "--nmae"],
      [["bundle", "unpack"], 'unknown bundle command "unpack"'],
      [["bundle", "pack", "no/such/dir"], "no/such/dir: no such bundle directory"],
    ] as const) {
      const r = await ddnn(args);
      expect(r.code, args.join(" ")).toBe(2);
      expect(r.stderr.trim().split("\n"), args.join(" ")).toHaveLength(1);
      expect(r.stderr, args.join(" ")).toContain(message);
    }
  });

  it("over 1 MiB: no ConfigMap; the .tar.gz with --archive, to serve over HTTP(S)", async () => {
    const dir = syntheticBundle(CONFIGMAP_MAX_BYTES + 4096);
    const refused = await ddnn(["bundle", "pack", dir]);
    expect(refused.code).toBe(2);
    expect(refused.stderr.trim().split("\n")).toHaveLength(1);
    expect(refused.stderr).toMatch(/over the 1048576 bytes \(1 MiB\) a ConfigMap holds/);
    expect(refused.stderr).toContain("--archive FILE");
    expect(refused.stderr).toContain("spec.bundle.url");

    const archivePath = join(dir, "..", "big.tar.gz");
    const r = await ddnn(["bundle", "pack", dir, "--archive", archivePath]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe("");
    const archive = readFileSync(archivePath);
    expect(archive.length).toBeGreaterThan(CONFIGMAP_MAX_BYTES);
    const bundle = await readBundleArchive(archive, archivePath);
    expect(r.stderr).toContain(`serve ${archivePath} over HTTP(S)`);
    expect(r.stderr).toContain(`spec.bundle.sha256: ${bundle.digest}`);
    const model = snippet(r.stderr);
    // Names made valid for Kubernetes from "Big Model" 2.0.0+build.7; one stage runs on the server.
    expect(model).toMatchObject({
      metadata: { name: "big-model" },
      spec: {
        bundle: {
          url: expect.stringMatching(/^https:\/\/.+\/big-model-2\.0\.0-build\.7\.tar\.gz$/),
        },
        placement: { server: "server" },
      },
    });
    expect(ddnnModelSpecSchema.safeParse(model.spec).success).toBe(true);
  });

  it("keeps stage files in folders, also past ustar's 100-byte name field", async () => {
    const file = `stages/${"a".repeat(90)}/${"b".repeat(80)}.onnx`;
    const dir = syntheticBundle(3000, file);
    writeFileSync(join(dir, "NOTES.md"), "not part of the bundle");
    const r = await ddnn(["bundle", "pack", dir, "--name", "long-names"]);
    expect(r.code, r.stderr).toBe(0);
    const cm = parse(r.stdout) as ConfigMap;
    expect(cm.metadata.name).toBe("long-names");
    // A version that is no label value ("+") is left out of the labels.
    expect(cm.metadata.labels["app.kubernetes.io/version"]).toBeUndefined();
    expect(cm.metadata.labels["app.kubernetes.io/name"]).toBe("big-model");
    const archive = Buffer.from(cm.binaryData["bundle.tar.gz"]!, "base64");
    const bundle = await readBundleArchive(archive, "configmap");
    expect(bundle.manifest.stages[0]!.file).toBe(file);
    expect(r.stderr).toContain(
      "left out (ddnn.json does not name them, so its sha256 would not pin them): NOTES.md",
    );
    const tarball = join(dir, "..", "long.tar.gz");
    writeFileSync(tarball, archive);
    expect(execFileSync("tar", ["-tzf", tarball], { encoding: "utf8" })).toBe(
      `ddnn.json\n${file}\n`,
    );
  });

  it("repacks a .tar.gz bundle (examples/demo-bundle.tar.gz) to the same digest", async () => {
    const r = await ddnn([
      "bundle",
      "pack",
      "examples/demo-bundle.tar.gz",
      "--name",
      "demo-bundle",
    ]);
    expect(r.code, r.stderr).toBe(0);
    const cm = parse(r.stdout) as ConfigMap;
    const bundle = await readBundleArchive(
      Buffer.from(cm.binaryData["bundle.tar.gz"]!, "base64"),
      "configmap",
    );
    // The digest examples/ddnnmodel-configmap.yaml pins.
    const example = readFileSync(join(root, "examples", "ddnnmodel-configmap.yaml"), "utf8");
    expect(example).toContain(`sha256: ${bundle.digest}`);
    expect(snippet(r.stderr).spec).toMatchObject({
      placement: { device: "device", edge: "edge", server: "server" },
    });
  });
});
