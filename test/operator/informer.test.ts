/**
 * The watch cache against a real kube-apiserver: it resumes a watch the server closes, cuts and
 * resumes one that goes silent, relists after 410 Gone, and backs off while the API errors.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Informer, type InformerEvent } from "../../operator/informer.js";
import {
  KubeClient,
  KubeError,
  type KubeObject,
  type Resource,
  type WatchEvent,
} from "../../operator/kube.js";
import { ControlPlane } from "../cluster/control-plane.js";
import { sleep, waitFor } from "./harness.js";

let cp: ControlPlane;
let admin: KubeClient;
const stops: AbortController[] = [];

beforeAll(async () => {
  cp = await ControlPlane.start();
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

  it("relists when the API server answers 410 Gone", async () => {
    // A real 410 needs etcd to compact the resourceVersion away, and the API server's watch
    // cache still answers an old resourceVersion with the current objects, so the first watch
    // fails the way a 410 ERROR event makes it fail; list and later watches are real.
    class GoneOnce extends KubeClient {
      gone = true;
      override watch<T = KubeObject>(
        r: Resource,
        query: Record<string, string | number | boolean | undefined>,
        onEvent: (event: WatchEvent<T>) => void,
        signal: AbortSignal,
      ): Promise<void> {
        if (this.gone) {
          this.gone = false;
          return Promise.reject(new KubeError(410, "Expired", "too old resource version"));
        }
        return super.watch<T>(r, query, onEvent, signal);
      }
    }
    const client = new GoneOnce(cp.kubeConfig("admin"), "informer-test");
    const lists: number[] = [];
    const list = client.list.bind(client);
    client.list = (async (...a: Parameters<KubeClient["list"]>) => {
      lists.push(Date.now());
      return list(...a);
    }) as KubeClient["list"];
    const { inf, events, restarts, stop } = informer(client);
    await inf.synced();
    await waitFor(
      "a relist after 410",
      () => restarts.includes("gone") && lists.length === 2,
      10_000,
    );
    await configMap("after-gone");
    await waitFor("the event after the relist", () => events.includes("ADDED after-gone"));
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
