"""Writes a `ddnn-bundle/v1` (DESIGN.md, Contract 1): one ONNX file per stage, `ddnn.json`, and
`checkpoint.pt` (state dict + arch/config, which loaders ignore and `evaluate` rebuilds from)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Sequence

import onnx
import torch

from .models import DDNN, bake_binary, stage_macs

FORMAT = "ddnn-bundle/v1"
MANIFEST = "ddnn.json"
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "ddnn-trainer-checkpoint/v1"
DEFAULT_OPSET = 13
_STAGE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def stage_tensor_names(names: Sequence[str], image: str = "image", features: str = "features",
                       logits: str = "logits") -> list[dict[str, str]]:
    """Tensor names per stage. Stage 0 reads `image`; stage k>0 reads stage k-1's features.
    A middle stage cannot output `features` under the name it reads it by (ONNX graphs are SSA),
    so stage k>0 names its features `<stage name>_<features>`."""
    if len({image, features, logits}) != 3:
        raise ValueError(f"tensor names must differ: {image!r}, {features!r}, {logits!r}")
    out = []
    previous = image
    for k, name in enumerate(names):
        entry = {"input": previous}
        if k < len(names) - 1:
            entry["features"] = features if k == 0 else f"{name}_{features}"
            previous = entry["features"]
        entry["logits"] = logits
        out.append(entry)
    taken = {image, features, logits}
    for entry in out[1:]:
        if "features" in entry and entry["features"] in taken:
            raise ValueError(f"tensor name {entry['features']!r} would be used twice")
    return out


def check_stage_names(names: Sequence[str]) -> None:
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be unique: {list(names)}")
    for n in names:
        if not _STAGE_NAME.match(n):
            raise ValueError(f"stage name {n!r} must be a lowercase DNS label (a-z, 0-9, -): it names topics and tiers")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_stages(model: DDNN, out_dir: str, input_shape: Sequence[int], tensors: list[dict[str, str]],
                  opset: int = DEFAULT_OPSET) -> list[str]:
    """One ONNX file per stage with a dynamic batch axis on every input and output."""
    baked = bake_binary(model).eval()
    files = []
    x = torch.zeros(2, *input_shape)
    with torch.no_grad():
        for k, (stage, name) in enumerate(zip(baked.stages, model.names)):
            t = tensors[k]
            outputs = [t["features"], t["logits"]] if "features" in t else [t["logits"]]
            file = f"{name}.onnx"
            torch.onnx.export(stage, (x,), os.path.join(out_dir, file), input_names=[t["input"]],
                              output_names=outputs, dynamic_axes={n: {0: "batch"} for n in [t["input"], *outputs]},
                              opset_version=opset, do_constant_folding=True)
            out = stage(x)
            x = out[0] if isinstance(out, tuple) else out
            files.append(file)
    return files


def write_bundle(out_dir: str, model: DDNN, *, arch: str, config: dict[str, Any], name: str, version: str,
                 labels: Sequence[str], input_spec: dict[str, Any], thresholds: Sequence[float],
                 evaluation: dict[str, Any] | None, tensor_names: Sequence[str] = ("image", "features", "logits"),
                 opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """Exports every stage, writes ddnn.json and checkpoint.pt, then verifies the result."""
    names = model.names
    check_stage_names(names)
    if len(thresholds) != len(names) - 1:
        raise ValueError(f"{len(names)} stages need {len(names) - 1} thresholds")
    for t in thresholds:
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"threshold {t} is outside [0, 1]")
    os.makedirs(out_dir, exist_ok=True)
    tensors = stage_tensor_names(names, *tensor_names)
    files = export_stages(model, out_dir, input_spec["shape"], tensors, opset)
    macs = stage_macs(model, input_spec["shape"])
    stages = []
    for k, stage_name in enumerate(names):
        entry: dict[str, Any] = {"name": stage_name, "file": files[k],
                                 "sha256": sha256_file(os.path.join(out_dir, files[k])), **tensors[k]}
        if k < len(names) - 1:
            entry["exit"] = {"threshold": float(thresholds[k])}
        entry["macs"] = macs[k]  # extra field: multiply-adds per sample, for capacity planning
        stages.append(entry)
    manifest: dict[str, Any] = {"format": FORMAT, "name": name, "version": version, "labels": list(labels),
                                "input": input_spec, "stages": stages}
    if evaluation is not None:
        manifest["evaluation"] = evaluation
    with open(os.path.join(out_dir, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    # arch/config travel as a JSON string: torch 1.13's weights_only loader cannot unpickle floats.
    meta = json.dumps({"arch": arch, "config": config})
    torch.save({"format": CHECKPOINT_FORMAT, "meta": meta, "state_dict": model.state_dict()},
               os.path.join(out_dir, CHECKPOINT))
    verify_bundle(out_dir)
    return manifest


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.dim_param else d.dim_value for d in value_info.type.tensor_type.shape.dim]


def verify_bundle(out_dir: str) -> None:
    """Checks what a loader checks: digests, onnx.checker, input/output names, dynamic batch axis,
    logits width, thresholds in [0, 1] on every stage but the last."""
    with open(os.path.join(out_dir, MANIFEST)) as f:
        manifest = json.load(f)
    classes = len(manifest["labels"])
    stages = manifest["stages"]
    previous_features: list[int | str] | None = None
    for k, s in enumerate(stages):
        path = os.path.join(out_dir, s["file"])
        where = path
        if sha256_file(path) != s["sha256"]:
            raise ValueError(f"{where}: sha256 does not match stages[{k}].sha256")
        graph_model = onnx.load(path)
        onnx.checker.check_model(graph_model)
        graph = graph_model.graph
        initializers = {i.name for i in graph.initializer}
        inputs = [i for i in graph.input if i.name not in initializers]
        want_out = [s["features"], s["logits"]] if "features" in s else [s["logits"]]
        if [i.name for i in inputs] != [s["input"]]:
            raise ValueError(f"{where}: graph inputs {[i.name for i in inputs]} != stages[{k}].input {s['input']!r}")
        if [o.name for o in graph.output] != want_out:
            raise ValueError(f"{where}: graph outputs {[o.name for o in graph.output]} != manifest {want_out}")
        for v in [*inputs, *graph.output]:
            dims = _dims(v)
            if not dims or not isinstance(dims[0], str):
                raise ValueError(f"{where}: {v.name} has no dynamic batch axis (dims {dims})")
        if k == 0 and _dims(inputs[0])[1:] != manifest["input"]["shape"]:
            raise ValueError(f"{where}: input dims {_dims(inputs[0])} do not match input.shape {manifest['input']['shape']}")
        if k > 0 and _dims(inputs[0])[1:] != previous_features:
            raise ValueError(f"{where}: input dims {_dims(inputs[0])} do not match the previous stage's features "
                             f"{previous_features}")
        previous_features = _dims(graph.output[0])[1:]
        logits_dims = _dims(graph.output[-1])
        if logits_dims[1:] != [classes]:
            raise ValueError(f"{where}: logits dims {logits_dims} do not end in {classes} labels")
        last = k == len(stages) - 1
        if last == ("exit" in s):
            raise ValueError(f"{where}: stages[{k}].exit must be {'absent' if last else 'present'}")
        if not last and not 0.0 <= s["exit"]["threshold"] <= 1.0:
            raise ValueError(f"{where}: stages[{k}].exit.threshold is outside [0, 1]")


def load_checkpoint(bundle_dir: str) -> dict[str, Any]:
    """{"arch", "config", "state_dict"} from checkpoint.pt (loaded with weights_only: no code runs)."""
    ckpt = torch.load(os.path.join(bundle_dir, CHECKPOINT), map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{bundle_dir}/{CHECKPOINT}: not a {CHECKPOINT_FORMAT} checkpoint")
    meta = json.loads(ckpt["meta"])
    return {"arch": meta["arch"], "config": meta["config"], "state_dict": ckpt["state_dict"]}


def read_manifest(bundle_dir: str) -> dict[str, Any]:
    with open(os.path.join(bundle_dir, MANIFEST)) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{bundle_dir}/{MANIFEST}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest
