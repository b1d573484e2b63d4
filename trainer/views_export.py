"""Writes a multi-view `ddnn-bundle/v1` (docs/bundle-views.md): one device stage file per view,
the later stages, and `ddnn.json` with a `views` block.

`stages` stays an ordinary Contract 1 chain: stages[0] is view 0's device stage (its file and
sha256 are also `views.devices[0]`) and carries the local aggregator's exit threshold, so a
reader that knows nothing of views runs the model as one device on view 0, which for `max` and
`avg` feature aggregation is exactly the multi-view model with only view 0 present.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import onnx
import torch

from .export import (CHECKPOINT, CHECKPOINT_FORMAT, DEFAULT_OPSET, FORMAT, MANIFEST, _dims, check_stage_names,
                     export_stages, sha256_file, stage_tensor_names)
from .models import DDNN
from .views_model import MultiViewDDNN, device_macs


def view_file(stage_name: str, view: int) -> str:
    return f"{stage_name}-view{view}.onnx"


def write_views_bundle(out_dir: str, model: MultiViewDDNN, *, config: dict[str, Any], name: str, version: str,
                       labels: Sequence[str], input_spec: dict[str, Any], thresholds: Sequence[float],
                       evaluation: dict[str, Any] | None, opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """Exports each view's device stage and the later stages, writes ddnn.json and checkpoint.pt,
    then verifies the result."""
    names = model.names
    check_stage_names(names)
    if len(thresholds) != len(names) - 1:
        raise ValueError(f"{len(names)} exits need {len(names) - 1} thresholds")
    for t in thresholds:
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"threshold {t} is outside [0, 1]")
    os.makedirs(out_dir, exist_ok=True)
    tensors = stage_tensor_names(names)
    shape = list(input_spec["shape"])
    device_files = []
    for v, device in enumerate(model.devices):
        device_files += export_stages(DDNN([device], [view_file(names[0], v)[:-len(".onnx")]]), out_dir, shape,
                                      [tensors[0]], opset)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        aggregated = list(model(torch.zeros(1, model.views, *shape))["features"][0].shape[1:])
    later_files = export_stages(DDNN(list(model.later), names[1:]), out_dir, aggregated, tensors[1:], opset) \
        if len(model.later) else []
    model.train(was_training)
    one_device, later_macs = device_macs(model, shape)
    files = [device_files[0], *later_files]
    macs = [one_device, *later_macs]
    stages = []
    for k, stage_name in enumerate(names):
        entry: dict[str, Any] = {"name": stage_name, "file": files[k],
                                 "sha256": sha256_file(os.path.join(out_dir, files[k])), **tensors[k]}
        if k < len(names) - 1:
            entry["exit"] = {"threshold": float(thresholds[k])}
        entry["macs"] = macs[k]
        stages.append(entry)
    views = {"count": model.views, "localAggregation": model.local_agg, "featureAggregation": model.feature_agg,
             "devices": [{"file": f, "sha256": sha256_file(os.path.join(out_dir, f))} for f in device_files]}
    manifest: dict[str, Any] = {"format": FORMAT, "name": name, "version": version, "labels": list(labels),
                                "input": input_spec, "stages": stages, "views": views}
    if evaluation is not None:
        manifest["evaluation"] = evaluation
    with open(os.path.join(out_dir, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    meta = json.dumps({"arch": "views", "config": config})
    torch.save({"format": CHECKPOINT_FORMAT, "meta": meta, "state_dict": model.state_dict()},
               os.path.join(out_dir, CHECKPOINT))
    verify_views_bundle(out_dir)
    return manifest


def _graph(path: str, where: str) -> tuple[list[onnx.ValueInfoProto], list[onnx.ValueInfoProto]]:
    model = onnx.load(path)
    onnx.checker.check_model(model)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    for v in [*inputs, *model.graph.output]:
        dims = _dims(v)
        if not dims or not isinstance(dims[0], str):
            raise ValueError(f"{where}: {v.name} has no dynamic batch axis (dims {dims})")
    return inputs, list(model.graph.output)


def verify_views_bundle(out_dir: str) -> None:
    """What a views-aware loader checks (docs/bundle-views.md): every file's sha256, each view's
    device graph has stage 0's tensor names and shapes, views.devices[0] is stages[0], the
    aggregated features (K times the channels for concat) are what stage 1 reads, then the
    chain as Contract 1 has it."""
    with open(os.path.join(out_dir, MANIFEST)) as f:
        manifest = json.load(f)
    views = manifest["views"]
    stages = manifest["stages"]
    classes = len(manifest["labels"])
    k = views["count"]
    if len(views["devices"]) != k:
        raise ValueError(f"{out_dir}: views.count is {k} but views.devices has {len(views['devices'])} entries")
    first = stages[0]
    if (views["devices"][0]["file"], views["devices"][0]["sha256"]) != (first["file"], first["sha256"]):
        raise ValueError(f"{out_dir}: views.devices[0] must be stages[0] (file and sha256)")
    device_features = None
    for v, d in enumerate(views["devices"]):
        path = os.path.join(out_dir, d["file"])
        if sha256_file(path) != d["sha256"]:
            raise ValueError(f"{path}: sha256 does not match views.devices[{v}].sha256")
        inputs, outputs = _graph(path, path)
        last = len(stages) == 1
        want = [first["logits"]] if last else [first["features"], first["logits"]]
        if [i.name for i in inputs] != [first["input"]] or [o.name for o in outputs] != want:
            raise ValueError(f"{path}: tensors {[i.name for i in inputs]} -> {[o.name for o in outputs]} are not "
                             f"stages[0]'s {first['input']!r} -> {want}")
        if _dims(inputs[0])[1:] != manifest["input"]["shape"]:
            raise ValueError(f"{path}: input dims {_dims(inputs[0])} do not match input.shape")
        if _dims(outputs[-1])[1:] != [classes]:
            raise ValueError(f"{path}: logits dims {_dims(outputs[-1])} do not end in {classes} labels")
        dims = _dims(outputs[0])[1:]
        if device_features is not None and dims != device_features:
            raise ValueError(f"{path}: features dims {dims} differ from view 0's {device_features}")
        device_features = dims
    previous = list(device_features or [])
    if previous and views["featureAggregation"] == "concat":
        previous[0] = previous[0] * k
    for i, s in enumerate(stages):
        path = os.path.join(out_dir, s["file"])
        if sha256_file(path) != s["sha256"]:
            raise ValueError(f"{path}: sha256 does not match stages[{i}].sha256")
        last = i == len(stages) - 1
        if last == ("exit" in s):
            raise ValueError(f"{path}: stages[{i}].exit must be {'absent' if last else 'present'}")
        if not last and not 0.0 <= s["exit"]["threshold"] <= 1.0:
            raise ValueError(f"{path}: stages[{i}].exit.threshold is outside [0, 1]")
        if i == 0:
            continue
        inputs, outputs = _graph(path, path)
        want = [s["logits"]] if last else [s["features"], s["logits"]]
        if [x.name for x in inputs] != [s["input"]] or [o.name for o in outputs] != want:
            raise ValueError(f"{path}: tensors do not match stages[{i}]")
        if s["input"] != stages[i - 1]["features"]:
            raise ValueError(f"{path}: stages[{i}].input is not stages[{i - 1}].features")
        if _dims(inputs[0])[1:] != previous:
            what = "the aggregated device features" if i == 1 else "the previous stage's features"
            raise ValueError(f"{path}: input dims {_dims(inputs[0])} do not match {what} {previous}")
        if _dims(outputs[-1])[1:] != [classes]:
            raise ValueError(f"{path}: logits dims {_dims(outputs[-1])} do not end in {classes} labels")
        previous = _dims(outputs[0])[1:]
