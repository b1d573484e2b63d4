"""The multi-view (horizontal) DDNN: K end devices, each with its own device stage on its own
view, a local aggregator and the later stages (edge optional, server).

- Each device runs the device stage of the base arch (`deep`, `shallow` or `deep3`) on its view:
  view v -> (features_v, logits_v). The K device stages have their own weights.
- The local aggregator merges the device exits' logits of the views present (`max`: elementwise
  maximum, `avg`: their mean, as DDNN's max and average pooling); the local exit is that
  aggregate's normalized entropy against the threshold.
- The feature aggregator merges the devices' features into the next stage's input: `max` and
  `avg` elementwise over the views present (same shape as one device's features), `concat`
  along the channel axis in view order with zeros in the slot of a missing view (K times the
  channels).
- The later stages are the base arch's stages after the device (for `concat` the first conv
  takes K times the channels), each with an exit but the last.

The aggregation is written so its float32 arithmetic is one exact order another runtime can
repeat (docs/bundle-views.md): max over the views present; avg = ((x_0 + x_1) + ...) / n over
the views present in view order, a division by the count; concat copies.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from .models import ARCHS, DDNN, BinaryConv2d, Stage, build_model, stage_macs

LOCAL_AGGS = ("max", "avg")
FEATURE_AGGS = ("concat", "max", "avg")
# Probability that training drops a view of a sample (trainer/views_train.py): with K = 3, 42% of
# the samples keep every view, 42% two, 16% one.
DEFAULT_VIEW_DROPOUT = 0.25


def aggregate(tensors: Sequence[torch.Tensor], present: torch.Tensor, how: str) -> torch.Tensor:
    """Merges per-view tensors [N, ...] (view order) over the views present (`present` [N, K] bool,
    at least one per row)."""
    if len(tensors) != present.shape[1]:
        raise ValueError(f"{len(tensors)} views but a presence mask for {present.shape[1]}")
    shape = (-1,) + (1,) * (tensors[0].dim() - 1)
    masks = [present[:, v].reshape(shape) for v in range(len(tensors))]
    if how == "concat":
        return torch.cat([torch.where(m, t, torch.zeros_like(t)) for m, t in zip(masks, tensors)], dim=1)
    if how == "max":
        low = torch.full_like(tensors[0], float("-inf"))
        out = torch.where(masks[0], tensors[0], low)
        for m, t in zip(masks[1:], tensors[1:]):
            out = torch.maximum(out, torch.where(m, t, low))
        return out
    if how == "avg":
        total = torch.where(masks[0], tensors[0], torch.zeros_like(tensors[0]))
        for m, t in zip(masks[1:], tensors[1:]):
            total = total + torch.where(m, t, torch.zeros_like(t))
        count = present.sum(dim=1).to(tensors[0].dtype).reshape(shape)
        return total / count
    raise ValueError(f"unknown aggregation {how!r}")


def _widen_first_conv(stage: Stage, factor: int) -> None:
    """For `concat`: the stage's first conv takes `factor` times the channels."""
    for parent in stage.body.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                cls = BinaryConv2d if isinstance(child, BinaryConv2d) else nn.Conv2d
                setattr(parent, name, cls(child.in_channels * factor, child.out_channels, child.kernel_size,
                                          child.stride, child.padding, child.dilation, child.groups,
                                          child.bias is not None))
                return
    raise ValueError("the stage after the device has no conv to take concatenated features")


class MultiViewDDNN(nn.Module):
    """`devices[v]` runs on view v; `later` are the stages after the aggregators. `names` are the
    exits: the local aggregator's (named after the device stage), then each later stage's."""

    def __init__(self, devices: Sequence[Stage], later: Sequence[Stage], names: Sequence[str],
                 local_agg: str, feature_agg: str) -> None:
        super().__init__()
        if local_agg not in LOCAL_AGGS:
            raise ValueError(f"--local-agg {local_agg!r}: choose from {', '.join(LOCAL_AGGS)}")
        if feature_agg not in FEATURE_AGGS:
            raise ValueError(f"--feature-agg {feature_agg!r}: choose from {', '.join(FEATURE_AGGS)}")
        if len(later) + 1 != len(names):
            raise ValueError(f"{len(later)} later stages need {len(later) + 1} names")
        self.devices = nn.ModuleList(devices)
        self.later = nn.ModuleList(later)
        self.names = list(names)
        self.views = len(devices)
        self.local_agg = local_agg
        self.feature_agg = feature_agg

    def forward(self, x: torch.Tensor, present: torch.Tensor | None = None) -> dict[str, list[torch.Tensor]]:
        """x: [N, K, C, H, W]; present: [N, K] bool (default all). Returns "deviceFeatures" and
        "deviceLogits" (per view), "features" (the aggregate, then each non-last later stage's),
        and "exits" (logits of every exit: the local aggregate, then each later stage)."""
        n, k = x.shape[:2]
        if k != self.views:
            raise ValueError(f"input has {k} views, the model {self.views}")
        if present is None:
            present = torch.ones(n, k, dtype=torch.bool)
        device = [stage(x[:, v]) for v, stage in enumerate(self.devices)]
        features, exits = self.after_devices(device, present)
        return {"deviceFeatures": [f for f, _ in device], "deviceLogits": [lg for _, lg in device],
                "features": features, "exits": exits}

    def after_devices(self, device: Sequence[tuple[torch.Tensor, torch.Tensor]],
                      present: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The aggregators and the later stages on the devices' (features, logits), view order:
        (the aggregated features then each non-last later stage's features, every exit's logits)."""
        exits = [aggregate([lg for _, lg in device], present, self.local_agg)]
        h = aggregate([f for f, _ in device], present, self.feature_agg)
        features = [h]
        for stage in self.later:
            out = stage(h)
            if isinstance(out, tuple):
                h, lg = out
                features.append(h)
            else:
                lg = out
            exits.append(lg)
        return features, exits


def build_views_model(config: dict[str, Any]) -> MultiViewDDNN:
    """From the config the checkpoint stores: base_arch, views, local_agg, feature_agg plus the
    base arch's keys (input_shape, filters, classes, stage_names)."""
    arch = config["base_arch"]
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r} (choose from {', '.join(ARCHS)})")
    views = int(config["views"])
    # One base model per view for its device stage (own weights, own initialization), the first
    # one's later stages for the rest of the network.
    bases: list[DDNN] = [build_model(arch, config) for _ in range(views)]
    devices = [b.stages[0] for b in bases]
    later = list(bases[0].stages[1:])
    if config["feature_agg"] == "concat" and later:
        _widen_first_conv(later[0], views)
    return MultiViewDDNN(devices, later, bases[0].names, config["local_agg"], config["feature_agg"])


def device_macs(model: MultiViewDDNN, input_shape: Sequence[int]) -> tuple[int, list[int]]:
    """Multiply-adds per sample of one device stage and of each later stage."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, model.views, *input_shape))
    one = stage_macs(DDNN([model.devices[0]], ["device"]), input_shape)[0]
    later = stage_macs(DDNN(list(model.later), model.names[1:]), list(out["features"][0].shape[1:])) \
        if len(model.later) else []
    model.train(was_training)
    return one, later
