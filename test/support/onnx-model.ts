/**
 * Writes small ONNX models byte by byte (protobuf by hand), so loader and pipeline tests can make
 * any tensor names, shapes and weights without Python, and compute the expected answer in JS.
 *
 * A stage is: x [batch, ...inShape] -> Flatten -> Gemm(Wf) -> Relu = features [batch, F]
 *             features -> Gemm(Wc) = logits [batch, C]     (the last stage: Flatten -> Gemm(Wc))
 */

import { FLOAT, Proto, randomValues, UINT8, valueInfo } from "../../codegen/test-models.js";

function initializer(name: string, dims: readonly number[], values: Float32Array): Proto {
  const t = new Proto();
  for (const d of dims) t.varint(1, d);
  return t
    .varint(2, FLOAT)
    .string(8, name)
    .bytes(9, new Uint8Array(values.buffer.slice(0)));
}

function node(op: string, inputs: string[], outputs: string[], attrs: Proto[] = []): Proto {
  const n = new Proto();
  for (const i of inputs) n.string(1, i);
  for (const o of outputs) n.string(2, o);
  n.string(3, `${op}_${outputs[0]}`).string(4, op);
  for (const a of attrs) n.message(5, a);
  return n;
}

/** Deterministic weights in [-1, 1) (a small LCG), so tests can recompute them. */
export function weights(seed: number, n: number): Float32Array {
  return randomValues(seed, n);
}

export interface StageModel {
  inputName: string;
  /** Shape of one sample of the input. */
  inShape: number[];
  featuresName?: string;
  /** Width of the features output (omit for the last stage). */
  featureSize?: number;
  logitsName: string;
  classes: number;
  seed: number;
  /** Batch dimension as written in the model: a name (dynamic) or a number (fixed). */
  batch?: number | string;
  /** Input element type (default float). */
  inputType?: "float" | "uint8";
}

export interface StageWeights {
  wf?: Float32Array;
  wc: Float32Array;
}

export function stageWeights(m: StageModel): StageWeights {
  const d = m.inShape.reduce((a, b) => a * b, 1);
  if (m.featureSize !== undefined) {
    return {
      wf: weights(m.seed, d * m.featureSize),
      wc: weights(m.seed + 1, m.featureSize * m.classes),
    };
  }
  return { wc: weights(m.seed + 1, d * m.classes) };
}

/** Serialises one stage as an ONNX model (opset 13). */
export function stageOnnx(m: StageModel): Uint8Array {
  const outputs =
    m.featureSize === undefined ? [m.logitsName] : [m.logitsName, m.featuresName ?? "features"];
  if (outputs.includes(m.inputName) || new Set(outputs).size !== outputs.length)
    throw new Error(
      `stage model: input "${m.inputName}" and outputs [${outputs.join(", ")}] must have distinct names (ONNX forbids a duplicate definition)`,
    );
  const d = m.inShape.reduce((a, b) => a * b, 1);
  const w = stageWeights(m);
  const batch = m.batch ?? "batch";
  const g = new Proto().string(2, "stage");
  const axis = new Proto().string(1, "axis").varint(3, 1).varint(20, 2);
  let x = m.inputName;
  if (m.inputType === "uint8") {
    const to = new Proto().string(1, "to").varint(3, FLOAT).varint(20, 2);
    g.message(1, node("Cast", [m.inputName], ["asfloat"], [to]));
    x = "asfloat";
  }
  g.message(1, node("Flatten", [x], ["flat"], [axis]));
  let head = "flat";
  let headSize = d;
  if (m.featureSize !== undefined && w.wf) {
    g.message(1, node("Gemm", ["flat", "wf"], ["pre"]));
    g.message(1, node("Relu", ["pre"], [m.featuresName ?? "features"]));
    g.message(5, initializer("wf", [d, m.featureSize], w.wf));
    head = m.featuresName ?? "features";
    headSize = m.featureSize;
  }
  g.message(1, node("Gemm", [head, "wc"], [m.logitsName]));
  g.message(5, initializer("wc", [headSize, m.classes], w.wc));
  g.message(
    11,
    valueInfo(m.inputName, [batch, ...m.inShape], m.inputType === "uint8" ? UINT8 : FLOAT),
  );
  if (m.featureSize !== undefined)
    g.message(12, valueInfo(m.featuresName ?? "features", [batch, m.featureSize]));
  g.message(12, valueInfo(m.logitsName, [batch, m.classes]));
  const opset = new Proto().string(1, "").varint(2, 13);
  return new Proto()
    .varint(1, 7)
    .string(2, "ddnn-fog-tests")
    .message(7, g)
    .message(8, opset)
    .done();
}

/** Reference forward pass in float64 (tests compare with a tolerance). */
export function forward(
  m: StageModel,
  x: Float32Array,
  n: number,
): { features?: Float64Array; logits: Float64Array } {
  const d = m.inShape.reduce((a, b) => a * b, 1);
  const w = stageWeights(m);
  const matmul = (a: ArrayLike<number>, rows: number, k: number, b: Float32Array, cols: number) => {
    const out = new Float64Array(rows * cols);
    for (let r = 0; r < rows; r++)
      for (let c = 0; c < cols; c++) {
        let s = 0;
        for (let i = 0; i < k; i++) s += (a[r * k + i] as number) * (b[i * cols + c] as number);
        out[r * cols + c] = s;
      }
    return out;
  };
  if (w.wf && m.featureSize !== undefined) {
    const features = matmul(x, n, d, w.wf, m.featureSize).map((v) => Math.max(0, v));
    return { features, logits: matmul(features, n, m.featureSize, w.wc, m.classes) };
  }
  return { logits: matmul(x, n, d, w.wc, m.classes) };
}
