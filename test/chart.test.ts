/**
 * The Helm chart charts/ddnn-fog, with the real helm (built once per machine by scripts/helm.sh)
 * and a real kube-apiserver: `helm lint --strict` passes, the chart's CRDs are the top-level
 * crds/, values.schema.json refuses wrong types with a message naming the key, every knob of
 * values.yaml is commented, the RBAC rules are exactly the requests the operator's code makes,
 * the Pods are restricted by default, monitoring objects appear only when enabled,
 * operator/rbac.yaml and operator/deployment.yaml are the chart's output, and the API server
 * accepts everything the chart renders (server-side dry run, Pod Security "restricted").
 */
import { execFile } from "node:child_process";
import { createPrivateKey, X509Certificate } from "node:crypto";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isMap, isScalar, parseAllDocuments, parseDocument, stringify, type YAMLMap } from "yaml";
import { brokerCaOf, operatorHelp } from "../cli/operator.js";
import { OWNED_KINDS } from "../operator/builders.js";
import { GROUP, PLURAL } from "../operator/spec.js";
import { issueServerCertificate } from "../operator/x509.js";
import {
  ControlPlane,
  OPERATOR_GROUPS,
  OPERATOR_USER,
  REPO_ROOT,
} from "./cluster/control-plane.js";
import { requireProgram } from "./support/programs.js";

const CHART = join(REPO_ROOT, "charts", "ddnn-fog");
const MONITORING_KINDS = ["ServiceMonitor", "PodMonitor", "PrometheusRule"];

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function run(
  command: string,
  args: readonly string[],
  timeout = 120_000,
  env: NodeJS.ProcessEnv = process.env,
): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      command,
      args,
      { cwd: REPO_ROOT, timeout, maxBuffer: 64 * 1024 * 1024, env },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

let helmBin = "";
// helm's own cache, configuration and data (repositories, plugins) stay out of the user's home.
const helmHome = mkdtempSync(join(tmpdir(), "ddnn-helm-home-"));
const helmEnv = {
  ...process.env,
  HELM_CACHE_HOME: join(helmHome, "cache"),
  HELM_CONFIG_HOME: join(helmHome, "config"),
  HELM_DATA_HOME: join(helmHome, "data"),
};
const helm = (args: readonly string[], env: NodeJS.ProcessEnv = {}) =>
  run(helmBin, args, 120_000, { ...helmEnv, ...env });

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: {
    name: string;
    namespace?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
  [key: string]: unknown;
}

interface Rule {
  apiGroups: string[];
  resources: string[];
  verbs: string[];
  resourceNames?: string[];
}

interface Container {
  name: string;
  image: string;
  args: string[];
  env: { name: string; value?: string }[];
  ports: { name: string; containerPort: number }[];
  securityContext: Record<string, unknown>;
  livenessProbe: { httpGet: { path: string; port: string | number } };
  readinessProbe: { httpGet: { path: string; port: string | number } };
}

interface Deployment extends K8sObject {
  spec: {
    replicas: number;
    template: {
      spec: {
        serviceAccountName: string;
        securityContext: Record<string, unknown>;
        containers: Container[];
        volumes?: unknown[];
      };
    };
  };
}

const RELEASE = ["ddnn-fog", CHART, "--namespace", "ddnn-system"];

/** `helm template` of the chart; the objects it renders (YAML comments and empty documents dropped). */
async function template(args: readonly string[] = []): Promise<K8sObject[]> {
  const r = await helm(["template", ...RELEASE, ...args]);
  if (r.code !== 0) throw new Error(`helm template ${args.join(" ")} failed: ${r.stderr}`);
  return parseAllDocuments(r.stdout)
    .map((d) => d.toJS() as K8sObject | null)
    .filter((o): o is K8sObject => o !== null);
}

function one<T extends K8sObject>(objects: K8sObject[], kind: string, name?: string): T {
  const found = objects.filter((o) => o.kind === kind && (!name || o.metadata.name === name));
  if (found.length !== 1)
    throw new Error(`expected one ${kind} ${name ?? ""}, found ${found.length}`);
  return found[0] as T;
}

/** Every optional object of the chart turned on. */
const ALL_ON = [
  "--set",
  "serviceMonitor.enabled=true",
  "--set",
  "podMonitor.enabled=true",
  "--set",
  "prometheusRule.enabled=true",
  "--set",
  "grafanaDashboard.enabled=true",
];

/**
 * Every request the operator makes, from its code (operator/*.ts; KubeClient's methods in
 * operator/kube.ts map to verbs: list -> list, watch -> watch, get -> get, create -> create,
 * replace -> update, apply and mergePatch -> patch, delete -> delete). The chart's rules must
 * grant exactly these: one more is a privilege nobody uses, one less a 403 in production.
 */
function neededRules(leaseName: string): Rule[] {
  const core = (g: string) => (g === "v1" ? "" : g.split("/")[0]!);
  return [
    // operator/operator.ts: the model Informer (operator/informer.ts: client.list, client.watch).
    { apiGroups: [GROUP], resources: [PLURAL], verbs: ["list", "watch"] },
    // operator/reconcile.ts writeStatus: client.mergePatch of the status subresource.
    { apiGroups: [GROUP], resources: [`${PLURAL}/status`], verbs: ["patch"] },
    // operator/builders.ts metadata(): owner references with blockOwnerDeletion, which the
    // OwnerReferencesPermissionEnforcement admission plugin allows only with update of the
    // owner's finalizers (no request of the operator's own).
    { apiGroups: [GROUP], resources: [`${PLURAL}/finalizers`], verbs: ["update"] },
    // Every owned kind (operator/builders.ts OWNED_KINDS): operator/operator.ts Informers (list,
    // watch); operator/reconcile.ts client.apply (server-side apply: patch, and create when the
    // object is new) and client.delete of objects the spec no longer asks for.
    ...OWNED_KINDS.map((k) => ({
      apiGroups: [core(k.apiVersion)],
      resources: [k.plural],
      verbs: ["list", "watch", "create", "patch", "delete"],
    })),
    // operator/bundle-source.ts: client.get of the ConfigMap holding spec.bundle.configMap.
    { apiGroups: [""], resources: ["configmaps"], verbs: ["get"] },
    // operator/events.ts EventRecorder.record: client.create of core/v1 Events.
    { apiGroups: [""], resources: ["events"], verbs: ["create"] },
    // operator/device-identity.ts exchangeDeviceToken: client.create of a TokenReview (its own
    // ClusterRole: TokenReviews are not namespaced) and client.get of the token's Pod.
    { apiGroups: ["authentication.k8s.io"], resources: ["tokenreviews"], verbs: ["create"] },
    { apiGroups: [""], resources: ["pods"], verbs: ["get"] },
    // operator/operator.ts: the Node Informer (device nodes of models with broker auth), in the
    // same cluster-wide ClusterRole.
    { apiGroups: [""], resources: ["nodes"], verbs: ["list", "watch"] },
    // operator/leader.ts attempt(): client.create of the Lease when it is missing (a create has
    // no name to limit it to).
    { apiGroups: ["coordination.k8s.io"], resources: ["leases"], verbs: ["create"] },
    // operator/leader.ts attempt(): client.get and client.replace (update) of the Lease;
    // release(): client.replace.
    {
      apiGroups: ["coordination.k8s.io"],
      resources: ["leases"],
      resourceNames: [leaseName],
      verbs: ["get", "update"],
    },
  ];
}

/** Rules as a sorted list of "group resource[/name] verb", so grouping does not matter. */
function flatten(rules: readonly Rule[]): string[] {
  const out = new Set<string>();
  for (const r of rules)
    for (const g of r.apiGroups)
      for (const res of r.resources)
        for (const v of r.verbs)
          for (const n of r.resourceNames ?? [""])
            out.add(`${g || "core"} ${res}${n ? `/${n}` : ""} ${v}`);
  return [...out].sort();
}

beforeAll(async () => {
  // A cold build takes minutes (about 140 s on 2 cores); later runs find the cached binary.
  const r = await run("bash", [join(REPO_ROOT, "scripts", "helm.sh")], 840_000);
  if (r.code !== 0) throw new Error(`scripts/helm.sh failed:\n${r.stderr}`);
  helmBin = r.stdout.trim().split("\n").pop()!;
}, 900_000);
afterAll(() => rmSync(helmHome, { recursive: true, force: true }));

describe("the chart's files", () => {
  it("installs the release of package.json, and crds/ byte for byte", () => {
    const chart = parseDocument(readFileSync(join(CHART, "Chart.yaml"), "utf8")).toJS();
    const pkg = JSON.parse(readFileSync(join(REPO_ROOT, "package.json"), "utf8"));
    expect(chart.apiVersion).toBe("v2");
    expect(chart.appVersion).toBe(pkg.version);
    const top = readdirSync(join(REPO_ROOT, "crds")).sort();
    expect(readdirSync(join(CHART, "crds")).sort()).toEqual(top);
    for (const f of top)
      expect(
        readFileSync(join(CHART, "crds", f)).equals(readFileSync(join(REPO_ROOT, "crds", f))),
        `charts/ddnn-fog/crds/${f} differs from crds/${f}: cp crds/${f} charts/ddnn-fog/crds/`,
      ).toBe(true);
  });

  it("comments every knob of values.yaml, and the schema knows exactly those knobs", () => {
    const doc = parseDocument(readFileSync(join(CHART, "values.yaml"), "utf8"));
    const uncommented: string[] = [];
    // A key is described by a comment right above it; a key without one must be a group whose
    // every key is described.
    const walk = (map: YAMLMap, path: string) => {
      map.items.forEach((pair, i) => {
        const key = `${path}${isScalar(pair.key) ? String(pair.key.value) : "?"}`;
        const above =
          (isScalar(pair.key) ? pair.key.commentBefore : undefined) ??
          (i === 0 ? map.commentBefore : undefined);
        if (above?.includes("-- ")) return;
        if (isMap(pair.value) && pair.value.items.length > 0) walk(pair.value, `${key}.`);
        else uncommented.push(key);
      });
    };
    walk(doc.contents as YAMLMap, "");
    expect(uncommented).toEqual([]);

    // Groups the schema closes (additionalProperties: false) list every key of values.yaml.
    type Schema = { properties?: Record<string, Schema>; additionalProperties?: unknown };
    const schema = JSON.parse(readFileSync(join(CHART, "values.schema.json"), "utf8")) as Schema;
    const values = doc.toJS() as Record<string, unknown>;
    const mismatches: string[] = [];
    const compare = (s: Schema, v: Record<string, unknown>, path: string) => {
      if (s.additionalProperties !== false || !s.properties) return;
      const inSchema = Object.keys(s.properties).filter((k) => !(path === "" && k === "global"));
      for (const k of inSchema) if (!(k in v)) mismatches.push(`${path}${k}: not in values.yaml`);
      for (const [k, sub] of Object.entries(s.properties))
        if (v[k] && typeof v[k] === "object" && !Array.isArray(v[k]))
          compare(sub, v[k] as Record<string, unknown>, `${path}${k}.`);
    };
    compare(schema, values, "");
    expect(mismatches).toEqual([]);
  });

  it("alerts and dashboard read only metrics the tiers and the operator expose", async () => {
    const sources = ["core/metrics.ts", "operator/metrics.ts"]
      .map((f) => readFileSync(join(REPO_ROOT, f), "utf8"))
      .join("\n");
    const known = new Set([...sources.matchAll(/name: "(ddnn_\w+)"/g)].map((m) => m[1]!));
    const histograms = new Set(
      [...sources.matchAll(/new Histogram\(\{\s*name: "(ddnn_\w+)"/g)].map((m) => m[1]!),
    );
    const dashboard = readFileSync(join(CHART, "dashboards", "ddnn-fog.json"), "utf8");
    const text = `${stringify(one(await template(ALL_ON), "PrometheusRule"))}\n${dashboard}`;
    // Recorded series (level:metric:operations) are named after a metric, not metrics themselves.
    const recorded = /\b[a-z_]+:[a-z_]+:[a-z_0-9]+\b/g;
    expect(text).toMatch(recorded);
    const used = new Set(
      [...text.replaceAll(recorded, "").matchAll(/\b(ddnn_[a-z_]+)\b/g)].map((m) => m[1]!),
    );
    const unknown = [...used].filter((m) => {
      if (known.has(m)) return false;
      const base = m.replace(/_(bucket|sum|count)$/, "");
      return !(base !== m && histograms.has(base));
    });
    expect(used.size).toBeGreaterThan(10);
    expect(unknown).toEqual([]);
    // Every metric the tiers and the operator expose is on the dashboard.
    expect([...known].filter((m) => !dashboard.includes(m))).toEqual([]);
  });
});

describe("PromQL", () => {
  it("every alert and dashboard query parses (promtool check rules)", async () => {
    // Debian's `prometheus` package ships promtool; scripts/setup.sh installs it.
    const promtool = requireProgram("promtool");
    const rule = one(await template(ALL_ON), "PrometheusRule") as K8sObject & {
      spec: { groups: unknown[] };
    };
    // The dashboard's queries as recording rules, with Grafana's variables filled in.
    const dashboard = JSON.parse(
      readFileSync(join(CHART, "dashboards", "ddnn-fog.json"), "utf8"),
    ) as { panels: { targets?: { expr: string }[] }[] };
    const queries = dashboard.panels
      .flatMap((p) => p.targets ?? [])
      .map((t, i) => ({
        record: `ddnn:dashboard_query_${i}`,
        expr: t.expr
          .replaceAll("$__rate_interval", "5m")
          .replaceAll("$namespace", ".*")
          .replaceAll("$model", ".*"),
      }));
    const dir = mkdtempSync(join(tmpdir(), "ddnn-promtool-"));
    try {
      const file = join(dir, "rules.yaml");
      writeFileSync(
        file,
        stringify({ groups: [...rule.spec.groups, { name: "dashboard", rules: queries }] }),
      );
      const r = await run(promtool, ["check", "rules", file]);
      expect(r.code, r.stdout + r.stderr).toBe(0);
      const rules = (rule.spec.groups as { rules: unknown[] }[]).reduce(
        (n, g) => n + g.rules.length,
        0,
      );
      // Every alert and recording rule of the chart, and every dashboard query.
      expect(rules).toBeGreaterThanOrEqual(19);
      expect(r.stdout).toContain(`SUCCESS: ${rules + queries.length} rules found`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("helm lint and helm template", () => {
  it("lint --strict passes with the defaults and with every optional object on", async () => {
    for (const args of [[], ALL_ON, ["--set", "operator.watchNamespace=fog"]]) {
      const r = await helm(["lint", "--strict", CHART, "--namespace", "ddnn-system", ...args]);
      expect(r.code, `${args.join(" ")}\n${r.stdout}${r.stderr}`).toBe(0);
      expect(r.stdout).toContain("0 chart(s) failed");
    }
  });

  it("renders the operator with its RBAC, metrics Service and disruption budget by default", async () => {
    const objects = await template();
    expect(objects.map((o) => `${o.kind}/${o.metadata.name}`).sort()).toEqual([
      "ClusterRole/ddnn-fog",
      "ClusterRole/ddnn-fog-device-identity",
      "ClusterRoleBinding/ddnn-fog",
      "ClusterRoleBinding/ddnn-fog-device-identity",
      "Deployment/ddnn-fog",
      "Lease/ddnn-fog",
      "PodDisruptionBudget/ddnn-fog",
      "Role/ddnn-fog-leader-election",
      "RoleBinding/ddnn-fog-leader-election",
      "Secret/ddnn-fog-broker-ca",
      "Secret/ddnn-fog-broker-key",
      "Secret/ddnn-fog-identity-tls",
      "Service/ddnn-fog-identity",
      "Service/ddnn-fog-metrics",
      "ServiceAccount/ddnn-fog",
    ]);
    for (const o of objects) {
      expect(o.metadata.labels?.["app.kubernetes.io/name"]).toBe("ddnn-fog");
      expect(o.metadata.labels?.["app.kubernetes.io/instance"]).toBe("ddnn-fog");
      expect(o.metadata.labels?.["app.kubernetes.io/managed-by"]).toBe("Helm");
      expect(o.metadata.labels?.["helm.sh/chart"]).toBe("ddnn-fog-0.1.0");
    }
    const d = one<Deployment>(objects, "Deployment");
    expect(d.spec.replicas).toBe(2);
    expect(d.spec.template.spec.serviceAccountName).toBe("ddnn-fog");
  });

  it("makes the managed brokers' CA and password key, which the operator reads; or uses those given", async () => {
    const objects = await template();
    const secret = (name: string) =>
      objects.find((o) => o.kind === "Secret" && o.metadata.name === name) as unknown as {
        type: string;
        data: Record<string, string>;
      };
    const text = (b64: string) => Buffer.from(b64, "base64").toString("utf8");
    const ca = secret("ddnn-fog-broker-ca");
    expect(ca.type).toBe("kubernetes.io/tls");
    const cert = new X509Certificate(text(ca.data["tls.crt"]!));
    expect(cert.ca).toBe(true);
    expect(cert.checkPrivateKey(createPrivateKey(text(ca.data["tls.key"]!)))).toBe(true);
    expect(text(secret("ddnn-fog-broker-key").data["broker-key"]!)).toMatch(/^[A-Za-z0-9]{64}$/);
    // `ddnn operator --broker-ca-dir` takes it as the chart mounts it, and issues under it.
    const dir = mkdtempSync(join(tmpdir(), "ddnn-chart-ca-"));
    writeFileSync(join(dir, "tls.crt"), text(ca.data["tls.crt"]!));
    writeFileSync(join(dir, "tls.key"), text(ca.data["tls.key"]!));
    const issuer = brokerCaOf(dir)!;
    const leaf = issueServerCertificate(issuer, ["demo-broker.fog.svc"], new Date(), 1);
    expect(new X509Certificate(leaf.certPem).verify(cert.publicKey)).toBe(true);
    const c = one<Deployment>(objects, "Deployment").spec.template.spec.containers[0]!;
    expect(c.env).toContainEqual({
      name: "DDNN_BROKER_KEY",
      valueFrom: {
        secretKeyRef: { name: "ddnn-fog-broker-key", key: "broker-key", optional: true },
      },
    });
    expect(c.env).toContainEqual({ name: "DDNN_BROKER_CA_DIR", value: "/etc/ddnn/broker-ca" });
    // Given Secrets: the chart makes none, and the operator reads those.
    const given = await template([
      "--set",
      "operator.brokerKeySecret=my-key,operator.brokerCASecret=my-ca",
    ]);
    expect(given.filter((o) => o.kind === "Secret").map((o) => o.metadata.name)).toEqual([
      "ddnn-fog-identity-tls",
    ]);
    const d = one<Deployment>(given, "Deployment").spec.template.spec;
    expect(d.containers[0]!.env).toContainEqual({
      name: "DDNN_BROKER_KEY",
      valueFrom: { secretKeyRef: { name: "my-key", key: "broker-key", optional: true } },
    });
    expect(d.volumes).toContainEqual({
      name: "broker-ca",
      secret: { secretName: "my-ca", optional: true },
    });
  });

  it("runs the operator restricted by default: non-root 65532, read-only root, no capabilities, RuntimeDefault seccomp", async () => {
    const d = one<Deployment>(await template(), "Deployment");
    expect(d.spec.template.spec.securityContext).toEqual({
      runAsNonRoot: true,
      runAsUser: 65532,
      runAsGroup: 65532,
      seccompProfile: { type: "RuntimeDefault" },
    });
    expect(d.spec.template.spec.containers[0]!.securityContext).toEqual({
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      runAsNonRoot: true,
      capabilities: { drop: ["ALL"] },
    });
  });

  it("probes the operator's /healthz and /readyz on its HTTP port, and passes every setting as a variable `ddnn operator` reads", async () => {
    const d = one<Deployment>(
      await template(["--set", "operator.httpPort=9090", "--set", "operator.watchNamespace=fog"]),
      "Deployment",
    );
    const c = d.spec.template.spec.containers[0]!;
    expect(c.args).toEqual(["operator"]);
    expect(c.ports).toEqual([
      { name: "http", containerPort: 9090, protocol: "TCP" },
      { name: "identity", containerPort: 8444, protocol: "TCP" },
    ]);
    expect(c.livenessProbe.httpGet).toEqual({ path: "/healthz", port: "http" });
    expect(c.readinessProbe.httpGet).toEqual({ path: "/readyz", port: "http" });
    const env = Object.fromEntries(c.env.map((e) => [e.name, e.value]));
    expect(env).toMatchObject({
      DDNN_HTTP_PORT: "9090",
      DDNN_WATCH_NAMESPACE: "fog",
      DDNN_IMAGE: "ddnn-fog:0.1.0",
      DDNN_LEADER_ELECT: "true",
      DDNN_LEASE_NAME: "ddnn-fog",
    });
    // POD_NAMESPACE is the operator's fallback for the Lease's namespace; every other variable
    // is one its --help names.
    const unread = c.env
      .map((e) => e.name)
      .filter(
        (n) =>
          n !== "POD_NAMESPACE" &&
          !operatorHelp.includes(`(${n})`) &&
          !operatorHelp.includes(`(env ${n} only)`),
      );
    expect(unread).toEqual([]);
  });

  it("renders ServiceMonitor, PodMonitor, PrometheusRule and the dashboard only when enabled", async () => {
    const optional = (objects: K8sObject[]) =>
      objects
        .filter((o) => MONITORING_KINDS.includes(o.kind) || o.kind === "ConfigMap")
        .map((o) => o.kind);
    expect(optional(await template())).toEqual([]);
    const each: [string, string][] = [
      ["serviceMonitor", "ServiceMonitor"],
      ["podMonitor", "PodMonitor"],
      ["prometheusRule", "PrometheusRule"],
      ["grafanaDashboard", "ConfigMap"],
    ];
    for (const [key, kind] of each)
      expect(optional(await template(["--set", `${key}.enabled=true`]))).toEqual([kind]);

    const all = await template([
      ...ALL_ON,
      "--set",
      "serviceMonitor.labels.release=prom",
      // --set leaves 0.25 a string (helm parses only integers); --set-json keeps it a number.
      "--set-json",
      "prometheusRule.degradedRatio=0.25",
      "--set-json",
      "prometheusRule.latencySloSeconds=0.5",
      "--set-json",
      "prometheusRule.workerUtilisation=0.75",
      "--set",
      "prometheusRule.devicesLookback=6h",
    ]);
    const dashboard = one(all, "ConfigMap") as K8sObject & { data: Record<string, string> };
    expect(dashboard.metadata.labels?.grafana_dashboard).toBe("1");
    expect(JSON.parse(dashboard.data["ddnn-fog.json"]!).uid).toBe("ddnn-fog");
    expect(one(all, "ServiceMonitor").metadata.labels?.release).toBe("prom");
    const rule = one(all, "PrometheusRule") as K8sObject & {
      spec: { groups: { rules: { alert?: string; record?: string; expr: string }[] }[] };
    };
    const rules = rule.spec.groups.flatMap((g) => g.rules);
    const alerts = Object.fromEntries(rules.flatMap((r) => (r.alert ? [[r.alert, r.expr]] : [])));
    expect(Object.keys(alerts).sort()).toEqual([
      "DDNNBrokerDisconnected",
      "DDNNDegradedAnswers",
      "DDNNDevicesMissing",
      "DDNNErrorAnswers",
      "DDNNLatencySLO",
      "DDNNOperatorAbsent",
      "DDNNOperatorNoLeader",
      "DDNNOperatorReconcileErrors",
      "DDNNOperatorSeveralLeaders",
      "DDNNOverloaded",
      "DDNNServerSaturated",
      "DDNNWorkerRestarts",
    ]);
    // Recording rules are the only other rules, each with a level:metric:operations name.
    for (const r of rules.filter((x) => !x.alert)) expect(r.record).toMatch(/^\w+:\w+:\w+$/);
    expect(alerts.DDNNDegradedAnswers).toContain("> 0.25");
    expect(alerts.DDNNLatencySLO).toContain("> 0.5");
    expect(alerts.DDNNServerSaturated).toContain("> 0.75");
    expect(alerts.DDNNDevicesMissing).toContain("[6h]");
    expect(alerts.DDNNOperatorNoLeader).toContain('namespace="ddnn-system"');
  });

  it("values.schema.json refuses wrong types and unknown keys with a message naming the key", async () => {
    const refused: [string[], string][] = [
      [["--set", "replicaCount=two"], "at '/replicaCount': got string, want integer"],
      [["--set", "image.tag=5"], "at '/image/tag': got number, want string"],
      [
        ["--set", "leaderElection.enabled=yes"],
        "at '/leaderElection/enabled': got string, want boolean",
      ],
      [["--set", "operator.workers=0"], "at '/operator/workers': minimum: got 0, want 1"],
      [["--set", "image.pullPolicy=Sometimes"], "at '/image/pullPolicy': value must be one of"],
      [["--set", "replicas=3"], "at '': additional properties 'replicas' not allowed"],
    ];
    for (const [args, message] of refused) {
      const r = await helm(["template", ...RELEASE, ...args]);
      expect(r.code, args.join(" ")).not.toBe(0);
      expect(r.stderr).toContain("values don't meet the specifications of the schema");
      expect(r.stderr).toContain(message);
    }
  });

  it("refuses settings that contradict each other, in one line naming the keys", async () => {
    const refused: [string[], string][] = [
      [
        ["--set", "leaderElection.enabled=false"],
        "replicaCount is 2 but leaderElection.enabled is false",
      ],
      [
        ["--set", "leaderElection.renewDeadlineMs=20000"],
        "leaderElection needs leaseDurationMs > renewDeadlineMs > retryPeriodMs (got 15000 > 20000 > 2000)",
      ],
      [
        ["--set", "serviceMonitor.enabled=true", "--set", "metrics.service.enabled=false"],
        "serviceMonitor.enabled needs metrics.service.enabled",
      ],
    ];
    for (const [args, message] of refused) {
      const r = await helm(["template", ...RELEASE, ...args]);
      expect(r.code, args.join(" ")).not.toBe(0);
      expect(r.stderr).toContain(message);
    }
    const single = await template([
      "--set",
      "leaderElection.enabled=false",
      "--set",
      "replicaCount=1",
    ]);
    expect(single.map((o) => o.kind)).not.toContain("PodDisruptionBudget");
    expect(single.filter((o) => o.kind === "Role")).toEqual([]);
    expect(single.filter((o) => o.kind === "Lease")).toEqual([]);
  });
});

describe("RBAC", () => {
  it("grants exactly the requests the operator makes, cluster-wide", async () => {
    const objects = await template();
    const role = one(objects, "ClusterRole", "ddnn-fog") as K8sObject & { rules: Rule[] };
    const review = one(objects, "ClusterRole", "ddnn-fog-device-identity") as K8sObject & {
      rules: Rule[];
    };
    const lease = one(objects, "Role") as K8sObject & { rules: Rule[] };
    expect(lease.metadata.namespace).toBe("ddnn-system");
    expect(flatten([...role.rules, ...review.rules, ...lease.rules])).toEqual(
      flatten(neededRules("ddnn-fog")),
    );
    // Secrets only as an owned kind (managed brokers with auth): never a get of a user's Secret.
    expect(flatten(role.rules).filter((r) => r.includes("secrets") && r.includes("get"))).toEqual(
      [],
    );
    // The Lease the Role names is the one the operator campaigns for, and the chart makes it (so
    // that helm uninstall removes it), without a holder.
    const env = one<Deployment>(objects, "Deployment").spec.template.spec.containers[0]!.env;
    expect(env.find((e) => e.name === "DDNN_LEASE_NAME")?.value).toBe("ddnn-fog");
    const made = one(objects, "Lease") as K8sObject & { spec?: unknown };
    expect(made.metadata).toMatchObject({ name: "ddnn-fog", namespace: "ddnn-system" });
    expect(made.spec).toBeUndefined();
  });

  it("with operator.watchNamespace, the same rules as a Role in that namespace", async () => {
    const objects = await template(["--set", "operator.watchNamespace=fog"]);
    // Only TokenReview create stays cluster-wide (TokenReviews have no namespace).
    const clusterWide = objects.filter((o) => o.kind.startsWith("ClusterRole"));
    expect(clusterWide.map((o) => `${o.kind} ${o.metadata.name}`).sort()).toEqual([
      "ClusterRole ddnn-fog-device-identity",
      "ClusterRoleBinding ddnn-fog-device-identity",
    ]);
    const review = one(objects, "ClusterRole", "ddnn-fog-device-identity") as K8sObject & {
      rules: Rule[];
    };
    const role = one(objects, "Role", "ddnn-fog") as K8sObject & { rules: Rule[] };
    const binding = one(objects, "RoleBinding", "ddnn-fog") as K8sObject & {
      roleRef: { kind: string };
      subjects: { name: string; namespace: string }[];
    };
    expect(role.metadata.namespace).toBe("fog");
    expect(binding.metadata.namespace).toBe("fog");
    expect(binding.roleRef.kind).toBe("Role");
    expect(binding.subjects).toEqual([
      { kind: "ServiceAccount", name: "ddnn-fog", namespace: "ddnn-system" },
    ]);
    const lease = one(objects, "Role", "ddnn-fog-leader-election") as K8sObject & {
      rules: Rule[];
    };
    expect(flatten([...role.rules, ...review.rules, ...lease.rules])).toEqual(
      flatten(neededRules("ddnn-fog")),
    );
  });

  it("the operator's code makes no kind of request the rules above do not account for", () => {
    // A new KubeClient call (say, client.replace of a Deployment) must come with its rule here.
    const dir = join(REPO_ROOT, "operator");
    const calls = new Set<string>();
    for (const f of readdirSync(dir).filter((n) => n.endsWith(".ts") && !n.endsWith(".test.ts"))) {
      const text = readFileSync(join(dir, f), "utf8");
      // close() only ends idle keep-alive connections.
      for (const m of text.matchAll(/\bclient\.(\w+)\s*(?:<[^>(]*>)?\(/g))
        if (m[1] !== "close") calls.add(`${f} ${m[1]}`);
    }
    expect([...calls].sort()).toEqual([
      "bundle-source.ts get",
      "device-identity.ts create",
      "device-identity.ts get",
      "events.ts create",
      "informer.ts list",
      "informer.ts watch",
      "leader.ts create",
      "leader.ts get",
      "leader.ts replace",
      "reconcile.ts apply",
      "reconcile.ts delete",
      "reconcile.ts mergePatch",
    ]);
  });
});

/** The plain manifests of `kubectl apply -f crds/ -f operator/rbac.yaml -f operator/deployment.yaml`. */
const PLAIN = ["ddnn-operator", "charts/ddnn-fog", "--namespace", "ddnn-system"];
const PLAIN_VALUES = ["--set", "fullnameOverride=ddnn-operator"];
const MANIFESTS: { file: string; args: string[]; about: string[] }[] = [
  {
    file: "operator/rbac.yaml",
    args: [
      ...PLAIN_VALUES,
      "--set",
      "createNamespace=true",
      "--show-only",
      "templates/namespace.yaml",
      "--show-only",
      "templates/serviceaccount.yaml",
      "--show-only",
      "templates/rbac.yaml",
    ],
    about: [
      "The namespace ddnn-system, the operator's ServiceAccount ddnn-operator and its least-privilege",
      "RBAC (test/operator runs the operator with exactly these rules). Apply with crds/ and",
      "operator/deployment.yaml.",
    ],
  },
  {
    file: "operator/deployment.yaml",
    args: [
      ...PLAIN_VALUES,
      "--show-only",
      "templates/deployment.yaml",
      "--show-only",
      "templates/service.yaml",
      "--show-only",
      "templates/poddisruptionbudget.yaml",
      "--show-only",
      "templates/lease.yaml",
    ],
    about: [
      "ddnn-operator itself: two replicas, one leader (Lease ddnn-system/ddnn-operator, made here so",
      "that deleting these objects deletes it too), its metrics Service and disruption budget. Apply",
      "after operator/rbac.yaml and crds/.",
    ],
  },
];

/** What operator/rbac.yaml or operator/deployment.yaml must hold: a header, then helm's output. */
function manifestHeader(m: (typeof MANIFESTS)[number]): string {
  const command = ["helm template", ...PLAIN, ...m.args]
    .join(" ")
    .replace(/ (--set|--show-only) /g, " \\\n#     $1 ");
  return [
    ...m.about.map((l) => `# ${l}`),
    "#",
    "# Rendered from the Helm chart charts/ddnn-fog, the one source of these objects: do not edit.",
    "# test/chart.test.ts fails when this file is not the chart's output; regenerate it with",
    "#   npx vitest run test/chart.test.ts -u",
    "# which writes this header and the output of (helm from `bash scripts/helm.sh`):",
    `#   ${command}`,
    "",
  ].join("\n");
}

describe("operator/rbac.yaml and operator/deployment.yaml", () => {
  for (const m of MANIFESTS)
    it(`${m.file} is the chart's output`, async () => {
      const r = await helm(["template", ...PLAIN, ...m.args]);
      expect(r.code, r.stderr).toBe(0);
      await expect(manifestHeader(m) + r.stdout).toMatchFileSnapshot(join(REPO_ROOT, m.file));
    });
});

describe("against a real kube-apiserver", () => {
  let cp: ControlPlane;
  let work = "";
  beforeAll(async () => {
    cp = await ControlPlane.start();
    work = mkdtempSync(join(tmpdir(), "ddnn-chart-"));
    // Pods of these namespaces must meet the "restricted" Pod Security Standard; a workload whose
    // template does not is answered with a warning (what a Deployment gets) by the API server.
    for (const ns of ["ddnn-system", "fog"]) {
      await cp.kubectlOk(["create", "namespace", ns]);
      await cp.kubectlOk([
        "label",
        "namespace",
        ns,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
      ]);
    }
  }, 180_000);
  afterAll(async () => {
    await cp?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  /** Server-side dry run of what the chart renders (CRDs included), minus the monitoring kinds. */
  async function dryRun(args: readonly string[]): Promise<Run> {
    const r = await helm(["template", ...RELEASE, "--include-crds", ...args]);
    expect(r.code, r.stderr).toBe(0);
    const docs = parseAllDocuments(r.stdout)
      .map((d) => d.toJS() as K8sObject | null)
      .filter((o): o is K8sObject => o !== null && !MONITORING_KINDS.includes(o.kind));
    const file = join(work, `rendered-${Math.random().toString(36).slice(2)}.yaml`);
    writeFileSync(file, docs.map((d) => stringify(d)).join("---\n"));
    return cp.kubectl(["apply", "--server-side", "--dry-run=server", "-f", file]);
  }

  it("accepts everything the chart renders, and the Pods meet Pod Security 'restricted'", async () => {
    for (const args of [ALL_ON, [...ALL_ON, "--set", "operator.watchNamespace=fog"]]) {
      const r = await dryRun(args);
      expect(r.code, `${args.join(" ")}\n${r.stderr}`).toBe(0);
      expect(r.stdout).toContain("deployment.apps/ddnn-fog serverside-applied (server dry run)");
      expect(r.stdout).toContain(
        "configmap/ddnn-fog-dashboard serverside-applied (server dry run)",
      );
      expect(r.stdout).toContain(
        "customresourcedefinition.apiextensions.k8s.io/ddnnmodels.fog.ddnn.io serverside-applied (server dry run)",
      );
      expect(r.stderr).not.toContain("would violate PodSecurity");
    }
  });

  it("(the Pod Security check above does catch a container that is not restricted)", async () => {
    const r = await dryRun(["--set", "securityContext.allowPrivilegeEscalation=true"]);
    expect(r.stderr).toContain('would violate PodSecurity "restricted:latest"');
    expect(r.stderr).toContain("allowPrivilegeEscalation != false");
  });

  it("kubectl apply -f operator/rbac.yaml gives the operator's identity exactly what it needs", async () => {
    await cp.kubectlOk(["apply", "-f", join(REPO_ROOT, "operator", "rbac.yaml")]);
    const r = await cp.kubectl([
      "apply",
      "--dry-run=server",
      "-f",
      join(REPO_ROOT, "operator", "deployment.yaml"),
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).not.toContain("would violate PodSecurity");

    // SubjectAccessReviews for the operator's ServiceAccount: every needed request allowed, in
    // any namespace for the models and owned kinds, in ddnn-system only for the Lease.
    type Check = {
      verb: string;
      group: string;
      resource: string;
      sub?: string;
      ns: string;
      name?: string;
    };
    const allowed: Check[] = [];
    for (const rule of neededRules("ddnn-operator"))
      for (const res of rule.resources)
        for (const verb of rule.verbs) {
          const [resource, sub] = res.split("/") as [string, string | undefined];
          const ns = resource === "leases" ? "ddnn-system" : "fog";
          const name = rule.resourceNames?.[0];
          allowed.push({
            verb,
            group: rule.apiGroups[0]!,
            resource,
            ns,
            ...(sub ? { sub } : {}),
            ...(name ? { name } : {}),
          });
        }
    const denied: Check[] = [
      // Listing the operator's own Secrets (by label) is granted; reading a Secret by name is not.
      { verb: "get", group: "", resource: "secrets", ns: "fog" },
      { verb: "get", group: GROUP, resource: PLURAL, ns: "fog" },
      { verb: "update", group: GROUP, resource: PLURAL, ns: "fog" },
      { verb: "update", group: GROUP, resource: PLURAL, sub: "status", ns: "fog" },
      { verb: "update", group: "apps", resource: "deployments", ns: "fog" },
      // Pods: get by name only (a device agent's token's Pod), never a list or a change.
      { verb: "list", group: "", resource: "pods", ns: "fog" },
      { verb: "update", group: "", resource: "pods", ns: "fog" },
      { verb: "create", group: "coordination.k8s.io", resource: "leases", ns: "fog" },
      {
        verb: "update",
        group: "coordination.k8s.io",
        resource: "leases",
        ns: "ddnn-system",
        name: "someone-else",
      },
    ];
    const reviews = [...allowed, ...denied].map((c) => ({
      apiVersion: "authorization.k8s.io/v1",
      kind: "SubjectAccessReview",
      spec: {
        user: OPERATOR_USER,
        groups: OPERATOR_GROUPS,
        resourceAttributes: {
          verb: c.verb,
          group: c.group,
          resource: c.resource,
          namespace: c.ns,
          ...(c.sub ? { subresource: c.sub } : {}),
          ...(c.name ? { name: c.name } : {}),
        },
      },
    }));
    // kubectl prints each created object of the List in turn (YAML documents).
    const out = await cp.kubectlOk(["create", "-o", "yaml", "-f", "-"], {
      input: JSON.stringify({ apiVersion: "v1", kind: "List", items: reviews }),
    });
    const answers = parseAllDocuments(out)
      .map((d) => d.toJS() as { status?: { allowed?: boolean } } | null)
      .filter((o) => o !== null)
      .map((o) => o.status?.allowed === true);
    const show = (c: Check) =>
      `${c.verb} ${c.group || "core"}/${c.resource}${c.sub ? `/${c.sub}` : ""}${c.name ? ` ${c.name}` : ""} in ${c.ns}`;
    const wrong = [...allowed, ...denied]
      .map((c, i) => ({ c, want: i < allowed.length, got: answers[i] }))
      .filter((x) => x.want !== x.got)
      .map((x) => `${show(x.c)}: ${x.got ? "allowed" : "denied"}`);
    expect(answers).toHaveLength(allowed.length + denied.length);
    expect(wrong).toEqual([]);
  });

  it("helm install puts in the CRD and the operator, upgrade changes it, uninstall removes all but the CRD", async () => {
    const kube = { KUBECONFIG: cp.kubeconfigPath("admin") };
    const ns = ["--namespace", "ddnn-helm"];
    await cp.kubectlOk(["create", "namespace", "ddnn-helm"]);
    await cp.kubectlOk([
      "label",
      "namespace",
      "ddnn-helm",
      "pod-security.kubernetes.io/warn=restricted",
    ]);
    // The monitoring kinds need the Prometheus Operator's CRDs, which this API server lacks.
    const installed = await helm(
      ["install", "ddnn-fog", CHART, ...ns, "--set", "grafanaDashboard.enabled=true"],
      kube,
    );
    expect(installed.code, installed.stderr).toBe(0);
    expect(installed.stderr).not.toContain("would violate PodSecurity");
    expect(installed.stdout).toContain("STATUS: deployed");
    expect(installed.stdout).toContain("kubectl -n ddnn-helm rollout status deployment/ddnn-fog");
    await cp.kubectlOk(["wait", "--for=condition=Established", "crd/ddnnmodels.fog.ddnn.io"]);
    const replicas = () =>
      cp.kubectlOk(["get", "deployment", "ddnn-fog", ...ns, "-o", "jsonpath={.spec.replicas}"]);
    expect(await replicas()).toBe("2");

    // A newer CRD goes in as docs/helm.md says (helm upgrade leaves CRDs alone): here the same one
    // with another label value, a field helm's field manager owns.
    const newer = join(work, "crds");
    mkdirSync(newer);
    const crd = readFileSync(join(CHART, "crds", "fog.ddnn.io_ddnnmodels.yaml"), "utf8");
    expect(crd).toContain("app.kubernetes.io/part-of: ddnn-fog\n");
    writeFileSync(
      join(newer, "fog.ddnn.io_ddnnmodels.yaml"),
      crd.replace(
        "app.kubernetes.io/part-of: ddnn-fog\n",
        "app.kubernetes.io/part-of: ddnn-fog-next\n",
      ),
    );
    await cp.kubectlOk(["apply", "--server-side", "--force-conflicts", "-f", newer]);
    expect(
      await cp.kubectlOk([
        "get",
        "crd",
        "ddnnmodels.fog.ddnn.io",
        "-o",
        "jsonpath={.metadata.labels.app\\.kubernetes\\.io/part-of}",
      ]),
    ).toBe("ddnn-fog-next");

    const upgraded = await helm(
      ["upgrade", "ddnn-fog", CHART, ...ns, "--reuse-values", "--set", "replicaCount=3"],
      kube,
    );
    expect(upgraded.code, upgraded.stderr).toBe(0);
    expect(await replicas()).toBe("3");

    const removed = await helm(["uninstall", "ddnn-fog", ...ns, "--wait"], kube);
    expect(removed.code, removed.stderr).toBe(0);
    const left = await cp.kubectlOk([
      "get",
      "deployments,services,serviceaccounts,configmaps,roles,rolebindings,poddisruptionbudgets",
      ...ns,
      "-l",
      "app.kubernetes.io/instance=ddnn-fog",
      "-o",
      "name",
    ]);
    const leftCluster = await cp.kubectlOk([
      "get",
      "clusterroles,clusterrolebindings",
      "-l",
      "app.kubernetes.io/instance=ddnn-fog",
      "-o",
      "name",
    ]);
    expect(left + leftCluster).toBe("");
    // The CRD stays (and with it every DDNNModel): docs/helm.md gives the command that removes it.
    expect(await cp.kubectlOk(["get", "crd", "ddnnmodels.fog.ddnn.io", "-o", "name"])).toBe(
      "customresourcedefinition.apiextensions.k8s.io/ddnnmodels.fog.ddnn.io\n",
    );
  });
});
