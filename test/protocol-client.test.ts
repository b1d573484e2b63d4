/**
 * docs/protocol.md is enough to talk to the server: a Python client written from it alone
 * (test/clients/python_client.py, Debian's python3-paho-mqtt), the page's own Python example and
 * worked example bytes, and Mosquitto's command-line clients, each against a server on a real
 * Mosquitto, get the in-process pipeline's answers.
 */
import { execFile, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ExitPolicy } from "../core/exit.js";
import { isForward, Pipeline, type SampleResult } from "../core/pipeline.js";
import { makeLogger } from "../core/runtime/tier.js";
import { encodeFrame } from "../core/wire/frame.js";
import { fromHalf, toHalf } from "../core/wire/half.js";
import { encodeTensor } from "../core/wire/tensor.js";
import { serverSchema } from "../server/config.js";
import { type RunningServer, startServer } from "../server/server.js";
import {
  type FixtureStage,
  pseudoPixels,
  smallStages,
  tempDir,
  writeBundle,
} from "./support/bundle-fixture.js";
import { waitFor } from "./support/fog.js";
import { type Mosquitto, startMosquitto } from "./support/mosquitto.js";
import { requireProgram } from "./support/programs.js";
import { python, root } from "./support/run.js";

const exec = promisify(execFile);
const doc = readFileSync(join(root, "docs", "protocol.md"), "utf8");
const client = join(root, "test", "clients", "python_client.py");

/** Three stages; the server runs stages 1 and 2, so its answers come from either exit. */
function threeStages(): FixtureStage[] {
  return [
    {
      name: "cam",
      inputName: "x",
      inShape: [3, 2, 2],
      featuresName: "h0",
      featureSize: 12,
      logitsName: "y0",
      classes: 4,
      seed: 5,
      threshold: 0.1,
    },
    {
      name: "gw",
      inputName: "h0",
      inShape: [12],
      featuresName: "h1",
      featureSize: 10,
      logitsName: "y1",
      classes: 4,
      seed: 9,
      threshold: 0.3,
    },
    { name: "rack", inputName: "h1", inShape: [10], logitsName: "y2", classes: 4, seed: 13 },
  ];
}

interface Served {
  dir: string;
  reference: Pipeline;
  server: RunningServer;
}

async function serve(dir: string, stages: string[]): Promise<Served> {
  const reference = await Pipeline.load(dir);
  const server = await startServer(
    serverSchema.parse({
      bundle: dir,
      broker: mosquitto.url,
      httpHost: "127.0.0.1",
      httpPort: 0,
      stages,
      dtype: "f32",
      compression: "none",
    }),
    makeLogger(process.env.DDNN_TEST_LOG ?? "error", "server"),
  );
  await waitFor(() => server.service.subscribed, 5000, "server subscribed");
  return { dir, reference, server };
}

/** Stage-0 features of `n` samples (every sample handed on: stage 0 never exits here). */
async function deviceFeatures(p: Pipeline, n: number, seed: number): Promise<Float32Array[]> {
  const perSample = p.samplePixels;
  const never = new ExitPolicy(p.policy.thresholds.map((t, i) => (i === 0 ? 0 : t)));
  const results = await p.runRange(0, 0, p.inputTensor(pseudoPixels(n, perSample, seed), n), never);
  return results.map((r) => {
    if (!isForward(r)) throw new Error("stage 0 answered although its threshold is 0");
    return r.forward.features;
  });
}

/** What the in-process pipeline answers for these inputs of `from`, run to the last stage. */
async function expected(p: Pipeline, from: number, inputs: Float32Array[]) {
  const width = inputs[0]!.length;
  const data = new Float32Array(width * inputs.length);
  inputs.forEach((x, i) => {
    data.set(x, i * width);
  });
  const last = p.manifest.stages.length - 1;
  const out = (await p.runRange(
    from,
    last,
    p.tensor(data, [inputs.length, width]),
  )) as SampleResult[];
  return out.map((r) => ({ stage: r.stage, label: r.label, entropy: r.entropy }));
}

interface Line {
  index?: number;
  probe?: string;
  id: string;
  sent: { dtype: string; raw_hex: string; scale?: number; zero?: number };
  reply: Record<string, unknown> & {
    status: string;
    stage?: number;
    label?: number;
    entropy?: number;
    error?: { code: string };
  };
}

async function runClient(
  s: Served,
  stage: number,
  features: Float32Array[],
  dtype: string,
  compression: string,
  probes = false,
): Promise<Line[]> {
  const file = join(tempDir("ddnn-py-"), "features.json");
  writeFileSync(
    file,
    JSON.stringify({
      shape: [features[0]!.length],
      samples: features.map((f) => Array.from(f)),
    }),
  );
  const { stdout } = await exec(
    python,
    [
      client,
      "--port",
      String(mosquitto.port),
      "--bundle",
      s.dir,
      "--stage",
      String(stage),
      "--features",
      file,
      "--dtype",
      dtype,
      "--compression",
      compression,
      ...(probes ? ["--probes"] : []),
    ],
    { timeout: 30_000 },
  );
  return stdout
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as Line);
}

let mosquitto: Mosquitto;
let two: Served;
let three: Served;
beforeAll(async () => {
  mosquitto = await startMosquitto();
  two = await serve(writeBundle(smallStages()).dir, ["server"]);
  three = await serve(
    writeBundle(threeStages(), {
      input: { shape: [3, 2, 2], mean: [0.2, 0.4, 0.6], std: [0.3, 0.3, 0.5] },
      edit: (m) => {
        m.name = "three";
      },
    }).dir,
    ["gw", "rack"],
  );
});
afterAll(async () => {
  for (const s of [two, three]) {
    await s?.server.close();
    await s?.reference.release();
  }
  await mosquitto?.stop();
});

/** The first fenced block after `heading` in docs/protocol.md. */
function block(heading: string, lang = ""): string {
  const at = doc.indexOf(heading);
  if (at < 0) throw new Error(`docs/protocol.md has no "${heading}"`);
  const start = doc.indexOf(`\`\`\`${lang}\n`, at);
  const end = doc.indexOf("\n```", start + 4 + lang.length);
  return doc.slice(start + 4 + lang.length, end + 1);
}

/** Publishes a frame on a raw MQTT 3.1.1 connection and waits for the frame on `replyTo`. */
async function roundTrip(topic: string, replyTo: string, frame: Uint8Array): Promise<Buffer> {
  const c = await mqtt.connectAsync(mosquitto.url, { protocolVersion: 4 });
  try {
    await c.subscribeAsync(replyTo, { qos: 1 });
    const reply = new Promise<Buffer>((resolve) => c.once("message", (_t, p) => resolve(p)));
    await c.publishAsync(topic, Buffer.from(frame), { qos: 1 });
    return await reply;
  } finally {
    await c.endAsync();
  }
}

function replyHeader(payload: Buffer): Record<string, unknown> {
  expect(payload.subarray(0, 4).toString("ascii")).toBe("DDN1");
  const h = payload.readUInt32LE(4);
  expect(payload.length).toBe(8 + h);
  return JSON.parse(payload.toString("utf8", 8, 8 + h)) as Record<string, unknown>;
}

describe("docs/protocol.md", () => {
  const exampleValues = [0, 0.5, 1.25, 3, 0, 0.75];

  it("worked example: the bytes are what the encoder writes, and the server gives the documented answer", async () => {
    const section = "## Worked example";
    const header = JSON.parse(block(section, "json")) as Record<string, unknown>;
    const dump = block("The whole 293-byte frame");
    const bytes = Buffer.from(
      dump
        .split("\n")
        .filter((l) => /^[0-9a-f]{8}: /.test(l))
        .map((l) => l.slice(10, 49).replace(/ /g, ""))
        .join(""),
      "hex",
    );
    const digest = createHash("sha256")
      .update(readFileSync(join(two.dir, "ddnn.json")))
      .digest("hex");
    // The example is for the two-stage fixture bundle; if the fixture changes, regenerate it.
    expect(header.digest, "regenerate the worked example in docs/protocol.md").toBe(digest);
    const { fields, body } = encodeTensor(Float32Array.from(exampleValues), [1, 6], {
      dtype: "f32",
      compression: "none",
    });
    expect(Buffer.from(encodeFrame({ ...header, ...fields }, body)).equals(bytes)).toBe(true);
    expect(bytes.length).toBe(293);
    expect(bytes.readUInt32LE(4)).toBe(261);

    const u8q = encodeTensor(Float32Array.from(exampleValues), [1, 6], {
      dtype: "u8q",
      compression: "deflate",
    });
    expect(doc).toContain(
      Buffer.from(u8q.body)
        .toString("hex")
        .replace(/(..)(?!$)/g, "$1 "),
    );
    expect(doc).toContain(`"scale":${u8q.fields.scale},"zero":${u8q.fields.zero}`);

    const documented = block("empty body whose header is", "json");
    const want = JSON.parse(documented) as Record<string, unknown>;
    const got = replyHeader(
      await roundTrip(
        "ddnn/default/fixture/server/req",
        header.replyTo as string,
        Uint8Array.from(bytes),
      ),
    );
    for (const k of ["kind", "id", "status", "stage", "label", "tier"])
      expect(got[k], k).toEqual(want[k]);
    expect(got.entropy as number).toBeCloseTo(want.entropy as number, 9);
    const [ref] = await expected(two.reference, 1, [Float32Array.from(exampleValues)]);
    expect([got.stage, got.label]).toEqual([ref!.stage, ref!.label]);

    // The u8q + deflate variant of the same request: same label, as the page says.
    const u8qFrame = encodeFrame(
      { ...header, id: "cam1-43", ...u8q.fields, deadline: Date.now() + 5000 },
      u8q.body,
    );
    const u = replyHeader(
      await roundTrip("ddnn/default/fixture/server/req", header.replyTo as string, u8qFrame),
    );
    expect([u.id, u.status, u.label]).toEqual(["cam1-43", "ok", want.label]);
  });

  it("the page's Python example runs as printed and gets the pipeline's answer", async () => {
    const dir = tempDir("ddnn-doc-py-");
    const script = join(dir, "ddn1_request.py");
    writeFileSync(script, block("## A complete Python client", "python"));
    const { stdout } = await exec(
      python,
      [script, "127.0.0.1", String(mosquitto.port), two.dir, "1", exampleValues.join(",")],
      { timeout: 20_000 },
    );
    const reply = JSON.parse(stdout.trim()) as Record<string, unknown>;
    const [ref] = await expected(two.reference, 1, [Float32Array.from(exampleValues)]);
    expect(reply).toMatchObject({ kind: "result", status: "ok", tier: "server" });
    expect([reply.stage, reply.label]).toEqual([ref!.stage, ref!.label]);
  });
});

describe("a Python client written from docs/protocol.md only", () => {
  const n = 40;

  it("f32 frames: exactly the in-process pipeline's exit stage and label (server runs 2 stages)", async () => {
    const features = await deviceFeatures(three.reference, n, 3);
    const want = await expected(three.reference, 1, features);
    const lines = await runClient(three, 1, features, "f32", "none");
    expect(lines).toHaveLength(n);
    expect(lines.filter((l) => l.reply.status !== "ok")).toEqual([]);
    expect(lines.map((l) => [l.reply.stage, l.reply.label])).toEqual(
      want.map((w) => [w.stage, w.label]),
    );
    lines.forEach((l, i) => {
      expect(l.reply.entropy!).toBeCloseTo(want[i]!.entropy, 5);
    });
    // Both of the server's exits answered some samples.
    expect(new Set(lines.map((l) => l.reply.stage))).toEqual(new Set([1, 2]));
  });

  it("f32 frames on the two-stage bundle", async () => {
    const features = await deviceFeatures(two.reference, n, 4);
    const want = await expected(two.reference, 1, features);
    const lines = await runClient(two, 1, features, "f32", "none");
    expect(lines.map((l) => [l.reply.status, l.reply.stage, l.reply.label])).toEqual(
      want.map((w) => ["ok", w.stage, w.label]),
    );
  });

  it("u8q + deflate frames: the answer for exactly the values the client quantized, close to the originals", async () => {
    const features = await deviceFeatures(three.reference, n, 5);
    const lines = await runClient(three, 1, features, "u8q", "deflate");
    // value = scale * (byte - zero), as the server decodes it
    const decoded = lines.map((l) => {
      const { scale, zero, raw_hex } = l.sent;
      expect(l.sent.dtype).toBe("u8q");
      const q = Buffer.from(raw_hex, "hex");
      return Float32Array.from(q, (b) => scale! * (b - zero!));
    });
    decoded.forEach((d, i) => {
      const scale = lines[i]!.sent.scale!;
      const original = features[i]!;
      expect(d.length).toBe(original.length);
      d.forEach((v, j) => {
        expect(Math.abs(v - original[j]!)).toBeLessThanOrEqual(scale / 2 + 1e-6);
      });
    });
    const want = await expected(three.reference, 1, decoded);
    expect(lines.map((l) => [l.reply.status, l.reply.stage, l.reply.label])).toEqual(
      want.map((w) => ["ok", w.stage, w.label]),
    );
    const f32 = await expected(three.reference, 1, features);
    const agree = f32.filter((w, i) => w.label === lines[i]!.reply.label).length;
    expect(agree / n).toBeGreaterThanOrEqual(0.9);
  });

  it("u8q + sparse frames (zero bitmap and non-zero bytes): the same answers as u8q + deflate", async () => {
    const features = await deviceFeatures(three.reference, n, 9);
    // ReLU-like features: many exact zeros, as the device stage of a trained model gives.
    const relu = features.map((f) => f.map((v, j) => (j % 3 === 0 ? 0 : Math.max(0, v))));
    const sparse = await runClient(three, 1, relu, "u8q", "sparse");
    const deflate = await runClient(three, 1, relu, "u8q", "deflate");
    expect(sparse.filter((l) => l.reply.status !== "ok")).toEqual([]);
    expect(sparse.map((l) => l.sent.raw_hex)).toEqual(deflate.map((l) => l.sent.raw_hex));
    expect(sparse.map((l) => [l.reply.stage, l.reply.label, l.reply.entropy])).toEqual(
      deflate.map((l) => [l.reply.stage, l.reply.label, l.reply.entropy]),
    );
    const decoded = sparse.map((l) =>
      Float32Array.from(
        Buffer.from(l.sent.raw_hex, "hex"),
        (b) => l.sent.scale! * (b - l.sent.zero!),
      ),
    );
    const want = await expected(three.reference, 1, decoded);
    expect(sparse.map((l) => [l.reply.stage, l.reply.label])).toEqual(
      want.map((w) => [w.stage, w.label]),
    );
  });

  it("f16 frames: the answer for the half-precision values", async () => {
    const features = await deviceFeatures(three.reference, n, 6);
    const lines = await runClient(three, 1, features, "f16", "none");
    const halves = features.map((f) => Float32Array.from(f, (v) => fromHalf(toHalf(v))));
    lines.forEach((l, i) => {
      const raw = Buffer.from(l.sent.raw_hex, "hex");
      const sent = Float32Array.from({ length: raw.length / 2 }, (_, j) =>
        fromHalf(raw.readUInt16LE(j * 2)),
      );
      expect(Array.from(sent)).toEqual(Array.from(halves[i]!));
    });
    const want = await expected(three.reference, 1, halves);
    expect(lines.map((l) => [l.reply.status, l.reply.stage, l.reply.label])).toEqual(
      want.map((w) => ["ok", w.stage, w.label]),
    );
  });

  it("error replies: digest_mismatch, unknown_model, deadline_exceeded, bad_frame", async () => {
    const features = await deviceFeatures(two.reference, 2, 7);
    const lines = await runClient(two, 1, features, "f32", "none", true);
    const probes = lines.filter((l) => l.probe);
    expect(probes.map((l) => [l.probe, l.reply.status, l.reply.error?.code])).toEqual(
      ["digest_mismatch", "unknown_model", "deadline_exceeded", "bad_frame"].map((c) => [
        c,
        "error",
        c,
      ]),
    );
    expect(lines.filter((l) => !l.probe).every((l) => l.reply.status === "ok")).toBe(true);
  });
});

describe("Mosquitto's command-line clients", () => {
  it("mosquitto_pub sends a hand-made frame, mosquitto_sub -F %x prints the reply", async () => {
    const features = await deviceFeatures(two.reference, 1, 8);
    const values = features[0]!;
    // The frame by hand, from the page's table, without the project's encoder.
    const replyTo = "ddnn/default/fixture/reply/shell";
    const digest = createHash("sha256")
      .update(readFileSync(join(two.dir, "ddnn.json")))
      .digest("hex");
    const header = Buffer.from(
      JSON.stringify({
        kind: "infer",
        id: "shell-1",
        model: "default/fixture",
        digest,
        stage: 1,
        replyTo,
        deadline: Date.now() + 20_000,
        dtype: "f32",
        shape: [1, values.length],
      }),
    );
    const body = Buffer.alloc(values.length * 4);
    values.forEach((v, i) => {
      body.writeFloatLE(v, i * 4);
    });
    const length = Buffer.alloc(4);
    length.writeUInt32LE(header.length);
    const dir = tempDir("ddnn-shell-");
    const requestFile = join(dir, "request.bin");
    writeFileSync(requestFile, Buffer.concat([Buffer.from("DDN1"), length, header, body]));

    // Missing clients fail here, naming mosquitto-clients, not as a wait that times out.
    requireProgram("mosquitto_sub");
    requireProgram("mosquitto_pub");
    const port = String(mosquitto.port);
    // stdbuf: mosquitto_sub's stdout is a pipe here; without it the SUBACK line stays buffered.
    const sub = spawn("stdbuf", [
      ...["-o0", "mosquitto_sub"],
      ...["-h", "127.0.0.1", "-p", port, "-q", "1", "-t", replyTo],
      ...["-C", "1", "-W", "15", "-F", "%x", "-d"],
    ]);
    let out = "";
    sub.stdout.on("data", (d: Buffer) => {
      out += d.toString();
    });
    // "close", not "exit": the process may exit before its last stdout chunk (the reply) is read.
    const exited = new Promise<number | null>((resolve) => sub.once("close", resolve));
    await waitFor(() => out.includes("SUBACK"), 10_000, "mosquitto_sub subscribed");
    await exec("mosquitto_pub", [
      ...["-h", "127.0.0.1", "-p", port, "-q", "1"],
      ...["-t", "ddnn/default/fixture/server/req", "-f", requestFile],
    ]);
    expect(await exited).toBe(0);
    const hex = out
      .split("\n")
      .map((l) => l.trim())
      .find((l) => /^44444e31[0-9a-f]+$/.test(l));
    expect(hex, out).toBeDefined();
    const reply = replyHeader(Buffer.from(hex!, "hex"));
    const [ref] = await expected(two.reference, 1, [values]);
    expect(reply).toMatchObject({
      id: "shell-1",
      status: "ok",
      stage: ref!.stage,
      label: ref!.label,
    });
  });
});
