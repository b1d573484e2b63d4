"""The DDNN variants. A model is a list of stages; each stage maps its input to (features, logits),
and the last stage to logits only. The device stage is what runs on the IoT board, so its
`features` (what travels over MQTT) are pooled down to at most F x 7 x 7 on 28x28 inputs.

- `deep` (paper, Figure 6 right): device = one conv block + linear exit; server = four conv layers.
- `shallow` (paper, Figure 6 left, eBNN style): device = conv block + binarized conv block +
  binarized linear exit; server = two conv layers.
- `deep3`: device, edge and server stages, each with an exit.
- `synth`: small random-weight models of any shape, for cross-checking runtimes (see synth.py).
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

ARCHS = ("deep", "shallow", "deep3")

STAGE_NAMES = {
    "deep": ["device", "server"],
    "shallow": ["device", "server"],
    "deep3": ["device", "edge", "server"],
}


class SignSTE(torch.autograd.Function):
    """sign(w) with +1 at zero (so weights are strictly +-1); backward is the straight-through
    estimator, clipped to |w| <= 1 as in BinaryConnect/eBNN."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(w)
        return torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (w,) = ctx.saved_tensors
        return grad * (w.abs() <= 1).to(grad.dtype)


def binarize(w: torch.Tensor) -> torch.Tensor:
    """sign(w) * alpha, alpha = mean |w| per output channel (row 0 of the weight)."""
    alpha = w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)
    return SignSTE.apply(w) * alpha


class BinaryConv2d(nn.Conv2d):
    """Conv2d whose weights are binarized on every forward; the float weights are what Adam updates."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, binarize(self.weight), self.bias, self.stride, self.padding, self.dilation, self.groups)


class BinaryLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, binarize(self.weight), self.bias)


class Stage(nn.Module):
    """body(x) -> features; head(features) -> logits. The last stage returns logits only."""

    def __init__(self, body: nn.Module, head: nn.Module, last: bool) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.last = last

    def forward(self, x: torch.Tensor) -> Any:
        features = self.body(x)
        logits = self.head(features)
        return logits if self.last else (features, logits)


class DDNN(nn.Module):
    def __init__(self, stages: Sequence[Stage], names: Sequence[str]) -> None:
        super().__init__()
        if len(stages) != len(names):
            raise ValueError(f"{len(stages)} stages but {len(names)} names")
        self.stages = nn.ModuleList(stages)
        self.names = list(names)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All stages on all samples; returns each stage's logits (joint training needs every exit)."""
        return run_stages(self, x)[1]


def conv_block(cin: int, cout: int, pool: int = 0, binary: bool = False) -> list[nn.Module]:
    conv = (BinaryConv2d if binary else nn.Conv2d)(cin, cout, 3, padding=1, bias=False)
    layers: list[nn.Module] = [conv, nn.BatchNorm2d(cout), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(pool))
    return layers


def linear_head(in_features: int, classes: int, binary: bool = False) -> nn.Module:
    return nn.Sequential(nn.Flatten(), (BinaryLinear if binary else nn.Linear)(in_features, classes))


def global_head(channels: int, classes: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))


def _spatial(size: int, *pools: int) -> int:
    for p in pools:
        size //= p
    return size


def build_model(arch: str, config: dict[str, Any]) -> DDNN:
    """Builds an architecture from its config (the same dict the checkpoint stores)."""
    if arch == "synth":
        return build_synth(config)
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r} (choose from {', '.join(ARCHS)})")
    c, h, w = config["input_shape"]
    f = int(config["filters"])
    classes = int(config["classes"])
    names = config.get("stage_names") or STAGE_NAMES[arch]
    if arch == "deep":
        # Pool 4 right after the one conv: 28x28 -> 7x7, so the device's features are F x 7 x 7.
        hd, wd = _spatial(h, 4), _spatial(w, 4)
        device = Stage(nn.Sequential(*conv_block(c, f, pool=4)), linear_head(f * hd * wd, classes), last=False)
        server = Stage(nn.Sequential(*conv_block(f, f), *conv_block(f, 2 * f, pool=2),
                                     *conv_block(2 * f, 2 * f), *conv_block(2 * f, 2 * f)),
                       global_head(2 * f, classes), last=True)
        return DDNN([device, server], names)
    if arch == "shallow":
        hd, wd = _spatial(h, 2, 2), _spatial(w, 2, 2)
        device = Stage(nn.Sequential(*conv_block(c, f, pool=2), *conv_block(f, f, pool=2, binary=True)),
                       linear_head(f * hd * wd, classes, binary=True), last=False)
        server = Stage(nn.Sequential(*conv_block(f, 2 * f, pool=2), *conv_block(2 * f, 2 * f)),
                       global_head(2 * f, classes), last=True)
        return DDNN([device, server], names)
    # deep3: the edge pools to 2F x 3 x 3 so its features stay as small as the device's.
    hd, wd = _spatial(h, 4), _spatial(w, 4)
    he, we = _spatial(h, 4, 2), _spatial(w, 4, 2)
    device = Stage(nn.Sequential(*conv_block(c, f, pool=4)), linear_head(f * hd * wd, classes), last=False)
    edge = Stage(nn.Sequential(*conv_block(f, f), *conv_block(f, 2 * f, pool=2)),
                 linear_head(2 * f * he * we, classes), last=False)
    server = Stage(nn.Sequential(*conv_block(2 * f, 2 * f), *conv_block(2 * f, 2 * f)),
                   global_head(2 * f, classes), last=True)
    return DDNN([device, edge, server], names)


def build_synth(config: dict[str, Any]) -> DDNN:
    """Random-weight DDNN of any stage count (1..4) and input shape. 3-d inputs [C, H, W] get
    stride-2 convs; other ranks are flattened into a small MLP. No BatchNorm, so nothing depends
    on running statistics."""
    shape = list(config["input_shape"])
    classes = int(config["classes"])
    names = list(config["stage_names"])
    width = int(config.get("width", 8))
    stages: list[Stage] = []
    if len(shape) == 3:
        c, h, w = shape
        cin = c
        for k in range(len(names)):
            h, w = (h + 1) // 2, (w + 1) // 2
            body = nn.Sequential(nn.Conv2d(cin, width, 3, stride=2, padding=1), nn.ReLU())
            stages.append(Stage(body, linear_head(width * h * w, classes), last=k == len(names) - 1))
            cin = width
    else:
        n = 1
        for d in shape:
            n *= d
        for k in range(len(names)):
            body = nn.Sequential(nn.Flatten(), nn.Linear(n, 4 * width), nn.ReLU())
            stages.append(Stage(body, linear_head(4 * width, classes), last=k == len(names) - 1))
            n = 4 * width
    return DDNN(stages, names)


def bake_binary(model: nn.Module) -> nn.Module:
    """A copy where every binarized layer is an ordinary Conv2d/Linear holding sign(w) * alpha,
    so the exported ONNX uses plain Conv/Gemm ops and ships no float shadow weights."""
    baked = copy.deepcopy(model)

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, BinaryConv2d):
                conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                 child.padding, child.dilation, child.groups, child.bias is not None)
                conv.weight.data.copy_(binarize(child.weight.detach()))
                if child.bias is not None:
                    conv.bias.data.copy_(child.bias.detach())
                setattr(parent, name, conv)
            elif isinstance(child, BinaryLinear):
                lin = nn.Linear(child.in_features, child.out_features, child.bias is not None)
                lin.weight.data.copy_(binarize(child.weight.detach()))
                if child.bias is not None:
                    lin.bias.data.copy_(child.bias.detach())
                setattr(parent, name, lin)
            else:
                swap(child)

    swap(baked)
    return baked


def stage_macs(model: DDNN, input_shape: Sequence[int]) -> list[int]:
    """Multiply-adds per sample of each stage (Conv2d and Linear only; BN/ReLU/pool are noise)."""
    counts = [0] * len(model.stages)
    current = [0]
    hooks = []

    def conv_hook(m: nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        counts[current[0]] += int(out[0].numel()) * k

    def linear_hook(m: nn.Linear, _inp: Any, out: torch.Tensor) -> None:
        counts[current[0]] += m.in_features * m.out_features

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = torch.zeros(1, *input_shape)
            for k, stage in enumerate(model.stages):
                current[0] = k
                out = stage(x)
                if isinstance(out, tuple):
                    x = out[0]
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return counts


def run_stages(model: "DDNN", x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Runs every stage; returns (features of each non-last stage, logits of each stage)."""
    features, logits = [], []
    for stage in model.stages:
        out = stage(x)
        if isinstance(out, tuple):
            x, lg = out
            features.append(x)
        else:
            lg = out
        logits.append(lg)
    return features, logits
