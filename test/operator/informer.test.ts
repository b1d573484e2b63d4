/**
 * The watch cache against a real kube-apiserver: it resumes a watch the server closes, cuts and
 * resumes one that goes silent, relists after the 410 Gone of a compacted etcd, treats
 * resourceVersions as opaque, and backs off while the API errors.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Informer, type InformerEvent } from "../../operator/informer.js";
import { KubeClient, KubeError, type KubeObject } from "../../operator/kube.js";
import { ControlPlane } from "../cluster/control-plane.js";
import { kubeConfigVia, StallingProxy, sleep, waitFor } from "./harness.js";

let cp: ControlPlane;
let admin: KubeClient;
const stops: AbortController[] = [];

beforeAll(async () => {
  // The API server's watch cache serves watches from memory and answers 410 only once its own
  // history (at least 75 s of events) has moved on; with it off for podtemplates, their watches
  // are served by etcd, where a compaction (the API server runs one every 5 minutes) removes the
  // history a stale resourceVersion needs: the 410 a cache-less watch gets in a real cluster.
  cp = await ControlPlane.start({ apiserverArgs: ["--watch-cache-sizes=podtemplates#0"] });
  admin = new KubeClient(cp.kubeConfig("admin"), "informer-test");
  await cp.kubectlOk(["create", "namespace", "watch"]);
}, 180_000);

afterAll(async () => {
  for (const s of stops) s.abort();
  await cp?.stop();
});

function configMap(name: string) {
  return admin.create(
    { apiVersion: "v1", plural: "configmaps", namespace: "watch" },
    { metadata: { name, labels: { informer: "test" } }, data: { k: "v" } },
  );
}

function informer(
  client: KubeClient,
  extra: Partial<ConstructorParameters<typeof Informer>[1]> = {},
) {
  const events: string[] = [];
  const restarts: string[] = [];
  const inf = new Informer(client, {
    resource: { apiVersion: "v1", plural: "configmaps", namespace: "watch" },
    labelSelector: "informer=test",
    onRestart: (r) => restarts.push(r),
    ...extra,
  }).on((e: InformerEvent, o: KubeObject) => events.push(`${e} ${o.metadata?.name}`));
  const stop = new AbortController();
  stops.push(stop);
  inf.start(stop.signal);
  return { inf, events, restarts, stop };
}

describe("Informer", () => {
  it("lists, then follows changes; resumes a watch the server closes", async () => {
    await configMap("before");
    const { inf, events, restarts, stop } = informer(admin, { watchTimeoutSeconds: 1 });
    await inf.synced();
    expect(inf.get("watch", "before")?.data).toEqual({ k: "v" });
    await waitFor("the server to close the watch", () => restarts.includes("closed"), 10_000);
    await configMap("after-close");
    await waitFor("the event after the resumed watch", () => events.includes("ADDED after-close"));
    await admin.delete({
      apiVersion: "v1",
      plural: "configmaps",
      namespace: "watch",
      name: "before",
    });
    await waitFor("the delete", () => events.includes("DELETED before"));
    expect(inf.get("watch", "before")).toBeUndefined();
    stop.abort();
    await inf.stopped();
  });

  it("cuts a watch that goes silent and resumes it", async () => {
    const { inf, events, restarts, stop } = informer(admin, { silenceMs: 700 });
    await inf.synced();
    await waitFor("a silent watch to be cut", () => restarts.includes("silent"), 5_000);
    await configMap("after-silence");
    await waitFor("the event after the cut", () => events.includes("ADDED after-silence"));
    stop.abort();
    await inf.stopped();
  });

  it("relists after the real 410 Gone of a compacted etcd, and ends with the server's objects", async () => {
    const resource = { apiVersion: "v1", plural: "podtemplates", namespace: "watch" };
    const labelSelector = "informer=compact";
    const template = (name: string) => ({
      metadata: { name, labels: { informer: "compact" } },
      template: { spec: { containers: [{ name: "c", image: "example.invalid/c" }] } },
    });
    for (let i = 0; i < 5; i++) await admin.create(resource, template(`old-${i}`));
    const proxy = new StallingProxy(new URL(cp.server));
    const client = new KubeClient(
      kubeConfigVia(cp, "admin", await proxy.start()),
      "informer-test (compaction)",
    );
    const events: string[] = [];
    const restarts: string[] = [];
    const inf = new Informer(client, {
      resource,
      labelSelector,
      silenceMs: 1000,
      onRestart: (r) => restarts.push(r),
    }).on((e: InformerEvent, o: KubeObject) => events.push(`${e} ${o.metadata?.name}`));
    const stop = new AbortController();
    stops.push(stop);
    let answer: ((o: KubeObject) => void) | undefined;
    try {
      inf.start(stop.signal);
      await inf.synced();
      await admin.create(resource, template("live"));
      await waitFor("the watch to deliver", () => events.includes("ADDED live"));

      // From here the informer's watch hears nothing, and the watches it resumes from its last
      // resourceVersion (each silent one is cut after 1 s) do not reach the API server.
      proxy.stall();
      const written = performance.now();
      for (let i = 0; i < 40; i++) await admin.create(resource, template(`new-${i}`));
      for (let i = 0; i < 5; i++) await admin.delete({ ...resource, name: `old-${i}` });
      await admin.mergePatch(
        { ...resource, name: "live" },
        { metadata: { annotations: { changed: "yes" } } },
      );
      // A write of ours whose answer only comes back after the relist: the list saw a newer
      // version than that answer, which must not replace it.
      const raced = inf.write("watch", "raced", () => new Promise<KubeObject>((r) => (answer = r)));
      const first = await admin.create<KubeObject>(resource, template("raced"));
      await admin.mergePatch(
        { ...resource, name: "raced" },
        { metadata: { annotations: { version: "2" } } },
      );
      const writeMs = performance.now() - written;
      const writes = 40 + 5 + 1 + 2;
      const revision = await cp.compactEtcd();

      // Let the informer give up on the watch it had (the one that would bring every event).
      const cutsBefore = restarts.length;
      await waitFor("a silent watch to be cut", () => restarts.length > cutsBefore, 5_000, 20);

      proxy.release();
      await waitFor("a relist after 410 Gone", () => restarts.includes("gone"), 15_000);
      const onServer = (await admin.list(resource, { labelSelector })).items
        .map((o) => o.metadata?.name)
        .sort();
      await waitFor("the cache to hold what the server holds", () => {
        const cached = inf
          .list()
          .map((o) => o.metadata?.name)
          .sort();
        return JSON.stringify(cached) === JSON.stringify(onServer);
      });
      expect(onServer).toHaveLength(42);
      // The watch failed with the in-stream 410 (Expired), not with a broken connection.
      expect(restarts.filter((r) => r === "error")).toEqual([]);
      expect(events).toEqual(
        expect.arrayContaining([
          ...Array.from({ length: 5 }, (_, i) => `DELETED old-${i}`),
          ...Array.from({ length: 40 }, (_, i) => `ADDED new-${i}`),
          "MODIFIED live",
          "ADDED raced",
        ]),
      );
      expect(inf.get("watch", "live")?.metadata?.annotations).toEqual({ changed: "yes" });

      answer!(first);
      await raced;
      expect(inf.get("watch", "raced")?.metadata?.annotations).toEqual({ version: "2" });
      process.stdout.write(
        `compaction: ${restarts.filter((r) => r === "silent").length} silent watches cut while stalled, ${writes} writes in ${writeMs.toFixed(0)} ms, compacted at revision ${revision}\n`,
      );
    } finally {
      answer?.({});
      stop.abort();
      await inf.stopped();
      client.close();
      await proxy.stop();
    }
  });

  it("follows the watch whatever a resourceVersion's number says (they are opaque)", async () => {
    const { inf, events, stop } = informer(admin);
    await inf.synced();
    const created = await configMap("opaque");
    await waitFor("the watch event", () => inf.get("watch", "opaque"));
    // Our copy of a write carries a resourceVersion whose number is larger than the ones the
    // server hands out next (as after etcd is restored from a backup, or from an aggregated API
    // server numbering its own way).
    await inf.write("watch", "opaque", async () => ({
      ...created,
      metadata: { ...created.metadata, resourceVersion: "999999999999" },
    }));
    expect(inf.get("watch", "opaque")?.metadata?.resourceVersion).toBe("999999999999");
    const changed = await admin.mergePatch<KubeObject>(
      { apiVersion: "v1", plural: "configmaps", namespace: "watch", name: "opaque" },
      { data: { k: "changed" } },
    );
    await waitFor("the change to reach the cache", () => events.includes("MODIFIED opaque"), 5_000);
    expect(inf.get("watch", "opaque")?.data).toEqual({ k: "changed" });
    expect(inf.get("watch", "opaque")?.metadata?.resourceVersion).toBe(
      changed.metadata?.resourceVersion,
    );
    stop.abort();
    await inf.stopped();
  });

  it("keeps a write's answer until the watch brings it, but never over a newer version", async () => {
    const { inf, stop } = informer(admin);
    await inf.synced();
    const cm = { apiVersion: "v1", plural: "configmaps", namespace: "watch", name: "mine" };
    await configMap("mine");
    await waitFor("the watch event", () => inf.get("watch", "mine"));
    const ours = await inf.write("watch", "mine", () =>
      admin.mergePatch<KubeObject>(cm, { data: { k: "ours" } }),
    );
    expect(inf.get("watch", "mine")?.metadata?.resourceVersion).toBe(
      ours.metadata?.resourceVersion,
    );
    // An answer that comes back after the watch already brought what followed it.
    await inf.write("watch", "mine", async () => {
      const first = await admin.mergePatch<KubeObject>(cm, { data: { k: "first" } });
      await admin.mergePatch(cm, { data: { k: "second" } });
      const value = () => (inf.get("watch", "mine")?.data as { k?: string } | undefined)?.k;
      await waitFor("the second version", () => value() === "second");
      return first;
    });
    expect(inf.get("watch", "mine")?.data).toEqual({ k: "second" });
    stop.abort();
    await inf.stopped();
  });

  it("backs off while the API errors, and stops when aborted", async () => {
    const errors: { err: unknown; wait: number }[] = [];
    const inf = new Informer(admin, {
      resource: { apiVersion: "example.com/v1", plural: "widgets" },
      backoffInitialMs: 50,
      onError: (err, wait) => errors.push({ err, wait }),
    });
    const stop = new AbortController();
    inf.start(stop.signal);
    await waitFor("three failed lists", () => errors.length >= 3, 10_000);
    stop.abort();
    await inf.stopped();
    expect(errors[0]!.err).toBeInstanceOf(KubeError);
    expect((errors[0]!.err as KubeError).status).toBe(404);
    expect(errors[2]!.wait).toBeGreaterThan(errors[0]!.wait);
    expect(inf.hasSynced).toBe(false);
    const n = errors.length;
    await sleep(300);
    expect(errors.length).toBe(n);
  });
});
