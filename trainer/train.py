"""`python -m trainer train`: joint training of all exits, threshold calibration, bundle export.

One loop: every batch runs all stages, and the loss is the weighted sum of each exit's
cross-entropy (DDNN trains the exits jointly so early stages learn features that both answer
locally and serve the later stages).
"""

from __future__ import annotations

import math
import os
import random
import time
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import calibrate
from .data import Split, channel_stats, load_dataset, preprocess
from .evaluate import infer
from .export import write_bundle
from .models import DDNN, STAGE_NAMES, build_model, run_stages, stage_macs

SCALE = 1.0 / 255.0
# Images held out of the end of the training set to calibrate the exit thresholds on (--val-size):
# 5,000 of Fashion-MNIST's 60,000 (about 500 per class) resolve Overall to about 0.4 points
# (one standard error at 90%) and leave 55,000 to train on. The test set only measures.
DEFAULT_VAL_SIZE = 5000


def seed_everything(seed: int, threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def parse_weights(text: str | None, stages: int) -> list[float]:
    if not text:
        return [1.0] * stages
    weights = [float(w) for w in text.split(",")]
    if len(weights) != stages or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"--exit-weights needs {stages} non-negative numbers (one per exit), got {text!r}")
    return weights


def augment(images: np.ndarray, rng: np.random.Generator, pad: int = 2) -> np.ndarray:
    """Random horizontal flip and random crop after zero padding by `pad` pixels, per sample."""
    n, _, h, w = images.shape
    flip = rng.random(n) < 0.5
    out = images.copy()
    out[flip] = out[flip][..., ::-1]
    padded = np.pad(out, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dy = rng.integers(0, 2 * pad + 1, n)
    dx = rng.integers(0, 2 * pad + 1, n)
    for i in range(n):
        out[i] = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    return out


def feature_l1(features: Sequence[torch.Tensor]) -> torch.Tensor:
    """--feature-l1: the mean |value| over the batch and the elements of every non-last stage's
    features, summed over the stages. BatchNorm right before the ReLU can shrink the features'
    scale to lower this without making them sparser, so it buys few zeros per point of accuracy."""
    total = torch.zeros(())
    for f in features:
        total = total + f.abs().mean()
    return total


def feature_hoyer(features: Sequence[torch.Tensor]) -> torch.Tensor:
    """--feature-hoyer: the Hoyer sparsity measure ||f||_1 / (||f||_2 sqrt(n)) of each sample's
    features (n values), mean over the batch, summed over the non-last stages. It lies in
    [1/sqrt(n), 1], is 1 for a constant tensor and small when a few values carry the mass, and does
    not change when the features are scaled, so the network can lower it only by zeroing values
    (its BatchNorm shifts move below zero), never by shrinking them; u8q quantizes per tensor
    against the largest value, so that scale-free sparsity is what the wire sees."""
    total = torch.zeros(())
    for f in features:
        flat = f.flatten(1)
        l1 = flat.abs().sum(1)
        l2 = flat.pow(2).sum(1).add(1e-12).sqrt()
        total = total + (l1 / l2).mean() / math.sqrt(flat.shape[1])
    return total


def train_model(model: DDNN, train: Split, input_spec: dict[str, Any], *, epochs: int, batch_size: int,
                lr: float, weight_decay: float, exit_weights: Sequence[float], seed: int,
                use_augment: bool, feature_l1_weight: float = 0.0, feature_hoyer_weight: float = 0.0,
                log: Any = print) -> None:
    """Adam on the weighted sum of the exits' cross-entropy (plus the weighted activity penalties
    `feature_l1` and `feature_hoyer` on the non-last stages' features, each only when its weight is
    not 0), cosine learning-rate decay; the data order comes from a numpy Generator seeded with
    `seed`, so a run repeats exactly."""
    rng = np.random.default_rng(seed)
    n = len(train.labels)
    steps_per_epoch = max(1, n // batch_size)
    total = epochs * steps_per_epoch
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    for epoch in range(1, epochs + 1):
        model.train()
        start = time.time()
        order = rng.permutation(n)
        loss_sum = 0.0
        correct = np.zeros(len(model.stages))
        seen = 0
        penalty_sums = {"L1": 0.0, "Hoyer": 0.0}
        zeros = np.zeros(len(model.stages) - 1)
        for step in range(steps_per_epoch):
            idx = order[step * batch_size:(step + 1) * batch_size]
            pixels = train.images[idx]
            if use_augment:
                pixels = augment(pixels, rng)
            x = torch.from_numpy(preprocess(pixels, input_spec["scale"], input_spec["mean"], input_spec["std"]))
            y = torch.from_numpy(train.labels[idx])
            features, outputs = run_stages(model, x)
            loss = sum(w * F.cross_entropy(o, y) for w, o in zip(exit_weights, outputs))
            for key, weight, penalty_fn in (("L1", feature_l1_weight, feature_l1),
                                            ("Hoyer", feature_hoyer_weight, feature_hoyer)):
                if weight:
                    penalty = penalty_fn(features)
                    loss = loss + weight * penalty
                    penalty_sums[key] += float(penalty) * len(idx)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += float(loss) * len(idx)
            seen += len(idx)
            correct += [int((o.argmax(1) == y).sum()) for o in outputs]
            zeros += [float((f == 0).float().mean()) * len(idx) for f in features]
        accs = "  ".join(f"{name} {100 * c / seen:.2f}%" for name, c in zip(model.names, correct))
        # Share of exact zeros in the features each non-last stage sends (train mode: batch statistics).
        sparsity = "  ".join(f"{name} {100 * z / seen:.1f}%" for name, z in zip(model.names, zeros))
        penalties = "".join(f"  feature {key} {total / seen:.4f}" for key, total, weight in
                            (("L1", penalty_sums["L1"], feature_l1_weight),
                             ("Hoyer", penalty_sums["Hoyer"], feature_hoyer_weight)) if weight)
        log(f"epoch {epoch}/{epochs}  loss {loss_sum / seen:.4f}{penalties}  train acc: {accs}  zero features: {sparsity}  "
            f"lr {schedule.get_last_lr()[0]:.2e}  {time.time() - start:.1f}s")


def hold_out(train: Split, val_size: int, train_limit: int, dataset: str) -> tuple[Split, Split, str]:
    """(training part, validation split, its name): the validation split is the last `val_size`
    images of the whole training set, and `train_limit` (0: all) counts from the start of what is
    left, so the images that calibrate the thresholds never train the model."""
    n = len(train.labels)
    if val_size < 1:
        raise ValueError(f"--val-size {val_size}: the thresholds need a validation split of at least 1 "
                         "training image (they are never calibrated on the test set)")
    if val_size >= n:
        raise ValueError(f"--val-size {val_size} leaves no training data ({dataset} has {n} training images)")
    start = n - val_size
    if train_limit > start:
        raise ValueError(f"--train-limit {train_limit} and --val-size {val_size} overlap: {dataset} has {n} "
                         f"training images, so at most {start} can train next to the validation split")
    end = train_limit or start
    return (Split(train.images[:end], train.labels[:end]), Split(train.images[start:], train.labels[start:]),
            f"{dataset}/train[{start}:{n}]")


def evaluation_block(dataset: str, summary: dict[str, Any], calibration: dict[str, Any]) -> dict[str, Any]:
    stages = summary["stages"]
    return {
        "dataset": dataset,
        "samples": summary["samples"],
        "stageAccuracy": {s["name"]: round(s["accuracyAll"], 6) for s in stages},
        # Extras (Contract 1 keeps unknown fields): the accuracy table at the manifest thresholds,
        # and the split the thresholds were chosen on (held-out training images, not `dataset`).
        "exitRate": {s["name"]: round(s["exitRate"], 6) for s in stages},
        "accuracyExited": {s["name"]: None if s["accuracyExited"] is None else round(s["accuracyExited"], 6)
                           for s in stages},
        "overall": round(summary["overall"], 6),
        "ideal": round(summary["ideal"], 6),
        "calibratedOn": calibration["dataset"],
        "calibration": calibration,
    }


def main(args: Any) -> int:
    started = time.time()
    seed_everything(args.seed, args.threads)
    data = load_dataset(args.dataset, args.data_dir)
    train, calib, calib_name = hold_out(data.train, args.val_size, args.train_limit, data.name)
    test = data.test
    if args.test_limit:
        test = Split(test.images[:args.test_limit], test.labels[:args.test_limit])

    mean, std = channel_stats(train.images, SCALE)
    input_spec = {"shape": list(train.images.shape[1:]), "dtype": "float32", "scale": SCALE, "mean": mean, "std": std}
    names = STAGE_NAMES[args.arch]
    config = {"input_shape": input_spec["shape"], "filters": args.filters, "classes": len(data.labels),
              "stage_names": names}
    model = build_model(args.arch, config)
    weights = parse_weights(args.exit_weights, len(names))
    macs = stage_macs(model, input_spec["shape"])
    print(f"{args.arch}: filters {args.filters}, stages {names}, multiply-adds per sample {macs} "
          f"(total {sum(macs)}), parameters {sum(p.numel() for p in model.parameters())}")
    print(f"training on {len(train.labels)} {data.name} images (thresholds calibrated on {calib_name}), "
          f"input mean {mean} std {std}, exit weights {weights}")

    t0 = time.time()
    train_model(model, train, input_spec, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                weight_decay=args.weight_decay, exit_weights=weights, seed=args.seed, use_augment=args.augment,
                feature_l1_weight=args.feature_l1, feature_hoyer_weight=args.feature_hoyer)
    train_seconds = time.time() - t0
    print(f"training took {train_seconds:.1f}s")

    preds, etas = infer(model, calib.images, input_spec)
    calibration = calibrate.choose_thresholds(preds, etas, calib.labels, names, args.target_drop / 100.0)
    print(f"validation split ({calib_name}):")
    print(calibrate.format_sweep(calibration, names))
    calibration = {"dataset": calib_name, "samples": int(len(calib.labels)), **calibration}
    thresholds = calibration["thresholds"]

    preds, etas = infer(model, test.images, input_spec)
    summary = calibrate.summarize(preds, etas, test.labels, thresholds, names)
    print(f"test set ({data.name}/test):")
    print(calibrate.format_table(summary, thresholds))

    # No wall time in here: the same command should write the same bytes.
    config["training"] = {"arch": args.arch, "dataset": data.name, "epochs": args.epochs, "batchSize": args.batch_size,
                          "lr": args.lr, "weightDecay": args.weight_decay, "exitWeights": weights, "seed": args.seed,
                          "augment": args.augment, "trainSamples": int(len(train.labels)),
                          "valSize": args.val_size}
    # Only when set, so commands without them still write the same bytes as before the flags existed.
    if args.feature_l1:
        config["training"]["featureL1"] = args.feature_l1
    if args.feature_hoyer:
        config["training"]["featureHoyer"] = args.feature_hoyer
    name = args.name or os.path.basename(os.path.normpath(args.out))
    write_bundle(args.out, model, arch=args.arch, config=config, name=name, version=args.version,
                 labels=data.labels, input_spec=input_spec, thresholds=thresholds, opset=args.opset,
                 evaluation=evaluation_block(f"{data.name}/test", summary, calibration))
    print(f"wrote bundle {args.out} ({time.time() - started:.1f}s in all)")
    return 0
