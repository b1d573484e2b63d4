import { createHash } from "node:crypto";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  type FixtureStage,
  packBundle,
  smallStages,
  tempDir,
  writeBundle,
} from "../../test/support/bundle-fixture.js";
import { stageOnnx } from "../../test/support/onnx-model.js";
import { readViewsBundle, viewsOf } from "../views.js";
import { parseManifest } from "./manifest.js";
import { readBundle } from "./read.js";
import { loadBundle } from "./stages.js";

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

function rehash(dir: string, file: string, manifest: { stages: Record<string, unknown>[] }): void {
  const stage = manifest.stages.find((s) => s.file === file)!;
  stage.sha256 = sha(readFileSync(join(dir, file)));
  writeFileSync(join(dir, "ddnn.json"), JSON.stringify(manifest));
}

describe("loading a bundle", () => {
  it("loads a directory, pins it by the manifest's digest and keeps unknown fields", async () => {
    const f = writeBundle(smallStages());
    const { bundle, stages } = await loadBundle(f.dir);
    expect(bundle.digest).toBe(sha(readFileSync(join(f.dir, "ddnn.json"))));
    expect(bundle.manifest.futureField).toEqual({ kept: true });
    expect(stages.map((s) => s.spec.name)).toEqual(["device", "server"]);
    expect(stages[1]?.sampleShape).toEqual([6]);
  });

  it("loads the same bundle from a .tar.gz, flat or in one top-level folder", async () => {
    const f = writeBundle(smallStages());
    const direct = await readBundle(f.dir);
    for (const nested of [false, true]) {
      const fromArchive = await readBundle(packBundle(f.dir, nested));
      expect(fromArchive.digest).toBe(direct.digest);
      expect(fromArchive.stageBytes).toEqual(direct.stageBytes);
    }
  });

  const cases: [string, (f: ReturnType<typeof writeBundle>) => void, RegExp][] = [
    [
      "a missing stage file",
      (f) => rmSync(join(f.dir, "server.onnx")),
      /server\.onnx: missing \(named by ddnn.json stages\[1\]\.file\)/,
    ],
    [
      "a file that does not match its digest",
      (f) =>
        writeFileSync(
          join(f.dir, "device.onnx"),
          Buffer.concat([readFileSync(join(f.dir, "device.onnx")), Buffer.from([0])]),
        ),
      /device\.onnx: sha256 mismatch: ddnn.json stages\[0\]\.sha256 is [0-9a-f]{64}, the file hashes to/,
    ],
    ["a missing manifest", (f) => rmSync(join(f.dir, "ddnn.json")), /ddnn\.json: missing/],
    [
      "a manifest that is not JSON",
      (f) => writeFileSync(join(f.dir, "ddnn.json"), "{ nope"),
      /ddnn\.json: not valid UTF-8 JSON/,
    ],
    [
      "a threshold outside [0, 1]",
      (f) => {
        (f.manifest.stages[0] as { exit: { threshold: number } }).exit.threshold = 1.5;
        writeFileSync(join(f.dir, "ddnn.json"), JSON.stringify(f.manifest));
      },
      /ddnn\.json: stages\[0\]\.exit\.threshold: must be between 0 and 1 \(got 1\.5\)/,
    ],
    [
      "a last stage with an exit",
      (f) => {
        f.manifest.stages[1]!.exit = { threshold: 0.2 };
        writeFileSync(join(f.dir, "ddnn.json"), JSON.stringify(f.manifest));
      },
      /stages\[1\]\.exit: the last stage always answers/,
    ],
    [
      "a wrong format",
      (f) => {
        f.manifest.format = "ddnn-bundle/v9";
        writeFileSync(join(f.dir, "ddnn.json"), JSON.stringify(f.manifest));
      },
      /ddnn\.json: format: .*ddnn-bundle\/v1/,
    ],
    [
      "a bad sha256",
      (f) => {
        f.manifest.stages[0]!.sha256 = "abc";
        writeFileSync(join(f.dir, "ddnn.json"), JSON.stringify(f.manifest));
      },
      /stages\[0\]\.sha256: must be 64 lowercase hex/,
    ],
    [
      "a file outside the bundle",
      (f) => {
        f.manifest.stages[0]!.file = "../device.onnx";
        writeFileSync(join(f.dir, "ddnn.json"), JSON.stringify(f.manifest));
      },
      /stages\[0\]\.file: must be a path inside the bundle/,
    ],
    [
      "duplicate stage names",
      (f) => {
        f.manifest.stages[1]!.name = "device";
        writeFileSync(join(f.dir, "ddnn.json"), JSON.stringify(f.manifest));
      },
      /stages\[1\]\.name: "device" is used by an earlier stage/,
    ],
    [
      "mean with the wrong number of channels",
      (f) => {
        (f.manifest.input as { mean: number[] }).mean = [0.1, 0.2];
        writeFileSync(join(f.dir, "ddnn.json"), JSON.stringify(f.manifest));
      },
      /input\.mean: has 2 values; input\.shape\[0\] says 1 channels/,
    ],
    [
      "a stage file that is not ONNX",
      (f) => {
        writeFileSync(join(f.dir, "server.onnx"), "definitely not a model");
        rehash(f.dir, "server.onnx", f.manifest);
      },
      /server\.onnx: not a loadable ONNX model/,
    ],
  ];

  for (const [what, damage, message] of cases) {
    it(`refuses ${what} with a message naming the file and field`, async () => {
      const f = writeBundle(smallStages());
      damage(f);
      await expect(loadBundle(f.dir)).rejects.toThrow(message);
    });
  }

  const modelCases: [string, (s: FixtureStage[]) => void, RegExp][] = [
    [
      "an input name the model does not have",
      (s) => {
        s[0]!.inputName = "pixels";
      },
      /device\.onnx: ddnn\.json stages\[0\]\.input: manifest says "image", the model's inputs are \[pixels\]/,
    ],
    [
      "a logits name the model does not have",
      (s) => {
        s[1]!.logitsName = "scores";
      },
      /server\.onnx: ddnn\.json stages\[1\]\.logits: manifest says "logits", the model's outputs are \[scores\]/,
    ],
    [
      "a features name the model does not have",
      (s) => {
        s[0]!.featuresName = "hidden";
      },
      /stages\[0\]\.features: manifest says "features", the model's outputs are \[hidden, logits\]|stages\[0\]\.features: manifest says "features", the model's outputs are \[logits, hidden\]/,
    ],
    [
      "logits that do not match the labels",
      (s) => {
        s[1]!.classes = 4;
      },
      /server\.onnx: ddnn\.json stages\[1\]\.logits: "logits" has shape \[batch, 4\], the manifest has 3 labels/,
    ],
    [
      "a stage whose input does not fit the previous stage's features",
      (s) => {
        s[1]!.inShape = [7];
      },
      /server\.onnx: ddnn\.json stages\[1\]\.input: "features" has shape \[batch, 7\], the previous stage's features is \[batch, 6\]/,
    ],
    [
      "a first stage that does not take input.shape",
      (s) => {
        s[0]!.inShape = [1, 5, 4];
      },
      /device\.onnx: ddnn\.json stages\[0\]\.input: "image" has shape \[batch, 1, 5, 4\], the manifest's input.shape is \[batch, 1, 4, 4\]/,
    ],
    [
      "a fixed batch size",
      (s) => {
        s[0]!.batch = 8;
      },
      /fixed batch size 8; export it with a dynamic batch axis/,
    ],
    [
      "a non-float input",
      (s) => {
        s[0]!.inputType = "uint8";
      },
      /"image" is uint8; stages take float32/,
    ],
  ];

  for (const [what, change, message] of modelCases) {
    it(`refuses ${what}`, async () => {
      const stages = smallStages();
      change(stages);
      const f = writeBundle(stages, {
        edit: (m) => {
          // The manifest keeps the contract's names; only the ONNX models differ.
          m.labels = ["a", "b", "c"];
          m.input = { ...(m.input as object), shape: [1, 4, 4] };
          m.stages[0]!.input = "image";
          m.stages[0]!.features = "features";
          m.stages[1]!.input = "features";
          m.stages[1]!.logits = "logits";
        },
      });
      await expect(loadBundle(f.dir)).rejects.toThrow(message);
    });
  }

  it("refuses a corrupt archive", async () => {
    const f = writeBundle(smallStages());
    const archive = packBundle(f.dir);
    const bytes = readFileSync(archive);
    writeFileSync(archive, bytes.subarray(0, bytes.length / 2));
    await expect(readBundle(archive)).rejects.toThrow(
      /bundle\.tar\.gz: not a readable gzip archive/,
    );
    await expect(readBundle(join(f.dir, "nope"))).rejects.toThrow(
      /no such bundle directory or archive/,
    );
  });
});

/**
 * A multi-view bundle (docs/bundle-views.md): smallStages() plus `count - 1` more device stage
 * files, one per view, and a views block whose devices[0] is stages[0]. `edit` may change the
 * block (or the manifest) before it is written.
 */
function writeViewsBundle(
  count = 3,
  edit: (views: Record<string, unknown>, m: Record<string, unknown>) => void = () => {},
): ReturnType<typeof writeBundle> & { viewFiles: string[] } {
  const dir = tempDir("ddnn-views-");
  const stages = smallStages();
  const more = Array.from({ length: count - 1 }, (_, i) => {
    const file = `device-view${i + 1}.onnx`;
    const bytes = stageOnnx({ ...stages[0]!, seed: 100 + i });
    writeFileSync(join(dir, file), bytes);
    return { file, sha256: sha(bytes) };
  });
  const f = writeBundle(stages, {
    dir,
    edit: (m) => {
      const first = m.stages[0]!;
      const views: Record<string, unknown> = {
        count,
        localAggregation: "max",
        featureAggregation: "max",
        devices: [{ file: first.file, sha256: first.sha256 }, ...more],
        futureViewsField: { kept: true },
      };
      m.views = views;
      edit(views, m);
    },
  });
  return { ...f, viewFiles: ["device.onnx", ...more.map((d) => d.file)] };
}

describe("a multi-view bundle (views block)", () => {
  it("loads: readBundle verifies it, the stages still chain as one device on view 0", async () => {
    const f = writeViewsBundle(3);
    const { bundle, stages } = await loadBundle(f.dir);
    expect(bundle.manifest.views).toMatchObject({
      count: 3,
      localAggregation: "max",
      featureAggregation: "max",
      futureViewsField: { kept: true },
    });
    expect(bundle.manifest.views?.devices.map((d) => d.file)).toEqual(f.viewFiles);
    expect(stages.map((s) => s.spec.name)).toEqual(["device", "server"]);
    const fromArchive = await readBundle(packBundle(f.dir));
    expect(fromArchive.digest).toBe(bundle.digest);
  });

  it("accepts every aggregation the contract names, and up to any number of views", () => {
    for (const local of ["max", "avg"])
      for (const feature of ["concat", "max", "avg"]) {
        const f = writeViewsBundle(6, (v) => {
          v.localAggregation = local;
          v.featureAggregation = feature;
        });
        const m = parseManifest(readFileSync(join(f.dir, "ddnn.json")));
        expect([m.views?.localAggregation, m.views?.featureAggregation]).toEqual([local, feature]);
      }
  });

  it("leaves a bundle without views as it was: no views field, K = 1", () => {
    const f = writeBundle(smallStages());
    expect(parseManifest(readFileSync(join(f.dir, "ddnn.json"))).views).toBeUndefined();
  });

  const viewCases: [
    string,
    (v: Record<string, unknown>, m: Record<string, unknown>) => void,
    RegExp,
  ][] = [
    [
      "one view",
      (v) => {
        v.count = 1;
        v.devices = (v.devices as unknown[]).slice(0, 1);
      },
      /views\.count: must be at least 2 \(a bundle without a views block has one view\)/,
    ],
    [
      "a view count the devices do not match",
      (v) => {
        v.count = 4;
      },
      /views\.devices: has 3 entries; views\.count says 4 \(one per view\)/,
    ],
    [
      "a view 0 that is not stage 0",
      (v) => {
        const devices = v.devices as { file: string }[];
        [devices[0], devices[1]] = [devices[1]!, devices[0]!];
      },
      /views\.devices\[0\]: must be stages\[0\] \(file "device\.onnx" and its sha256\)/,
    ],
    [
      "two views sharing a file",
      (v) => {
        const devices = v.devices as { file: string; sha256: string }[];
        devices[2] = { ...devices[1]! };
      },
      /views\.devices\[2\]\.file: "device-view1\.onnx" is used by an earlier view/,
    ],
    [
      "a view whose file is a later stage's",
      (v, m) => {
        const server = (m.stages as { file: string; sha256: string }[])[1]!;
        (v.devices as unknown[])[1] = { file: server.file, sha256: server.sha256 };
      },
      /views\.devices\[1\]\.file: "server\.onnx" is used by a stage/,
    ],
    [
      "an unknown local aggregation",
      (v) => {
        v.localAggregation = "sum";
      },
      /views\.localAggregation: .*"max"\|"avg"/,
    ],
    [
      "an unknown feature aggregation",
      (v) => {
        v.featureAggregation = "min";
      },
      /views\.featureAggregation: .*"concat"\|"max"\|"avg"/,
    ],
    [
      "a view file outside the bundle",
      (v) => {
        (v.devices as { file: string }[])[1]!.file = "../device-view1.onnx";
      },
      /views\.devices\[1\]\.file: must be a path inside the bundle/,
    ],
    [
      "a view without a sha256",
      (v) => {
        delete (v.devices as { sha256?: string }[])[2]!.sha256;
      },
      /views\.devices\[2\]\.sha256/,
    ],
  ];

  for (const [what, damage, message] of viewCases) {
    it(`refuses ${what}, naming the field`, async () => {
      const f = writeViewsBundle(3, damage);
      await expect(readBundle(f.dir)).rejects.toThrow(message);
    });
  }

  it("readViewsBundle verifies every view's file, from a directory or an archive", async () => {
    const f = writeViewsBundle(3);
    const files = f.viewFiles.map((file) => new Uint8Array(readFileSync(join(f.dir, file))));
    for (const path of [f.dir, packBundle(f.dir), packBundle(f.dir, true)]) {
      const r = await readViewsBundle(path);
      expect(r.views.count).toBe(3);
      expect(r.deviceBytes).toEqual(files);
      expect(r.deviceBytes[0]).toEqual(r.bundle.stageBytes[0]);
    }
  });

  it("readViewsBundle gives a bundle without views one view, stage 0", async () => {
    const f = writeBundle(smallStages());
    const r = await readViewsBundle(f.dir);
    expect(r.views).toEqual(viewsOf(r.bundle.manifest));
    expect(r.views.count).toBe(1);
    expect(r.views.devices).toEqual([
      { file: "device.onnx", sha256: f.manifest.stages[0]!.sha256 },
    ]);
    expect(r.deviceBytes).toEqual([r.bundle.stageBytes[0]]);
  });

  it("readViewsBundle refuses a missing or altered view file, naming it and its field", async () => {
    const missing = writeViewsBundle(3);
    rmSync(join(missing.dir, "device-view2.onnx"));
    await expect(readViewsBundle(missing.dir)).rejects.toThrow(
      /device-view2\.onnx: missing \(named by ddnn\.json views\.devices\[2\]\.file\)/,
    );
    const altered = writeViewsBundle(3);
    writeFileSync(join(altered.dir, "device-view1.onnx"), "not the view's model");
    const message =
      /device-view1\.onnx\]?: sha256 mismatch: ddnn\.json views\.devices\[1\]\.sha256 is [0-9a-f]{64}, the file hashes to/;
    await expect(readViewsBundle(altered.dir)).rejects.toThrow(message);
    await expect(readViewsBundle(packBundle(altered.dir))).rejects.toThrow(message);
  });
});
