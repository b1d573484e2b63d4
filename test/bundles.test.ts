/**
 * Every bundle the project ships (models/) or names in its examples (examples/*.tar.gz) loads in
 * `ddnn eval` and in every tier that runs its stages, as the `ddnn` processes a user starts; and a
 * broken stage file stops each tier with exit code 2 and one line naming the file, never natively.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { cpSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { tempDir } from "./support/bundle-fixture.js";
import { type Mosquitto, startMosquitto } from "./support/mosquitto.js";
import { ddnn, root } from "./support/run.js";

const images = join(root, "models/eval/fashion-mnist-t10k-2000-images-idx3-ubyte.gz");
const labels = join(root, "models/eval/fashion-mnist-t10k-2000-labels-idx1-ubyte.gz");
const cli = join(root, "dist", "cli", "main.js");

/** Multi-view bundles (docs/bundle-views.md) are not run by the tiers yet: core/views.test.ts reads them. */
const multiView = (dir: string) =>
  "views" in JSON.parse(readFileSync(join(root, "models", dir, "ddnn.json"), "utf8"));
const bundles = [
  ...readdirSync(join(root, "models"), { withFileTypes: true })
    .filter((d) => d.isDirectory() && d.name !== "eval" && !multiView(d.name))
    .map((d) => `models/${d.name}`),
  ...readdirSync(join(root, "examples"))
    .filter((f) => f.endsWith(".tar.gz"))
    .map((f) => `examples/${f}`),
];

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
}

/** Runs `ddnn <tier> ...` until it logs `ready` (then stops it with SIGTERM) or exits by itself. */
function runTier(args: readonly string[], timeoutMs = 60_000): Promise<Exit & { ready: boolean }> {
  return new Promise((resolve, reject) => {
    const child: ChildProcess = spawn(process.execPath, [cli, ...args], {
      cwd: root,
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    let ready = false;
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`ddnn ${args.join(" ")} neither got ready nor exited:\n${stderr}`));
    }, timeoutMs);
    child.stderr!.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
      if (!ready && /"msg":"[^"]* ready"/.test(stderr)) {
        ready = true;
        child.kill("SIGTERM");
      }
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stderr, ready });
    });
  });
}

function stageNames(bundle: string): string[] {
  const manifest = bundle.endsWith(".tar.gz")
    ? undefined
    : (JSON.parse(readFileSync(join(root, bundle, "ddnn.json"), "utf8")) as {
        stages: { name: string }[];
      });
  // The example archive's stages are fixed by test/operator/demo-bundle.ts.
  return manifest ? manifest.stages.map((s) => s.name) : ["device", "edge", "server"];
}

let broker: Mosquitto;
beforeAll(async () => {
  broker = await startMosquitto();
});
afterAll(async () => {
  await broker?.stop();
});

describe("the shipped and example bundles", () => {
  it("are all found: three trained models and the example archive", () => {
    expect(bundles).toEqual(
      expect.arrayContaining([
        "models/fashion-deep",
        "models/fashion-3tier",
        "models/fashion-shallow",
        "examples/demo-bundle.tar.gz",
      ]),
    );
  });

  it.each(bundles)("%s: ddnn eval reads it and evaluates the 2,000-image sample", async (b) => {
    const r = await ddnn(["eval", "--bundle", b, "--images", images, "--labels", labels, "--json"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout) as { samples: number; stages: { name: string }[] };
    expect(report.samples).toBe(2000);
    expect(report.stages.map((s) => s.name)).toEqual(stageNames(b));
  });

  it.each(bundles)("%s: every tier that runs its stages starts on it", async (b) => {
    const names = stageNames(b);
    const common = [
      "--bundle",
      b,
      "--broker",
      broker.url,
      "--http-port",
      "0",
      "--http-host",
      "127.0.0.1",
    ];
    const runs: string[][] = [
      ["agent", ...common, "--device-id", "cam-1"],
      // As the operator runs it: the server's own stages named, and once with the whole model.
      ["server", ...common, "--stages", names.slice(-1).join(","), "--full-model", "false"],
      ["server", ...common],
      ...(names.length > 2
        ? [["gateway", ...common, "--stages", names.slice(1, -1).join(",")]]
        : []),
    ];
    for (const args of runs) {
      const r = await runTier(args);
      expect(r.ready, `ddnn ${args.join(" ")}:\n${r.stderr}`).toBe(true);
      expect(r.code, r.stderr).toBe(0);
    }
  });
});

describe("a broken stage file", () => {
  /** A copy of fashion-3tier whose `file` is replaced by `bytes`, with or without a matching sha256. */
  function brokenBundle(file: string, bytes: Uint8Array, fixHash: boolean): string {
    const dir = tempDir("ddnn-broken-");
    cpSync(join(root, "models/fashion-3tier"), dir, { recursive: true });
    writeFileSync(join(dir, file), bytes);
    if (fixHash) {
      const manifest = JSON.parse(readFileSync(join(dir, "ddnn.json"), "utf8")) as {
        stages: { file: string; sha256: string }[];
      };
      for (const s of manifest.stages)
        if (s.file === file) s.sha256 = createHash("sha256").update(bytes).digest("hex");
      writeFileSync(join(dir, "ddnn.json"), JSON.stringify(manifest, null, 2));
    }
    return dir;
  }

  const tiers: [string, string, string[]][] = [
    ["agent", "device.onnx", ["--device-id", "cam-1"]],
    ["gateway", "edge.onnx", ["--stages", "edge"]],
    // Several workers open the stage at once: one failing while another is still inside
    // onnxruntime must not abort the process natively (it did, about every second start).
    ["server", "server.onnx", ["--stages", "server", "--workers", "4"]],
  ];

  it.each(tiers)(
    "stops ddnn %s with exit code 2 and one line naming %s",
    async (tier, file, extra) => {
      const garbage = new TextEncoder().encode("this is not an ONNX model\n".repeat(40));
      const cases = [
        { dir: brokenBundle(file, garbage, true), says: /not a loadable ONNX model/ },
        { dir: brokenBundle(file, garbage, false), says: /sha256/ },
      ];
      for (const { dir, says } of cases) {
        for (let attempt = 0; attempt < (tier === "server" ? 3 : 1); attempt++) {
          const r = await runTier([
            tier,
            "--bundle",
            dir,
            "--broker",
            broker.url,
            "--http-port",
            "0",
            ...extra,
          ]);
          const lines = r.stderr.trimEnd().split("\n");
          expect(r.signal, r.stderr).toBeNull();
          expect(r.code, r.stderr).toBe(2);
          expect(r.ready).toBe(false);
          // The configuration line, then exactly one line: the error, naming the file.
          expect(lines, r.stderr).toHaveLength(2);
          expect(lines[0]).toMatch(/^\{"msg":"configuration"/);
          expect(lines[1]).toContain(`ddnn: ${dir}`);
          expect(lines[1]).toContain(file);
          expect(lines[1]).toMatch(says);
        }
      }
    },
  );
});
