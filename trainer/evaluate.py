"""`python -m trainer evaluate`: the accuracy table of a bundle, computed in PyTorch from its
checkpoint, so the TypeScript `ddnn eval` (onnxruntime) can be compared with it sample by sample."""

from __future__ import annotations

import json
import sys
from typing import Any, Sequence

import numpy as np
import torch

from . import calibrate
from .data import preprocess, read_idx, reshape_images
from .export import load_checkpoint, read_manifest
from .models import DDNN, build_model, run_stages


def infer(model: DDNN, images: np.ndarray, input_spec: dict[str, Any],
          batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Every stage on every sample: (argmax [N, K] int64, eta [N, K] float64). `images` is raw u8
    of shape [N, *input.shape]."""
    model.eval()
    preds, etas = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = preprocess(images[i:i + batch_size], input_spec["scale"], input_spec["mean"], input_spec["std"])
            _, logits = run_stages(model, torch.from_numpy(x))
            lg = [t.numpy().astype(np.float32) for t in logits]
            preds.append(np.stack([np.argmax(t, axis=1) for t in lg], axis=1))
            etas.append(np.stack([calibrate.normalized_entropy(t) for t in lg], axis=1))
    k = len(model.stages)
    if not preds:
        return np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float64)
    return np.concatenate(preds).astype(np.int64), np.concatenate(etas)


def load_bundle_model(bundle_dir: str) -> tuple[dict[str, Any], DDNN]:
    """The manifest and the PyTorch model rebuilt from checkpoint.pt."""
    manifest = read_manifest(bundle_dir)
    if "views" in manifest:
        raise ValueError(f"{bundle_dir} is a multi-view bundle ({manifest['views'].get('count')} views): "
                         "evaluate it with python -m trainer evaluate-views")
    ckpt = load_checkpoint(bundle_dir)
    model = build_model(ckpt["arch"], ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    names = [s["name"] for s in manifest["stages"]]
    if model.names != names:
        raise ValueError(f"{bundle_dir}: checkpoint stages {model.names} != manifest stages {names}")
    return manifest, model.eval()


def thresholds_with_overrides(manifest: dict[str, Any], overrides: Sequence[str]) -> list[float]:
    """Manifest thresholds, with `stage=value` overrides (the last stage has no exit to override)."""
    stages = manifest["stages"]
    thresholds = [float(s["exit"]["threshold"]) for s in stages[:-1]]
    index = {s["name"]: k for k, s in enumerate(stages)}
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--threshold {item!r}: expected stage=value, e.g. device=0.4")
        if name not in index:
            raise ValueError(f"--threshold {item!r}: no stage named {name!r} (stages: {', '.join(index)})")
        if index[name] == len(stages) - 1:
            raise ValueError(f"--threshold {item!r}: {name} is the last stage, which always answers")
        t = float(value)
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"--threshold {item!r}: threshold must be between 0 and 1")
        thresholds[index[name]] = t
    return thresholds


def predictions(preds: np.ndarray, etas: np.ndarray, thresholds: Sequence[float]) -> dict[str, Any]:
    exits = calibrate.exit_stages(etas, thresholds)
    # eta is NaN only for non-finite logits; JSON has no NaN, so it becomes null.
    entropy = [[None if np.isnan(v) else float(v) for v in row] for row in etas]
    return {"exitStage": exits.tolist(), "label": preds[np.arange(len(exits)), exits].tolist(),
            "stageLabels": preds.tolist(), "stageEntropy": entropy}


def load_eval_set(images_path: str, labels_path: str, input_shape: Sequence[int],
                  limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path)
    labels = read_idx(labels_path).astype(np.int64).reshape(-1)
    if len(images) != len(labels):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    if images.dtype != np.uint8:
        raise ValueError(f"{images_path}: images must be unsigned bytes, got {images.dtype}")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return reshape_images(images, input_shape, images_path), labels


def main(args: Any) -> int:
    torch.set_num_threads(args.threads)
    manifest, model = load_bundle_model(args.bundle)
    thresholds = thresholds_with_overrides(manifest, args.threshold or [])
    images, labels = load_eval_set(args.images, args.labels, manifest["input"]["shape"], args.limit)
    classes = len(manifest["labels"])
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"{args.labels}: labels must be in 0..{classes - 1}")
    preds, etas = infer(model, images, manifest["input"])
    summary = calibrate.summarize(preds, etas, labels, thresholds, model.names)
    if args.sweep:
        if len(model.names) < 2:
            raise ValueError("--sweep needs a bundle with at least two stages (one exit)")
        sweep = calibrate.choose_thresholds(preds, etas, labels, model.names, args.target_drop / 100.0)
        # stderr keeps --json output on stdout parseable.
        print(calibrate.format_sweep(sweep, model.names), file=sys.stderr)
        flags = " ".join(f"--threshold {n}={t}" for n, t in zip(model.names, sweep["thresholds"]))
        print(f"suggested: {flags}", file=sys.stderr)
    if args.predictions:
        with open(args.predictions, "w") as f:
            json.dump(predictions(preds, etas, thresholds), f)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"bundle: {args.bundle} ({manifest['name']} {manifest['version']})")
        print(calibrate.format_table(summary, thresholds))
    return 0
