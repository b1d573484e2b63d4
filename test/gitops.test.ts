/**
 * The GitOps examples under examples/gitops: each kustomize overlay builds (the kubectl built by
 * scripts/control-plane.sh) and what it renders passes a server-side dry run against a real
 * kube-apiserver with the DDNNModel CRD; each DDNNModel pins the digest of the bundle in its
 * ConfigMap, and that bundle is the one shipped in models/ (so a changed bundle fails here until
 * examples/gitops/regenerate.sh is run); the Argo CD and Flux objects point at the chart and the
 * overlays, and the Helm values they carry pass the chart's schema (the real helm).
 */
import { execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse, parseAllDocuments, stringify } from "yaml";
import { readBundleArchive } from "../core/bundle/read.js";
import { readTarGz } from "../core/bundle/tar.js";
import { ddnnModelSpecSchema } from "../operator/spec.js";
import { binary, type ControlPlane, REPO_ROOT } from "./cluster/control-plane.js";
import { startCluster } from "./operator/harness.js";

const GITOPS = join(REPO_ROOT, "examples", "gitops");
const OVERLAYS = ["dev", "prod"] as const;
const REGENERATE = "bash examples/gitops/regenerate.sh";
const MiB = 1024 * 1024;

interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata: {
    name: string;
    namespace?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
  // biome-ignore lint/suspicious/noExplicitAny: rendered manifests are checked field by field
  spec?: any;
  binaryData?: Record<string, string>;
}

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function run(command: string, args: readonly string[], timeout = 120_000): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      command,
      args,
      { cwd: REPO_ROOT, timeout, maxBuffer: 64 * 1024 * 1024 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

function documents(text: string): KubeObject[] {
  return parseAllDocuments(text)
    .map((d) => d.toJSON() as KubeObject | null)
    .filter((d): d is KubeObject => d !== null);
}

function yamlFile(...path: string[]): KubeObject[] {
  return documents(readFileSync(join(GITOPS, ...path), "utf8"));
}

const rendered = new Map<string, { text: string; objects: KubeObject[] }>();

/** `kubectl kustomize` of an overlay (cached per run: the bundles make it 1.5 MB of YAML). */
async function kustomize(overlay: string): Promise<{ text: string; objects: KubeObject[] }> {
  const cached = rendered.get(overlay);
  if (cached) return cached;
  const r = await run(binary("kubectl"), ["kustomize", join(GITOPS, "overlays", overlay)]);
  if (r.code !== 0) throw new Error(`kubectl kustomize overlays/${overlay} failed: ${r.stderr}`);
  const out = { text: r.stdout, objects: documents(r.stdout) };
  rendered.set(overlay, out);
  return out;
}

const of = (objects: KubeObject[], kind: string) => objects.filter((o) => o.kind === kind);

/**
 * The bundles shipped in models/: every folder with a ddnn.json, but multi-view ones (a `views`
 * block, docs/bundle-views.md), which the operator and the tiers do not run yet.
 */
const shippedBundles = readdirSync(join(REPO_ROOT, "models"), { withFileTypes: true })
  .filter((e) => e.isDirectory() && existsSync(join(REPO_ROOT, "models", e.name, "ddnn.json")))
  .filter(
    (e) =>
      !(
        "views" in JSON.parse(readFileSync(join(REPO_ROOT, "models", e.name, "ddnn.json"), "utf8"))
      ),
  )
  .map((e) => e.name)
  .sort();

describe("the kustomize overlays", () => {
  it.each(OVERLAYS)(
    "overlays/%s builds one DDNNModel and one bundle ConfigMap per shipped bundle",
    async (overlay) => {
      const { objects } = await kustomize(overlay);
      const namespace = overlay === "dev" ? "fog-dev" : "fog";
      expect(of(objects, "Namespace").map((n) => n.metadata.name)).toEqual([namespace]);
      const models = of(objects, "DDNNModel");
      expect(models.map((m) => m.metadata.name).sort()).toEqual(shippedBundles);
      expect(
        of(objects, "ConfigMap")
          .map((c) => c.metadata.name)
          .sort(),
      ).toEqual(shippedBundles.map((b) => `${b}-bundle`));
      for (const o of objects) {
        if (o.kind !== "Namespace") expect(o.metadata.namespace, o.metadata.name).toBe(namespace);
        expect(o.metadata.labels?.["fog.ddnn.io/environment"]).toBe(overlay);
      }
      for (const m of models) {
        // The operator's own schema (the CRD is generated from it) takes every model.
        const parsed = ddnnModelSpecSchema.safeParse(m.spec);
        expect(parsed.success, `${m.metadata.name}: ${parsed.error?.message}`).toBe(true);
        const server = m.spec.tiers.server;
        if (overlay === "dev") {
          expect(server.replicas).toBe(1);
          expect(server.resources).toBeUndefined();
        } else {
          expect(server.replicas).toBeGreaterThanOrEqual(2);
          expect(server.resources.requests).toMatchObject({ cpu: expect.any(String) });
          expect(server.resources.limits).toMatchObject({ memory: expect.any(String) });
        }
      }
      const threeTier = models.find((m) => m.metadata.name === "fashion-3tier")!;
      expect(threeTier.spec.tiers.edge.replicas).toBe(overlay === "dev" ? 1 : 2);
    },
  );

  it.each(OVERLAYS)(
    "overlays/%s: every DDNNModel pins the digest of its ConfigMap's bundle, the one in models/",
    async (overlay) => {
      const { objects } = await kustomize(overlay);
      const sizes: string[] = [];
      for (const model of of(objects, "DDNNModel")) {
        const ref = model.spec.bundle.configMap as { name: string; key: string };
        const cm = of(objects, "ConfigMap").find(
          (c) => c.metadata.name === ref.name && c.metadata.namespace === model.metadata.namespace,
        );
        expect(cm, `${model.metadata.name}: ConfigMap ${ref.name}`).toBeDefined();
        const base64 = cm!.binaryData?.[ref.key];
        expect(base64, `${ref.name} binaryData.${ref.key}`).toBeDefined();
        // Under 1 MiB even as base64 in YAML (the API server counts the decoded bytes).
        expect(base64!.length).toBeLessThan(MiB);
        const archive = Buffer.from(base64!, "base64");
        const bundle = await readBundleArchive(archive, `${ref.name}[${ref.key}]`);
        const shipped = join(REPO_ROOT, "models", bundle.manifest.name, "ddnn.json");
        const stale = `examples/gitops is stale: run ${REGENERATE} and put the digest it prints in examples/gitops/base/${model.metadata.name}.yaml`;
        expect(bundle.digest, `${model.metadata.name}: spec.bundle.sha256; ${stale}`).toBe(
          model.spec.bundle.sha256,
        );
        expect(cm!.metadata.annotations?.["fog.ddnn.io/bundle-sha256"]).toBe(bundle.digest);
        expect(existsSync(shipped), `${bundle.manifest.name} is no bundle in models/`).toBe(true);
        expect(sha256(readFileSync(shipped)), `models/${bundle.manifest.name}; ${stale}`).toBe(
          bundle.digest,
        );
        // Exactly what the digest pins: ddnn.json and the stage files, no checkpoint.
        const files = [...(await readTarGz(archive, ref.name)).keys()].sort();
        expect(files).toEqual(["ddnn.json", ...bundle.manifest.stages.map((s) => s.file)].sort());
        expect(model.metadata.name).toBe(bundle.manifest.name);
        sizes.push(
          `${model.metadata.name} ${archive.length} B (.tar.gz), ${base64!.length} B base64`,
        );
      }
      if (overlay === "prod") process.stdout.write(`bundle ConfigMaps: ${sizes.join("; ")}\n`);
    },
  );

  it("each bundle ConfigMap says how it was made and how to regenerate it", () => {
    for (const bundle of shippedBundles) {
      const text = readFileSync(join(GITOPS, "base", "bundles", `${bundle}.yaml`), "utf8");
      expect(text).toMatch(
        new RegExp(
          `^# Made by: ddnn bundle pack models/${bundle} --out examples/gitops/base/bundles/${bundle}\\.yaml\n`,
        ),
      );
      expect(readFileSync(join(GITOPS, "regenerate.sh"), "utf8")).toContain(bundle);
    }
  });
});

describe("the overlays on a real API server", () => {
  let cp: ControlPlane;
  beforeAll(async () => {
    cp = await startCluster();
  }, 180_000);
  afterAll(async () => {
    await cp?.stop();
  });

  it.each(OVERLAYS)(
    "overlays/%s passes kubectl apply --server-side --dry-run=server",
    async (overlay) => {
      const { text, objects } = await kustomize(overlay);
      // A dry run creates no namespace, and nothing is admitted into one that does not exist.
      for (const ns of of(objects, "Namespace")) {
        await cp.kubectlOk(["apply", "--server-side", "-f", "-"], { input: stringify(ns) });
      }
      const r = await cp.kubectl(["apply", "--server-side", "--dry-run=server", "-f", "-"], {
        input: text,
      });
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      for (const o of objects.filter((o) => o.kind !== "Namespace")) {
        const kind = o.kind === "DDNNModel" ? "ddnnmodel.fog.ddnn.io" : "configmap";
        expect(r.stdout).toContain(
          `${kind}/${o.metadata.name} serverside-applied (server dry run)`,
        );
      }
    },
  );

  it("a client-side kubectl apply of a bundle ConfigMap is refused, as docs/gitops.md says", async () => {
    const r = await cp.kubectl([
      "apply",
      "--dry-run=server",
      "-n",
      "fog",
      "-f",
      join(GITOPS, "base", "bundles", "fashion-deep.yaml"),
    ]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("metadata.annotations: Too long: may not be more than 262144 bytes");
  });

  it("a ConfigMap holds at most 1 MiB of binaryData (the limit ddnn bundle pack packs to)", async () => {
    const configMap = (name: string, size: number) =>
      JSON.stringify({
        apiVersion: "v1",
        kind: "ConfigMap",
        metadata: { name, namespace: "fog" },
        binaryData: { "bundle.tar.gz": randomBytes(size).toString("base64") },
      });
    // Stored for real, so etcd's request limit is passed too.
    const fits = await cp.kubectl(["apply", "--server-side", "-f", "-"], {
      input: configMap("exactly-1mib", MiB),
    });
    expect(fits.stderr).toBe("");
    expect(fits.code).toBe(0);
    const over = await cp.kubectl(["apply", "--server-side", "-f", "-"], {
      input: configMap("over-1mib", MiB + 1),
    });
    expect(over.code).not.toBe(0);
    expect(over.stderr).toContain("Too long: may not be more than 1048576 bytes");
  });
});

describe("Argo CD and Flux", () => {
  const CHART = join(REPO_ROOT, "charts", "ddnn-fog");
  const chartName = (parse(readFileSync(join(CHART, "Chart.yaml"), "utf8")) as { name: string })
    .name;
  const [argoChart] = yamlFile("argocd", "ddnn-fog.yaml");
  const [argoModels] = yamlFile("argocd", "models.yaml");
  const flux = yamlFile("flux", "ddnn-fog.yaml");
  const [fluxModels] = yamlFile("flux", "models.yaml");
  const gitRepository = flux.find((o) => o.kind === "GitRepository")!;
  const helmRelease = flux.find((o) => o.kind === "HelmRelease")!;

  it("the Argo CD Applications install the chart, then the prod overlay", () => {
    expect(chartName).toBe("ddnn-fog");
    for (const app of [argoChart!, argoModels!]) {
      expect(app).toMatchObject({
        apiVersion: "argoproj.io/v1alpha1",
        kind: "Application",
        metadata: { namespace: "argocd" },
        spec: { project: "default", destination: { server: "https://kubernetes.default.svc" } },
      });
      expect(app.spec.source.repoURL).toBe(gitRepository.spec.url);
    }
    expect(argoChart!.spec.source.path).toBe("charts/ddnn-fog");
    expect(existsSync(join(REPO_ROOT, argoChart!.spec.source.path, "Chart.yaml"))).toBe(true);
    expect(argoChart!.spec.source.helm.releaseName).toBe("ddnn-fog");
    expect(argoChart!.spec.destination.namespace).toBe("ddnn-system");
    expect(argoModels!.spec.source.path).toBe("examples/gitops/overlays/prod");
    expect(existsSync(join(REPO_ROOT, argoModels!.spec.source.path, "kustomization.yaml"))).toBe(
      true,
    );
    // Without server-side apply Argo CD's kubectl apply fails on the bundle ConfigMaps (above).
    expect(argoModels!.spec.syncPolicy.syncOptions).toContain("ServerSideApply=true");
    const wave = (o: KubeObject) =>
      Number(o.metadata.annotations?.["argocd.argoproj.io/sync-wave"]);
    expect(wave(argoChart!)).toBeLessThan(wave(argoModels!));
  });

  it("the Flux HelmRelease takes the chart from the GitRepository; a Kustomization the prod overlay", () => {
    expect(gitRepository).toMatchObject({
      apiVersion: "source.toolkit.fluxcd.io/v1",
      kind: "GitRepository",
      spec: { ref: { branch: argoChart!.spec.source.targetRevision } },
    });
    expect(helmRelease).toMatchObject({
      apiVersion: "helm.toolkit.fluxcd.io/v2",
      kind: "HelmRelease",
      spec: {
        releaseName: "ddnn-fog",
        targetNamespace: "ddnn-system",
        chart: {
          spec: {
            chart: "./charts/ddnn-fog",
            sourceRef: { kind: "GitRepository", name: gitRepository.metadata.name },
          },
        },
        install: { crds: "CreateReplace" },
        upgrade: { crds: "CreateReplace" },
      },
    });
    expect(existsSync(join(REPO_ROOT, helmRelease.spec.chart.spec.chart, "Chart.yaml"))).toBe(true);
    expect(fluxModels).toMatchObject({
      apiVersion: "kustomize.toolkit.fluxcd.io/v1",
      kind: "Kustomization",
      spec: {
        path: "./examples/gitops/overlays/prod",
        prune: true,
        sourceRef: { kind: "GitRepository", name: gitRepository.metadata.name },
      },
    });
    for (const o of [helmRelease, fluxModels!])
      expect(o.metadata.namespace ?? "").toBe(gitRepository.metadata.namespace);
    // The source's ignore rules keep what the release and the Kustomization read.
    const ignore = gitRepository.spec.ignore as string;
    expect(ignore).toContain("!/charts/");
    expect(ignore).toContain("!/examples/gitops/");
  });

  describe("with helm", () => {
    let helm = "";
    beforeAll(async () => {
      // Cached after the first build (scripts/helm.sh; about 140 s cold on 2 cores).
      const r = await run("bash", [join(REPO_ROOT, "scripts", "helm.sh")], 840_000);
      if (r.code !== 0) throw new Error(`scripts/helm.sh failed:\n${r.stderr}`);
      helm = r.stdout.trim().split("\n").pop()!;
    }, 900_000);

    it.each([
      ["the Argo CD Application", () => argoChart!.spec.source.helm.valuesObject],
      ["the Flux HelmRelease", () => helmRelease.spec.values],
    ])("the values of %s pass the chart's schema and render", async (_, values) => {
      const file = join(mkdtempSync(join(tmpdir(), "ddnn-gitops-")), "values.yaml");
      writeFileSync(file, stringify(values()));
      const t = await run(helm, ["template", "ddnn-fog", CHART, "-n", "ddnn-system", "-f", file]);
      expect(t.stderr).toBe("");
      expect(t.code).toBe(0);
      const objects = documents(t.stdout);
      const deployment = objects.find((o) => o.kind === "Deployment")!;
      expect(deployment.spec.replicas).toBe(values().replicaCount);
    });
  });
});
