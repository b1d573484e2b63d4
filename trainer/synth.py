"""`python -m trainer synth` and `synth-images`: random-weight bundles and random idx data of any
shape, so the TypeScript runtime can be checked against PyTorch beyond the shipped models."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch

from .data import preprocess, read_idx, reshape_images, write_idx
from .evaluate import infer
from .export import check_stage_names, write_bundle
from .models import build_model, run_stages

# Logit spread (std of centred logits) the exits are rescaled to: random weights would otherwise
# give near-uniform softmaxes with eta crowded just under 1, where tiny float differences between
# runtimes flip exits.
LOGIT_SPREAD = 3.0


def random_images(shape: Sequence[int], count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, *shape), dtype=np.uint8)


def random_labels(count: int, classes: int, seed: int) -> np.ndarray:
    # A different stream from the images, so labels are independent of pixels.
    return np.random.default_rng([seed, 1]).integers(0, classes, size=count, dtype=np.uint8)


def median_threshold(etas: np.ndarray) -> float:
    """The median eta, taken halfway between the two middle values so no sample sits exactly on
    the threshold (a hair of float noise would flip it)."""
    v = np.sort(etas[np.isfinite(etas)])
    if v.size == 0:
        return 0.5
    if v.size == 1:
        return float(v[0])
    hi = v.size // 2
    return float((v[hi - 1] + v[hi]) / 2)


def synth(out: str, *, stages: int, stage_names: Sequence[str] | None, tensor_names: Sequence[str],
          input_shape: Sequence[int], mean: Sequence[float], std: Sequence[float], classes: int, seed: int,
          calibrate_images: str | None = None, scale: float = 1.0 / 255.0, name: str | None = None,
          version: str = "0.0.0", width: int = 8) -> dict[str, Any]:
    if not 1 <= stages <= 4:
        raise ValueError("--stages must be 1..4")
    names = list(stage_names) if stage_names else [f"stage{k}" for k in range(stages)]
    if len(names) != stages:
        raise ValueError(f"--stage-names has {len(names)} names for {stages} stages")
    check_stage_names(names)
    if len(tensor_names) != 3:
        raise ValueError("--tensor-names needs three names: input,features,logits")
    if classes < 2:
        raise ValueError("--classes must be at least 2")
    channels = input_shape[0]
    for label, values in (("--mean", mean), ("--std", std)):
        if len(values) not in (1, channels):
            raise ValueError(f"{label} has {len(values)} values; give 1 or {channels} (one per channel)")
    if any(s <= 0 for s in std):
        raise ValueError("--std values must be > 0")
    torch.manual_seed(seed)
    config = {"input_shape": list(input_shape), "classes": classes, "stage_names": names, "width": width}
    model = build_model("synth", config).eval()
    input_spec = {"shape": list(input_shape), "dtype": "float32", "scale": scale, "mean": list(mean), "std": list(std)}

    if calibrate_images:
        images = reshape_images(read_idx(calibrate_images), input_shape, calibrate_images)
        source = os.path.basename(calibrate_images)
    else:
        images = random_images(input_shape, 256, seed)
        source = "random-u8"

    # Rescale each exit so its logits are spread out; heads are off the feature path, so
    # rescaling one leaves every later stage's input unchanged.
    with torch.no_grad():
        x = torch.from_numpy(preprocess(images, scale, mean, std))
        _, logits = run_stages(model, x)
        for stage, lg in zip(model.stages, logits):
            spread = float((lg - lg.mean(dim=1, keepdim=True)).std())
            head = stage.head[-1]
            factor = LOGIT_SPREAD / spread if spread > 0 else 1.0
            head.weight.mul_(factor)
            head.bias.mul_(factor)

    _, etas = infer(model, images, input_spec)
    thresholds = [median_threshold(etas[:, k]) for k in range(stages - 1)]
    evaluation = {"dataset": f"synthetic:{source}", "samples": int(len(images)),
                  "thresholdRule": "median eta of each exit over the calibration images",
                  "medianEta": {n: t for n, t in zip(names, thresholds)}}
    return write_bundle(out, model, arch="synth", config=config, name=name or os.path.basename(os.path.normpath(out)),
                        version=version, labels=[f"class-{i}" for i in range(classes)], input_spec=input_spec,
                        thresholds=thresholds, evaluation=evaluation, tensor_names=tensor_names)


def write_random_set(out_images: str, out_labels: str, shape: Sequence[int], count: int, classes: int,
                     seed: int) -> None:
    if not 1 <= classes <= 256:
        raise ValueError("--classes must be 1..256 (labels are unsigned bytes)")
    write_idx(out_images, random_images(shape, count, seed))
    write_idx(out_labels, random_labels(count, classes, seed))


def main(args: Any) -> int:
    torch.set_num_threads(args.threads)
    manifest = synth(args.out, stages=args.stages, stage_names=_split(args.stage_names), tensor_names=_split(args.tensor_names),
                     input_shape=_ints(args.input_shape), mean=_floats(args.mean), std=_floats(args.std),
                     classes=args.classes, seed=args.seed, calibrate_images=args.calibrate_images,
                     scale=args.scale, name=args.name, version=args.version)
    exits = ", ".join(f"{s['name']} < {s['exit']['threshold']:.6f}" for s in manifest["stages"] if "exit" in s)
    print(f"wrote {args.out}: {len(manifest['stages'])} stage(s) {[s['name'] for s in manifest['stages']]}"
          + (f", exits {exits}" if exits else ""))
    return 0


def images_main(args: Any) -> int:
    write_random_set(args.out_images, args.out_labels, _ints(args.shape), args.count, args.classes, args.seed)
    print(f"wrote {args.count} random images of shape {_ints(args.shape)} to {args.out_images} and labels "
          f"(0..{args.classes - 1}) to {args.out_labels}")
    return 0


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",")] if text else None


def _ints(text: str) -> list[int]:
    values = [int(t) for t in text.split(",")]
    if not values or any(v < 1 for v in values):
        raise ValueError(f"shape {text!r}: dimensions must be positive integers")
    return values


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",")]
