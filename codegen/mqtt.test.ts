/**
 * ddnn-device built with MQTT=1 (libmosquitto, cJSON, zlib) against the real server tier through
 * a real Mosquitto: f32 frames give exactly the in-process pipeline's exit stage and label, u8q +
 * deflate labels agree for at least 99%, and with the broker killed mid-run every sample is still
 * answered within its deadline (degraded where needed) and offloading resumes when it returns.
 */
import { type ChildProcess, execFile, execFileSync, spawn } from "node:child_process";
import { chmodSync, mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readBundle } from "../core/bundle/read.js";
import { readIdx } from "../core/dataset/idx.js";
import { adaptiveDecisions } from "../core/evaluation.js";
import { Pipeline } from "../core/pipeline.js";
import { makeLogger } from "../core/runtime/tier.js";
import { serverSchema } from "../server/config.js";
import { type RunningServer, startServer } from "../server/server.js";
import { tempDir } from "../test/support/bundle-fixture.js";
import { startFog, waitFor } from "../test/support/fog.js";
import { type Mosquitto, startMosquitto } from "../test/support/mosquitto.js";
import { requireProgram } from "../test/support/programs.js";
import { root } from "../test/support/run.js";
import { makeTestPki } from "../test/support/tls.js";
import { generateC, writeGenerated } from "./generate.js";

const run = promisify(execFile);
const bundleDir = join(root, "models/fashion-deep");
const images = join(root, "models/eval/fashion-mnist-t10k-2000-images-idx3-ubyte.gz");

interface AnswerLine {
  index: number;
  label: number;
  stage: string;
  stageIndex: number;
  tier: string;
  entropy: number;
  degraded: boolean;
  reason?: string;
  timings: { device: number; comm: number; upstream: number; total: number };
  bytesSent: number;
}

let mosquitto: Mosquitto;
let server: RunningServer;
let program: string;
let reference: { exitStage: Int32Array; label: Int32Array; deviceEntropy: Float64Array };

beforeAll(async () => {
  requireProgram("mosquitto");
  requireProgram("make");
  const dir = join(tempDir("ddnn-codegen-mqtt-"), "device");
  mkdirSync(dir, { recursive: true });
  await writeGenerated(generateC(await readBundle(bundleDir)), dir);
  await run("nice", ["make", "-s", "-C", dir, "MQTT=1"]);
  program = join(dir, "ddnn-device");
  mosquitto = await startMosquitto();
  server = await startServer(
    serverSchema.parse({
      bundle: bundleDir,
      broker: mosquitto.url,
      httpHost: "127.0.0.1",
      httpPort: 0,
      dtype: "f32",
      compression: "none",
    }),
    makeLogger(process.env.DDNN_TEST_LOG ?? "error", "server"),
  );
  await waitFor(() => server.service.subscribed, 10_000, "server subscribed");
  const pipeline = await Pipeline.load(bundleDir);
  try {
    const idx = await readIdx(images);
    const result = await pipeline.evaluateAll(idx.data, idx.shape[0]!, 500);
    const d = adaptiveDecisions(result, pipeline.policy);
    reference = { ...d, deviceEntropy: result.entropy[0] as Float64Array };
  } finally {
    await pipeline.release();
  }
}, 120_000);

afterAll(async () => {
  await server?.close();
  await mosquitto?.stop();
});

async function device(args: string[]): Promise<AnswerLine[]> {
  const { stdout } = await run(program, ["--broker", mosquitto.url, ...args], {
    maxBuffer: 1 << 26,
  });
  return stdout
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as AnswerLine);
}

describe("ddnn-device over MQTT against the server tier", () => {
  it("f32 frames: the in-process pipeline's exit stage and label for every sample", async () => {
    const answers = await device([
      "--replay",
      images,
      "--device-id",
      "c-f32",
      "--deadline-ms",
      "2000",
    ]);
    expect(answers).toHaveLength(2000);
    const threshold = 0.3;
    let offloaded = 0;
    let differ = 0;
    for (const a of answers) {
      expect(a.degraded, `sample ${a.index}`).toBe(false);
      if (a.tier === "server") {
        offloaded++;
        expect(a.bytesSent).toBeGreaterThan(6000);
      }
      const near = Math.abs((reference.deviceEntropy[a.index] ?? 0) - threshold) < 1e-5;
      if (a.stageIndex !== reference.exitStage[a.index] || a.label !== reference.label[a.index]) {
        differ++;
        expect(near, `sample ${a.index} differs away from the threshold`).toBe(true);
      }
    }
    expect(differ).toBe(0);
    // The exit rate on this sample is 75.35%: the rest went to the server.
    expect(offloaded).toBe(2000 - Math.round(0.7535 * 2000));
  }, 120_000);

  it("u8q + deflate frames: labels agree for at least 99%, frames about 8 times smaller", async () => {
    const answers = await device([
      "--replay",
      images,
      "--device-id",
      "c-u8q",
      "--dtype",
      "u8q",
      "--compression",
      "deflate",
      "--deadline-ms",
      "2000",
    ]);
    expect(answers).toHaveLength(2000);
    const agree = answers.filter((a) => a.label === reference.label[a.index]).length;
    console.log(`ddnn-device u8q+deflate: ${agree}/2000 labels agree with the pipeline`);
    expect(agree / 2000).toBeGreaterThanOrEqual(0.99);
    const sent = answers.filter((a) => a.tier === "server");
    expect(sent.length).toBeGreaterThan(400);
    for (const a of sent) expect(a.bytesSent).toBeLessThan(1600);
  }, 120_000);

  it("raw samples on stdin: one answer per sample, the pipeline's labels", async () => {
    const idx = await readIdx(images);
    const count = 40;
    const child = spawn(
      program,
      ["--broker", mosquitto.url, "--stdin", "--device-id", "c-stdin", "--deadline-ms", "2000"],
      { stdio: ["pipe", "pipe", "inherit"] },
    );
    let out = "";
    child.stdout!.on("data", (chunk: Buffer) => {
      out += chunk.toString();
    });
    const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
    child.stdin!.end(Buffer.from(idx.data.subarray(0, count * 784)));
    expect(await exited).toBe(0);
    const answers = out
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as AnswerLine);
    expect(answers.map((a) => a.index)).toEqual(Array.from({ length: count }, (_, i) => i));
    for (const a of answers) {
      expect(a.degraded).toBe(false);
      expect(a.label).toBe(reference.label[a.index]);
      expect(a.stageIndex).toBe(reference.exitStage[a.index]);
    }
  });

  it("broker killed mid-run: every sample answered within its deadline, offloading again after it returns", async () => {
    const deadline = 250;
    const child: ChildProcess = spawn(
      program,
      [
        "--broker",
        mosquitto.url,
        "--replay",
        images,
        "--limit",
        "600",
        "--fps",
        "100",
        "--device-id",
        "c-kill",
        "--deadline-ms",
        String(deadline),
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    const lines: AnswerLine[] = [];
    let buffer = "";
    child.stdout!.on("data", (chunk: Buffer) => {
      buffer += chunk.toString();
      let nl = buffer.indexOf("\n");
      while (nl >= 0) {
        lines.push(JSON.parse(buffer.slice(0, nl)));
        buffer = buffer.slice(nl + 1);
        nl = buffer.indexOf("\n");
      }
    });
    const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
    await waitFor(() => lines.length >= 100, 20_000, "100 answers");
    await mosquitto.kill();
    const killedAt = lines.length;
    await new Promise((r) => setTimeout(r, 1000));
    await mosquitto.restart();
    const restartedAt = lines.length;
    expect(await exited).toBe(0);
    expect(lines.map((l) => l.index)).toEqual(Array.from({ length: 600 }, (_, i) => i));
    // The deadline, plus room for a busy machine's scheduler.
    for (const l of lines)
      expect(l.timings.total, `sample ${l.index}`).toBeLessThan(deadline + 100);
    const degraded = lines.filter((l) => l.degraded);
    console.log(
      `ddnn-device broker kill: ${degraded.length} of 600 degraded (${degraded.filter((l) => l.reason === "deadline").length} deadline), slowest answer ${Math.max(...lines.map((l) => l.timings.total)).toFixed(1)} ms, kill after ${killedAt}, back after ${restartedAt}`,
    );
    expect(degraded.length).toBeGreaterThan(0);
    for (const l of degraded) expect(["broker_unreachable", "deadline"]).toContain(l.reason);
    // Before the kill and after the broker came back, non-confident samples went to the server.
    expect(lines.slice(0, killedAt).some((l) => l.tier === "server")).toBe(true);
    expect(lines.slice(restartedAt).some((l) => l.tier === "server")).toBe(true);
    await waitFor(() => server.service.subscribed, 10_000, "server subscribed again");
  }, 120_000);
});

describe("ddnn-device over mqtts:// with a user name and password", () => {
  it("verifies the broker's certificate against --broker-ca, logs in, and offloads; refuses what it cannot trust", async () => {
    requireProgram("mosquitto_passwd");
    const pki = makeTestPki();
    const passwords = join(pki.dir, "passwords");
    execFileSync("mosquitto_passwd", ["-b", "-c", passwords, "camera-7", "s3cret-pw"]);
    // Mosquitto reads it after dropping root for its own user.
    chmodSync(passwords, 0o644);
    const broker = await startMosquitto({
      tls: { certFile: pki.certFile, keyFile: pki.keyFile },
      passwordFile: passwords,
    });
    const credentials = { DDNN_BROKER_USERNAME: "camera-7", DDNN_BROKER_PASSWORD: "s3cret-pw" };
    const tlsServer = await startServer(
      serverSchema.parse({
        bundle: bundleDir,
        broker: broker.url,
        brokerCa: pki.caFile,
        brokerUsername: "camera-7",
        brokerPassword: "s3cret-pw",
        httpHost: "127.0.0.1",
        httpPort: 0,
        dtype: "f32",
        compression: "none",
      }),
      makeLogger(process.env.DDNN_TEST_LOG ?? "error", "server"),
    );
    const runDevice = (args: string[], env: Record<string, string>, limit = 200) =>
      run(
        program,
        [...args, "--replay", images, "--limit", String(limit), "--deadline-ms", "2000"],
        {
          env: { PATH: process.env.PATH ?? "", ...env },
          maxBuffer: 1 << 24,
        },
      );
    const lines = (stdout: string) =>
      stdout
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as AnswerLine);
    try {
      await waitFor(() => tlsServer.service.subscribed, 10_000, "server subscribed over TLS");
      const ok = await runDevice(
        ["--broker", broker.url, "--broker-ca", pki.caFile, "--device-id", "c-tls"],
        credentials,
      );
      const answers = lines(ok.stdout);
      expect(answers).toHaveLength(200);
      for (const a of answers) {
        expect(a.degraded, `sample ${a.index}`).toBe(false);
        expect(a.stageIndex).toBe(reference.exitStage[a.index]);
        expect(a.label).toBe(reference.label[a.index]);
      }
      expect(answers.filter((a) => a.tier === "server").length).toBeGreaterThan(20);
      expect(ok.stderr).toBe("");

      // Another CA, a wrong password, no password: answered locally, the reason named once, the
      // password never printed.
      for (const [what, args, env, message] of [
        [
          "another CA",
          ["--broker-ca", pki.otherCaFile],
          credentials,
          /broker: TLS handshake failed \(is its certificate signed by the --broker-ca CA/,
        ],
        [
          "a wrong password",
          ["--broker-ca", pki.caFile],
          { ...credentials, DDNN_BROKER_PASSWORD: "wrong" },
          /broker: Connection Refused: not authori[sz]ed/,
        ],
        ["no credentials", ["--broker-ca", pki.caFile], {}, /broker: Connection Refused/],
      ] as const) {
        const r = await runDevice(
          ["--broker", broker.url, ...args, "--device-id", "c-refused"],
          env,
          20,
        );
        const refused = lines(r.stdout);
        expect(refused, what).toHaveLength(20);
        for (const a of refused) {
          expect(a.tier, what).toBe("device");
          if (a.degraded) expect(a.reason, what).toBe("broker_unreachable");
        }
        expect(
          refused.some((a) => a.degraded),
          what,
        ).toBe(true);
        expect(r.stderr, what).toMatch(message);
        expect(r.stderr.trim().split("\n").length, what).toBeLessThanOrEqual(2);
        expect(r.stderr, what).not.toContain("s3cret-pw");
      }

      // Wrong combinations stop at once with one line.
      for (const [args, message] of [
        [
          ["--broker", broker.url.replace("mqtts", "mqtt"), "--broker-ca", pki.caFile],
          "only applies to mqtts://",
        ],
        [["--broker", broker.url, "--broker-ca", join(pki.dir, "none.pem")], "cannot read it"],
        [["--broker", "ws://127.0.0.1:1"], "give mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"],
      ] as const) {
        const r = await runDevice([...args], {}).then(
          () => ({ code: 0, stderr: "" }),
          (e: { code: number; stderr: string }) => e,
        );
        expect(r.code, args.join(" ")).toBe(2);
        expect(r.stderr, args.join(" ")).toContain(message);
        expect(r.stderr.trim().split("\n")).toHaveLength(1);
      }
    } finally {
      await tlsServer.close();
      await broker.stop();
      rmSync(pki.dir, { recursive: true, force: true });
    }
  }, 180_000);
});

describe("ddnn-device with a gateway between it and the server (fashion-3tier)", () => {
  it("answers from the device, edge and server exits exactly as the in-process pipeline", async () => {
    const bundle = join(root, "models/fashion-3tier");
    const dir = join(tempDir("ddnn-codegen-mqtt3-"), "device");
    mkdirSync(dir, { recursive: true });
    await writeGenerated(generateC(await readBundle(bundle)), dir);
    await run("nice", ["make", "-s", "-C", dir, "MQTT=1"]);
    const fog = await startFog({
      bundle,
      broker: mosquitto.url,
      stageNames: ["device", "edge", "server"],
      sharedSubscriptions: true,
      devices: 0,
    });
    try {
      const pipeline = await Pipeline.load(bundle);
      const count = 500;
      let expected: { exitStage: Int32Array; label: Int32Array };
      try {
        const idx = await readIdx(images);
        expected = adaptiveDecisions(
          await pipeline.evaluateAll(idx.data.subarray(0, count * 784), count, 500),
          pipeline.policy,
        );
      } finally {
        await pipeline.release();
      }
      const { stdout } = await run(
        join(dir, "ddnn-device"),
        ["--broker", mosquitto.url, "--replay", images, "--limit", String(count)],
        { maxBuffer: 1 << 24 },
      );
      const answers = stdout
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as AnswerLine);
      expect(answers).toHaveLength(count);
      const names = ["device", "edge", "server"];
      for (const a of answers) {
        expect(a.degraded, `sample ${a.index}`).toBe(false);
        expect(a.stageIndex, `sample ${a.index}`).toBe(expected.exitStage[a.index]);
        expect(a.stage).toBe(names[a.stageIndex]);
        expect(a.label, `sample ${a.index}`).toBe(expected.label[a.index]);
      }
      // Every exit answered some samples.
      for (const s of [0, 1, 2]) expect(answers.some((a) => a.stageIndex === s)).toBe(true);
    } finally {
      await fog.close();
    }
  }, 120_000);
});
