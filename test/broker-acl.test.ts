import { createHash, randomBytes } from "node:crypto";
import { chmodSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Writable } from "node:stream";
import type { V1Secret } from "@kubernetes/client-node";
import { connectAsync, type IClientOptions, type MqttClient } from "mqtt";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectBroker } from "../core/runtime/mqtt.js";
import { decodeResult, encodeFrame } from "../core/wire/frame.js";
import { encodeTensor } from "../core/wire/tensor.js";
import { gatewaySchema, type RunningGateway, startGateway } from "../gateway/gateway.js";
import {
  type BuildInput,
  brokerCredentialsSecretName,
  buildOwnedObjects,
} from "../operator/builders.js";
import type { DDNNModelSpecInput } from "../operator/spec.js";
import { serverSchema } from "../server/config.js";
import { type RunningServer, startServer } from "../server/server.js";
import { buildInput } from "./operator/model-fixtures.js";
import { testBrokerCa } from "./support/broker-ca.js";
import { tempDir } from "./support/bundle-fixture.js";
import { waitFor } from "./support/fog.js";
import { decoded, ManagedBroker } from "./support/managed-broker.js";
import { freePort, mosquittoBinary } from "./support/mosquitto.js";
import { connectOutcome } from "./support/mqtt-outcome.js";
import { root } from "./support/run.js";
import { makeTestPki, type TestPki } from "./support/tls.js";

const BUNDLE = join(root, "models", "fashion-3tier");
const bundleJson = readFileSync(join(BUNDLE, "ddnn.json"));
const DIGEST = createHash("sha256").update(bundleJson).digest("hex");
const manifest = JSON.parse(bundleJson.toString("utf8")) as {
  name: string;
  version: string;
  stages: { name: string; exit?: unknown }[];
  input: { shape: number[] };
};
const facts = {
  digest: DIGEST,
  name: manifest.name,
  version: manifest.version,
  stages: manifest.stages.map((s) => s.name),
  exits: manifest.stages.filter((s) => s.exit !== undefined).map((s) => s.name),
};

/** Cameras outside the cluster send images to the gateway's first stage; servers finish. */
const spec = (devices: string[]): DDNNModelSpecInput => ({
  bundle: { url: "http://models.fog.svc/fashion-3tier.tar.gz", sha256: DIGEST },
  placement: { device: "edge", edge: "edge", server: "server" },
  // Every request goes on to the server: the whole path crosses the ACLs.
  exits: { device: 0, edge: 0 },
  broker: {
    managed: { tls: { secretName: "demo-broker-tls" }, auth: { devices } },
  },
});

const build = (
  name: string,
  devices: string[],
  key: Uint8Array,
  modelSpec: DDNNModelSpecInput = spec(devices),
): BuildInput => buildInput(modelSpec, facts, { brokerKey: key, brokerCa: testBrokerCa }, name);

const available = mosquittoBinary !== undefined;

describe.skipIf(!available)(
  "managed broker with auth and TLS (real Mosquitto, operator's config)",
  () => {
    const key = randomBytes(32);
    const input = build("demo", ["cam-1", "cam-2"], key);
    const objects = buildOwnedObjects(input);
    const credentials = decoded(
      objects.find(
        (o) => o.metadata?.name === brokerCredentialsSecretName(input.model),
      ) as V1Secret,
    );
    const cred = (who: string) => ({
      username: credentials[`${who}.username`]!,
      password: credentials[`${who}.password`]!,
    });
    let pki: TestPki;
    let broker: ManagedBroker;
    let url: string;
    const clients: MqttClient[] = [];

    beforeAll(async () => {
      pki = makeTestPki();
      const dir = tempDir("ddnn-managed-broker-");
      chmodSync(dir, 0o755);
      broker = new ManagedBroker(dir, await freePort());
      url = `mqtts://127.0.0.1:${broker.port}`;
      await broker.start(broker.mount(objects, pki));
    });
    afterAll(async () => {
      await Promise.all(clients.map((c) => c.endAsync(true)));
      await broker?.stop();
    });

    const options = (extra: IClientOptions = {}): IClientOptions => ({
      protocolVersion: 4,
      reconnectPeriod: 0,
      connectTimeout: 5_000,
      ca: readFileSync(pki.caFile, "utf8"),
      ...extra,
    });
    async function client(who: string | undefined): Promise<MqttClient> {
      const c = await connectAsync(url, options(who ? cred(who) : {}));
      clients.push(c);
      return c;
    }
    const refusal = (extra: IClientOptions, target = url) => connectOutcome(target, options(extra));
    /** Messages `c` receives on `filter` within `ms` (after subscribing; the SUBACK codes too). */
    async function collect(c: MqttClient, filter: string) {
      const got: { topic: string; payload: Buffer }[] = [];
      c.on("message", (topic, payload) => {
        if (topic === filter.replace(/^\$share\/[^/]+\//, "") || filter === "ddnn/#")
          got.push({ topic, payload });
      });
      const granted = await c.subscribeAsync(filter, { qos: 1 });
      return { got, qos: granted.map((g) => g.qos) };
    }
    const settle = () => new Promise((r) => setTimeout(r, 300));

    it("refuses an anonymous client, a wrong password, and plaintext on the TLS listener", async () => {
      expect(await refusal({})).toMatch(/Not authorized/);
      expect(await refusal({ username: cred("device.cam-1").username, password: "guess" })).toMatch(
        /Not authorized|Bad User Name or Password/,
      );
      expect(await refusal({ ...cred("device.cam-1") }, url.replace("mqtts", "mqtt"))).not.toBe(
        "connected",
      );
      expect(
        await refusal({ ...cred("device.cam-1"), ca: readFileSync(pki.otherCaFile, "utf8") }),
      ).toMatch(/certificate/);
    });

    it("ddnn profile's identity sends as a device does, under any device id, and reads no request nor forges a reply", async () => {
      const profile = await client("profile");
      const edge = await client("edge");
      const server = await client("server");
      const replies = await collect(profile, "ddnn/fog/demo/reply/profile-7");
      const requests = await collect(profile, "ddnn/fog/demo/edge/req");
      const edgeGets = await collect(edge, "$share/demo-device/ddnn/fog/demo/device/req");
      const camReplies = await collect(server, "ddnn/fog/demo/reply/cam-1");
      await profile.publishAsync("ddnn/fog/demo/device/req", "profile image", { qos: 1 });
      await server.publishAsync("ddnn/fog/demo/reply/profile-7", "for profile-7", { qos: 1 });
      await edge.publishAsync("ddnn/fog/demo/edge/req", "features", { qos: 1 });
      await profile.publishAsync("ddnn/fog/demo/reply/cam-1", "forged by profile", { qos: 1 });
      await settle();
      expect(edgeGets.got.map((m) => m.payload.toString())).toEqual(["profile image"]);
      expect(replies.got.map((m) => m.payload.toString())).toEqual(["for profile-7"]);
      expect(requests.got).toEqual([]);
      expect(camReplies.got).toEqual([]);
      // Out of the share group again: the next test's gateway gets every request of the group.
      await edge.unsubscribeAsync("$share/demo-device/ddnn/fog/demo/device/req");
    });

    it("a device cannot read another device's replies, nor any request topic, nor publish a reply", async () => {
      const cam1 = await client("device.cam-1");
      const cam2 = await client("device.cam-2");
      const edge = await client("edge");
      const server = await client("server");
      const other = await collect(cam1, "ddnn/fog/demo/reply/cam-2");
      const own = await collect(cam2, "ddnn/fog/demo/reply/cam-2");
      const requests = await collect(cam1, "ddnn/fog/demo/device/req");
      const wildcard = await collect(cam1, "ddnn/#");
      const edgeGets = await collect(edge, "$share/demo-device/ddnn/fog/demo/device/req");
      // The server answers cam-2; cam-2 sends a request; cam-1 forges a reply to cam-2.
      await server.publishAsync("ddnn/fog/demo/reply/cam-2", "for cam-2", { qos: 1 });
      await cam2.publishAsync("ddnn/fog/demo/device/req", "cam-2's image", { qos: 1 });
      await cam1.publishAsync("ddnn/fog/demo/reply/cam-2", "forged by cam-1", { qos: 1 });
      await settle();
      expect(own.got.map((m) => m.payload.toString())).toEqual(["for cam-2"]);
      expect(edgeGets.got.map((m) => m.payload.toString())).toEqual(["cam-2's image"]);
      expect(other.got).toEqual([]);
      expect(requests.got).toEqual([]);
      expect(wildcard.got).toEqual([]);
      // Mosquitto 2.0 grants the SUBACK and checks the ACL on every delivery: nothing arrives.
    });

    it("the gateway reads its stage's requests and sends on; the server reads only its own stage's", async () => {
      const edge = await client("edge");
      const server = await client("server");
      const cam1 = await client("device.cam-1");
      const serverGets = await collect(server, "$share/demo-server/ddnn/fog/demo/server/req");
      const serverSteals = await collect(server, "ddnn/fog/demo/device/req");
      const reply = await collect(cam1, "ddnn/fog/demo/reply/cam-1");
      await edge.publishAsync("ddnn/fog/demo/server/req", "features", { qos: 1 });
      await cam1.publishAsync("ddnn/fog/demo/device/req", "image", { qos: 1 });
      await edge.publishAsync("ddnn/fog/demo/reply/cam-1", "edge's answer", { qos: 1 });
      await settle();
      expect(serverGets.got.map((m) => m.payload.toString())).toEqual(["features"]);
      expect(serverSteals.got).toEqual([]);
      expect(reply.got.map((m) => m.payload.toString())).toEqual(["edge's answer"]);
    });

    it("the passwords are only in the credentials Secret: no Pod spec, ConfigMap or the broker's own Secret holds one", () => {
      const passwords = Object.entries(credentials)
        .filter(([k]) => k.endsWith(".password"))
        .map(([, v]) => v);
      // server, edge, profile, cam-1, cam-2
      expect(passwords).toHaveLength(5);
      for (const o of objects) {
        if (o.metadata?.name === brokerCredentialsSecretName(input.model)) continue;
        const text = JSON.stringify(o);
        const data = o.kind === "Secret" ? JSON.stringify(decoded(o as V1Secret)) : "";
        for (const p of passwords) {
          expect(text, `${o.kind}/${o.metadata?.name}`).not.toContain(p);
          expect(data, `${o.kind}/${o.metadata?.name}`).not.toContain(p);
        }
      }
    });

    it("a new operator key rotates every password without restarting the broker", async () => {
      const rotated = build("demo", ["cam-1", "cam-2"], randomBytes(32));
      const next = buildOwnedObjects(rotated);
      const nextCreds = decoded(
        next.find(
          (o) => o.metadata?.name === brokerCredentialsSecretName(rotated.model),
        ) as V1Secret,
      );
      const pid = broker.pid;
      const old = cred("server");
      const fresh = {
        username: nextCreds["server.username"]!,
        password: nextCreds["server.password"]!,
      };
      expect(fresh.username).toBe(old.username);
      expect(fresh.password).not.toBe(old.password);
      // As the kubelet updates a mounted Secret: the files change in place.
      broker.remount(next);
      const until = Date.now() + 10_000;
      while ((await refusal(fresh)) !== "connected" && Date.now() < until)
        await new Promise((r) => setTimeout(r, 200));
      expect(await refusal(fresh)).toBe("connected");
      expect(await refusal(old)).toMatch(/Not authorized/);
      expect(broker.pid).toBe(pid);
      // Back to the first key for the tests that follow.
      broker.remount(objects);
      while ((await refusal(old)) !== "connected" && Date.now() < until + 10_000)
        await new Promise((r) => setTimeout(r, 200));
    });

    it("a renewed certificate is served without restarting the broker", async () => {
      const renewed = makeTestPki();
      const pid = broker.pid;
      const withCa = (file: string) => ({ ...cred("server"), ca: readFileSync(file, "utf8") });
      broker.remountTls(renewed);
      const until = Date.now() + 10_000;
      while ((await refusal(withCa(renewed.caFile))) !== "connected" && Date.now() < until)
        await new Promise((r) => setTimeout(r, 200));
      expect(await refusal(withCa(renewed.caFile))).toBe("connected");
      expect(await refusal(withCa(pki.caFile))).toMatch(/certificate/);
      expect(broker.pid).toBe(pid);
      broker.remountTls(pki);
      while ((await refusal(withCa(pki.caFile))) !== "connected" && Date.now() < until + 10_000)
        await new Promise((r) => setTimeout(r, 200));
      expect(await refusal(withCa(pki.caFile))).toBe("connected");
    });

    it("a client of another DDNNModel reaches nothing of this one", async () => {
      // Same operator key, same namespace, a model named otherwise: other user names, other passwords.
      const other = build("other", ["cam-1"], key);
      const otherCreds = decoded(
        buildOwnedObjects(other).find(
          (o) => o.metadata?.name === brokerCredentialsSecretName(other.model),
        ) as V1Secret,
      );
      for (const who of ["server", "edge", "device.cam-1"]) {
        const c = {
          username: otherCreds[`${who}.username`]!,
          password: otherCreds[`${who}.password`]!,
        };
        expect(c.username).not.toBe(cred(who).username);
        expect(c.password).not.toBe(cred(who).password);
        expect(await refusal(c)).toMatch(/Not authorized/);
      }
    });

    it("a camera's image goes through the real gateway and server, each with its own identity, and the answer reaches only that camera", async () => {
      const lines: string[] = [];
      const sink = new Writable({
        write(chunk, _enc, done) {
          lines.push(String(chunk));
          done();
        },
      });
      const log = pino({ level: "debug" }, sink);
      const common = {
        bundle: BUNDLE,
        model: "fog/demo",
        broker: url,
        brokerCa: pki.caFile,
        httpPort: 0,
        httpHost: "127.0.0.1",
        workers: 1,
        logLevel: "debug",
      };
      let gateway: RunningGateway | undefined;
      let server: RunningServer | undefined;
      try {
        server = await startServer(
          serverSchema.parse({
            ...common,
            stages: ["server"],
            brokerUsername: cred("server").username,
            brokerPassword: cred("server").password,
          }),
          log,
        );
        gateway = await startGateway(
          gatewaySchema.parse({
            ...common,
            stages: ["device", "edge"],
            threshold: { device: 0, edge: 0 },
            brokerUsername: cred("edge").username,
            brokerPassword: cred("edge").password,
          }),
          log,
        );
        const cam1 = await client("device.cam-1");
        const cam2 = await client("device.cam-2");
        const mine = await collect(cam1, "ddnn/fog/demo/reply/cam-1");
        const theirs = await collect(cam2, "ddnn/fog/demo/reply/cam-1");
        const shape = [1, ...manifest.input.shape];
        const size = shape.reduce((a, b) => a * b, 1);
        const { fields, body } = encodeTensor(new Float32Array(size).fill(0.5), shape, {
          dtype: "f32",
          compression: "none",
        });
        const header = {
          kind: "infer",
          id: "acl-1",
          model: "fog/demo",
          digest: DIGEST,
          stage: 0,
          replyTo: "ddnn/fog/demo/reply/cam-1",
          deadline: Date.now() + 10_000,
          sentAt: Date.now(),
          ...fields,
        };
        // The workers subscribe once connected; send until the answer comes.
        for (let i = 0; i < 50 && mine.got.length === 0; i++) {
          await cam1.publishAsync(
            "ddnn/fog/demo/device/req",
            Buffer.from(encodeFrame({ ...header, id: `acl-${i}` }, body)),
            { qos: 1 },
          );
          await new Promise((r) => setTimeout(r, 200));
        }
        expect(mine.got.length).toBeGreaterThan(0);
        expect(theirs.got).toEqual([]);
        // Answered by the server (no exit on the way: thresholds 0), not an error about access.
        const answer = decodeResult(new Uint8Array(mine.got[0]!.payload)).header;
        expect(answer).toMatchObject({ kind: "result", status: "ok", stage: 2 });
        // Through the same ACLs: a frame for another model, or with another bundle's digest, gets
        // an error reply on the camera's own reply topic.
        const errors = [
          { id: "other-model", model: "fog/other", digest: DIGEST },
          { id: "wrong-digest", model: "fog/demo", digest: "cd".repeat(32) },
        ];
        const before = mine.got.length;
        for (const e of errors)
          await cam1.publishAsync(
            "ddnn/fog/demo/device/req",
            Buffer.from(encodeFrame({ ...header, ...e, deadline: Date.now() + 10_000 }, body)),
            { qos: 1 },
          );
        const until = Date.now() + 5_000;
        while (mine.got.length < before + errors.length && Date.now() < until)
          await new Promise((r) => setTimeout(r, 50));
        const replies = mine.got
          .slice(before)
          .map((m) => decodeResult(new Uint8Array(m.payload)).header)
          .map((h) => [h.id, h.status === "error" ? h.error.code : h.status]);
        expect(new Map(replies as [string, string][])).toEqual(
          new Map([
            ["other-model", "unknown_model"],
            ["wrong-digest", "digest_mismatch"],
          ]),
        );
        expect(theirs.got).toEqual([]);
        // Credentials appear in no log line and on no /metrics page.
        for (const port of [server.port, gateway.port]) {
          const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
          for (const who of ["server", "edge"]) expect(metrics).not.toContain(cred(who).password);
        }
        const text = lines.join("");
        expect(text).toContain("connected to the broker");
        for (const who of ["server", "edge", "device.cam-1"])
          expect(text).not.toContain(cred(who).password);
      } finally {
        await gateway?.close();
        await server?.close();
      }
    });
  },
);

describe.skipIf(!available)(
  "the default managed broker: nothing about security in the spec (real Mosquitto, operator's config)",
  () => {
    // The example's shape with no broker field at all: TLS from the certificate the operator
    // issues, and an identity per client.
    const input = build("demo", [], randomBytes(32), {
      bundle: { url: "http://models.fog.svc/fashion-3tier.tar.gz", sha256: DIGEST },
      placement: { device: "device", edge: "edge", server: "server" },
    });
    const objects = buildOwnedObjects({
      ...input,
      deviceIdentity: { url: "https://ddnn-fog-identity.ddnn-system.svc:8444" },
      nodes: [{ name: "board-a", labels: { "fog.ddnn.io/device": "true" } }],
    });
    const secret = (name: string) =>
      decoded(objects.find((o) => o.kind === "Secret" && o.metadata?.name === name) as V1Secret);
    const creds = secret("demo-broker-credentials");
    const issuedCa = secret("demo-broker-cert")["ca.crt"]!;
    let broker: ManagedBroker;
    let url: string;
    const SERVICE = "demo-broker.fog.svc";

    beforeAll(async () => {
      const dir = tempDir("ddnn-default-broker-");
      chmodSync(dir, 0o755);
      broker = new ManagedBroker(dir, await freePort());
      url = `mqtts://127.0.0.1:${broker.port}`;
      await broker.start(broker.mount(objects));
    });
    afterAll(async () => {
      await broker?.stop();
    });

    /** The outcome of connecting as a tier Pod does: the issued CA, the Service's name. */
    const attempt = (extra: IClientOptions) =>
      connectOutcome(url, { ca: issuedCa, servername: SERVICE, ...extra });

    it("serves the issued certificate for its Service's name, and refuses anonymous clients", async () => {
      expect(issuedCa).toBe(testBrokerCa.certPem);
      expect(
        await attempt({ username: creds["server.username"], password: creds["server.password"] }),
      ).toBe("connected");
      expect(
        await attempt({ username: creds["edge.username"], password: creds["edge.password"] }),
      ).toBe("connected");
      expect(await attempt({})).toMatch(/Not authorized/);
      // Another name, or another CA, is not this broker.
      const server = { username: creds["server.username"], password: creds["server.password"] };
      expect(await attempt({ ...server, servername: "other-broker.fog.svc" })).toMatch(
        /Hostname\/IP does not match|altnames/,
      );
      expect(await attempt({ ...server, ca: readFileSync(makeTestPki().caFile, "utf8") })).toMatch(
        /self[- ]signed|unable to (verify|get)/,
      );
      // The in-cluster device node is in the password file; its password comes from the exchange.
      expect(secret("demo-broker-auth").passwd).toMatch(/^fog\/demo\/device\/board-a:\$7\$/m);
      expect(Object.keys(creds).some((k) => k.startsWith("device."))).toBe(false);
    });

    it("a tier refused because its identity is not in the password file yet connects once it is, without a restart", async () => {
      // What a new Pod meets: its identity reaches the broker's mounted password file some seconds
      // after the Pod starts. Here: the passwords of another key until the remount.
      const key = randomBytes(32);
      const next = buildOwnedObjects({
        ...build("demo", [], key, {
          bundle: { url: "http://models.fog.svc/fashion-3tier.tar.gz", sha256: DIGEST },
          placement: { device: "device", edge: "edge", server: "server" },
        }),
        deviceIdentity: { url: "https://ddnn-fog-identity.ddnn-system.svc:8444" },
        nodes: [{ name: "board-a", labels: { "fog.ddnn.io/device": "true" } }],
      });
      const nextCreds = decoded(
        next.find((o) => o.metadata?.name === "demo-broker-credentials") as V1Secret,
      );
      const errors: string[] = [];
      const client = connectBroker({
        url,
        clientId: "late-identity",
        ca: issuedCa,
        servername: SERVICE,
        username: nextCreds["server.username"]!,
        password: nextCreds["server.password"]!,
        maxReconnectMs: 500,
      });
      client.on("error", (e) => errors.push(e.message));
      try {
        await waitFor(() => errors.length > 0, 10_000, "the first refusal");
        expect(errors[0]).toMatch(/Not authorized/);
        broker.remount(next);
        await waitFor(() => client.connected, 15_000, "connected after the password file changed");
      } finally {
        await client.endAsync(true);
      }
    });
  },
);
