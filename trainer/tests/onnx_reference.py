"""A tiny ONNX interpreter for the ops our exports use, so the tests can check what the ONNX files
compute without onnxruntime (which Debian does not package for Python). Unknown ops raise: a new
op in an export is worth a look from the TypeScript side too."""

from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    env = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}
    env.update({k: torch.from_numpy(v) for k, v in feeds.items()})
    for node in model.graph.node:
        a = _attrs(node)
        x = [env[i] if i else None for i in node.input]
        op = node.op_type
        if op == "Conv":
            pads = a.get("pads", [0, 0, 0, 0])
            if pads[:2] != pads[2:]:
                raise NotImplementedError("asymmetric Conv pads")
            y = F.conv2d(x[0], x[1], x[2] if len(x) > 2 else None, a.get("strides", 1), pads[:2],
                         a.get("dilations", 1), a.get("group", 1))
        elif op == "Relu":
            y = torch.relu(x[0])
        elif op == "MaxPool":
            pads = a.get("pads", [0, 0, 0, 0])
            y = F.max_pool2d(x[0], a["kernel_shape"], a.get("strides", a["kernel_shape"]), pads[:2],
                             ceil_mode=bool(a.get("ceil_mode", 0)))
        elif op == "GlobalAveragePool":
            y = x[0].mean(dim=(2, 3), keepdim=True)
        elif op == "Flatten":
            y = x[0].flatten(a.get("axis", 1))
        elif op == "Gemm":
            m, w = x[0], x[1]
            if a.get("transA", 0):
                m = m.T
            if a.get("transB", 0):
                w = w.T
            y = a.get("alpha", 1.0) * (m @ w)
            if len(x) > 2 and x[2] is not None:
                y = y + a.get("beta", 1.0) * x[2]
        elif op == "BatchNormalization":
            shape = (1, -1) + (1,) * (x[0].dim() - 2)
            y = (x[0] - x[3].reshape(shape)) / torch.sqrt(x[4].reshape(shape) + a.get("epsilon", 1e-5)) \
                * x[1].reshape(shape) + x[2].reshape(shape)
        else:
            raise NotImplementedError(f"op {op} in {model.graph.name}")
        env[node.output[0]] = y
    return [env[o.name].numpy() for o in model.graph.output]
