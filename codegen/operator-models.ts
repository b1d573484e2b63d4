/**
 * Bundles whose device stage uses every operator and attribute the C generator supports (beyond
 * what the shipped and synthetic bundles use): asymmetric pads, strides, dilations, groups,
 * unfolded BatchNormalization, both pools with ceil_mode and count_include_pad, Concat, Clip,
 * Sigmoid, broadcasting Add/Sub/Mul/Div, MatMul + Add, Gemm with alpha/beta/transA/transB,
 * GlobalAveragePool, Reshape, 1-D convolutions and a one-stage bundle.
 */
import { join } from "node:path";
import { GraphBuilder, writeTestBundle } from "./test-models.js";

/** Two stages on 3x12x12 inputs, 10 classes; the device stage covers the 2-D operators. */
export function operators2d(dir: string): string {
  const g = new GraphBuilder();
  g.input("image", ["batch", 3, 12, 12]);
  const c1 = g.node("Conv", ["image", g.weight([8, 3, 3, 3]), g.weight([8])], {
    kernel_shape: { ints: [3, 3] },
    pads: { ints: [1, 1, 1, 1] },
  });
  const bn = (x: string, c: number) =>
    g.node(
      "BatchNormalization",
      [
        x,
        g.weight([c], undefined, 1),
        g.weight([c], undefined, 0.2),
        g.weight([c], undefined, 0.1),
        g.weight(
          [c],
          Array.from({ length: c }, (_, i) => 0.5 + i / c),
        ),
      ],
      { epsilon: { f: 1e-3 } },
    );
  const r1 = g.node("Relu", [bn(c1, 8)]);
  // Grouped, dilated, no bias.
  const c2 = g.node("Conv", [r1, g.weight([8, 4, 3, 3])], {
    group: 2,
    dilations: { ints: [2, 2] },
    pads: { ints: [2, 2, 2, 2] },
  });
  const s2 = g.node("Sigmoid", [c2]);
  const b2 = bn(s2, 8); // after a Sigmoid: cannot be folded
  const mp = g.node("MaxPool", [b2], {
    kernel_shape: { ints: [3, 3] },
    strides: { ints: [2, 2] },
    pads: { ints: [1, 1, 1, 1] },
    ceil_mode: 1,
  });
  const ap = g.node("AveragePool", [r1], {
    kernel_shape: { ints: [2, 2] },
    strides: { ints: [2, 2] },
    pads: { ints: [1, 1, 1, 1] },
    count_include_pad: 1,
  });
  // Asymmetric pads, stride 2: [8,12,12] -> [4,7,7]; pooled with asymmetric pads to [4,7,7].
  const c3 = g.node("Conv", [r1, g.weight([4, 8, 3, 3]), g.weight([4])], {
    strides: { ints: [2, 2] },
    pads: { ints: [1, 1, 2, 2] },
  });
  const ap2 = g.node("AveragePool", [c3], {
    kernel_shape: { ints: [3, 2] },
    strides: { ints: [1, 1] },
    pads: { ints: [1, 0, 1, 1] },
  });
  const cat = g.node("Concat", [mp, ap, ap2], { axis: 1 });
  const lo = g.weight([], [-0.5]);
  const hi = g.weight([], [0.8]);
  const cl = g.node("Clip", [cat, lo, hi]);
  const ad = g.node("Add", [cl, g.weight([20, 1, 1])]);
  const mu = g.node("Mul", [ad, g.weight([1, 1, 7], undefined, 2)]);
  const sb = g.node("Sub", [mu, g.weight([], [0.25])]);
  const divisor = g.weight(
    [20, 7, 1],
    Array.from({ length: 140 }, (_, i) => 0.5 + (i % 11) / 10),
  );
  const features = g.node("Div", [sb, divisor], {}, "features");
  // Heads: Gemm (alpha, beta, transB) on the pooled features, MatMul + Add on all of them.
  const gap = g.node("GlobalAveragePool", [features]);
  const flat = g.node("Flatten", [gap], { axis: 1 });
  const head1 = g.node("Gemm", [flat, g.weight([10, 20]), g.weight([10])], {
    transB: 1,
    alpha: { f: 0.5 },
    beta: { f: 2 },
  });
  const all = g.node("Reshape", [features, g.int64([2], [0, -1])]);
  const mm = g.node("MatMul", [all, g.weight([980, 10], undefined, 0.05)]);
  const head2 = g.node("Add", [mm, g.weight([10])]);
  g.node("Add", [head1, head2], {}, "logits");
  g.output("logits", ["batch", 10]).output("features", ["batch", 20, 7, 7]);
  const server = new GraphBuilder();
  server.input("features", ["batch", 20, 7, 7]);
  const f = server.node("Flatten", ["features"], { axis: 1 });
  server.node("Gemm", [f, server.weight([980, 10], undefined, 0.05)], {}, "logits");
  server.output("logits", ["batch", 10]);
  return writeTestBundle(join(dir, "operators-2d"), {
    name: "operators-2d",
    input: { shape: [3, 12, 12], scale: 1 / 255, mean: [0.5, 0.4, 0.3], std: [0.25, 0.3, 0.2] },
    classes: 10,
    stages: [
      {
        name: "device",
        onnx: g.bytes(),
        input: "image",
        features: "features",
        logits: "logits",
        threshold: 0.5,
      },
      { name: "server", onnx: server.bytes(), input: "features", logits: "logits" },
    ],
  });
}

/** One stage (no exit) on [4, 20] inputs: 1-D convolution, pools, Gemm with transA. */
export function operators1d(dir: string): string {
  const g = new GraphBuilder();
  g.input("signal", ["batch", 4, 20]);
  const c = g.node("Conv", ["signal", g.weight([6, 4, 5]), g.weight([6])], {
    strides: { ints: [2] },
    pads: { ints: [2, 2] },
  });
  const r = g.node("Relu", [c]);
  const c2 = g.node("Conv", [r, g.weight([6, 1, 3])], {
    group: 6,
    auto_pad: "SAME_UPPER",
    dilations: { ints: [1] },
  });
  const mp = g.node("MaxPool", [c2], { kernel_shape: { ints: [2] }, strides: { ints: [2] } });
  const col = g.node("Reshape", [mp, g.int64([2], [30, 1])]);
  g.node("Gemm", [col, g.weight([30, 5])], { transA: 1 }, "scores");
  g.output("scores", ["batch", 5]);
  return writeTestBundle(join(dir, "operators-1d"), {
    name: "operators-1d",
    input: { shape: [4, 20], scale: 1 / 255, mean: [0], std: [1] },
    classes: 5,
    stages: [{ name: "sensor", onnx: g.bytes(), input: "signal", logits: "scores" }],
  });
}

/** A device stage with an operator the library does not have. */
export function unsupportedOperator(dir: string): string {
  const g = new GraphBuilder();
  g.input("image", ["batch", 1, 4, 4]);
  const flat = g.node("Flatten", ["image"], { axis: 1 });
  const pre = g.node("Gemm", [flat, g.weight([16, 3])], {}, "features");
  g.node("Softmax", [pre], { axis: 1 }, "logits");
  g.output("logits", ["batch", 3]).output("features", ["batch", 3]);
  const server = new GraphBuilder();
  server.input("features", ["batch", 3]);
  server.node("Gemm", ["features", server.weight([3, 3])], {}, "logits");
  server.output("logits", ["batch", 3]);
  return writeTestBundle(join(dir, "unsupported"), {
    name: "unsupported",
    input: { shape: [1, 4, 4], scale: 1 / 255, mean: [0], std: [1] },
    classes: 3,
    stages: [
      {
        name: "device",
        onnx: g.bytes(),
        input: "image",
        features: "features",
        logits: "logits",
        threshold: 0.5,
      },
      { name: "server", onnx: server.bytes(), input: "features", logits: "logits" },
    ],
  });
}
