"""`python -m trainer train --views K`: joint training of a multi-view DDNN (trainer/views_model.py)
on the multi-view data set (trainer/views_data.py), with random view dropout, threshold
calibration on the validation split with every view present, the missing-views table on the
test set, and a multi-view bundle (trainer/views_export.py).

View dropout: in every training batch each view of each sample is dropped (as if its device had
failed) with probability --view-dropout, independently; a sample that would lose every view keeps
one, chosen uniformly. The aggregators then see only the views present, so the local exit and the
later stages learn to answer from any non-empty set of views.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import calibrate
from .data import Split, load_dataset
from .train import SCALE, evaluation_block, feature_hoyer, feature_l1, hold_out, parse_weights, seed_everything
from .train import augment as augment_images
from .views_data import check_views, make_views, view_spec
from .views_evaluate import format_views_table, infer_views, preprocess_views, views_report
from .views_export import write_views_bundle
from .views_model import MultiViewDDNN, build_views_model, device_macs
from .models import STAGE_NAMES


def views_channel_stats(views: np.ndarray, scale: float) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of u8 * scale over every view of every sample ([N, K, C, ...]),
    rounded to 4 decimals as trainer.data.channel_stats does; summed in chunks of exact integers
    so a large set needs no float64 copy."""
    c = views.shape[2]
    s1 = np.zeros(c, dtype=np.float64)
    s2 = np.zeros(c, dtype=np.float64)
    count = 0
    for i in range(0, len(views), 2000):
        chunk = np.moveaxis(views[i:i + 2000], 2, 0).reshape(c, -1).astype(np.int64)
        s1 += chunk.sum(axis=1)
        s2 += (chunk * chunk).sum(axis=1)
        count += chunk.shape[1]
    mean = s1 / count
    std = np.sqrt(np.maximum(s2 / count - mean * mean, 0.0))
    return ([round(float(m) * scale, 4) for m in mean], [max(round(float(s) * scale, 4), 1e-4) for s in std])


def drop_views(rng: np.random.Generator, n: int, views: int, p: float) -> np.ndarray:
    """[n, views] bool: True where the view is present. Each view is dropped with probability p;
    a row left with none keeps one view, chosen uniformly."""
    present = rng.random((n, views)) >= p
    empty = np.nonzero(~present.any(axis=1))[0]
    present[empty, rng.integers(0, views, len(empty))] = True
    return present


def train_views_model(model: MultiViewDDNN, views: np.ndarray, labels: np.ndarray, input_spec: dict[str, Any], *,
                      epochs: int, batch_size: int, lr: float, weight_decay: float, exit_weights: list[float],
                      seed: int, view_dropout: float, use_augment: bool = False, feature_l1_weight: float = 0.0,
                      feature_hoyer_weight: float = 0.0, log: Any = print) -> None:
    """Adam on the weighted sum of every exit's cross-entropy (local aggregate first), cosine decay,
    view dropout per batch; the activity penalties (when their weight is not 0) act on each
    device's features (mean over the views present in the batch) and on every non-last later
    stage's. The data order, the dropped views and the augmentation come from one numpy Generator
    seeded with `seed`."""
    rng = np.random.default_rng(seed)
    n, k = views.shape[:2]
    steps_per_epoch = max(1, n // batch_size)
    total = epochs * steps_per_epoch
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    for epoch in range(1, epochs + 1):
        model.train()
        start = time.time()
        order = rng.permutation(n)
        loss_sum, seen, present_sum = 0.0, 0, 0
        correct = np.zeros(len(model.names))
        zeros = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * batch_size:(step + 1) * batch_size]
            pixels = views[idx]
            if use_augment:
                flat = pixels.reshape((-1,) + pixels.shape[2:])
                pixels = augment_images(flat, rng).reshape(pixels.shape)
            present_np = drop_views(rng, len(idx), k, view_dropout)
            x = torch.from_numpy(preprocess_views(pixels, input_spec))
            y = torch.from_numpy(labels[idx])
            present = torch.from_numpy(present_np)
            out = model(x, present)
            loss = sum(w * F.cross_entropy(o, y) for w, o in zip(exit_weights, out["exits"]))
            for weight, penalty_fn in ((feature_l1_weight, feature_l1), (feature_hoyer_weight, feature_hoyer)):
                if weight:
                    per_view = [penalty_fn([f[present[:, v]]]) for v, f in enumerate(out["deviceFeatures"])
                                if bool(present[:, v].any())]
                    loss = loss + weight * (sum(per_view) / len(per_view) + penalty_fn(out["features"][1:]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += float(loss) * len(idx)
            seen += len(idx)
            present_sum += int(present_np.sum())
            correct += [int((o.argmax(1) == y).sum()) for o in out["exits"]]
            zeros += sum(float((f[present[:, v]] == 0).float().sum()) for v, f in enumerate(out["deviceFeatures"])) \
                / max(1, out["deviceFeatures"][0][0].numel())
        accs = "  ".join(f"{name} {100 * c / seen:.2f}%" for name, c in zip(model.names, correct))
        log(f"epoch {epoch}/{epochs}  loss {loss_sum / seen:.4f}  train acc (views dropped): {accs}  "
            f"views present {present_sum / seen:.2f} of {k}  zero device features {100 * zeros / present_sum:.1f}%  "
            f"lr {schedule.get_last_lr()[0]:.2e}  {time.time() - start:.1f}s")


def main(args: Any) -> int:
    started = time.time()
    check_views(args.views)
    if not 0.0 <= args.view_dropout < 1.0:
        raise ValueError(f"--view-dropout {args.view_dropout}: a probability in [0, 1)")
    seed_everything(args.seed, args.threads)
    data = load_dataset(args.dataset, args.data_dir)
    train, calib, calib_name = hold_out(data.train, args.val_size, args.train_limit, data.name)
    test = data.test
    if args.test_limit:
        test = Split(test.images[:args.test_limit], test.labels[:args.test_limit])
    k = args.views
    spec_views = view_spec(k, args.view_seed)
    t_views = time.time()
    train_views = make_views(train.images, k, "train", args.view_seed)
    calib_views = make_views(calib.images, k, "train", args.view_seed, start=len(data.train.labels) - args.val_size)
    test_views = make_views(test.images, k, "test", args.view_seed)
    print(f"made {k} views of {len(train.labels)} + {len(calib.labels)} training and {len(test.labels)} test items "
          f"in {time.time() - t_views:.1f}s (seed {args.view_seed})")

    mean, std = views_channel_stats(train_views, SCALE)
    input_spec = {"shape": list(train.images.shape[1:]), "dtype": "float32", "scale": SCALE, "mean": mean, "std": std}
    names = STAGE_NAMES[args.arch]
    config: dict[str, Any] = {"input_shape": input_spec["shape"], "filters": args.filters, "classes": len(data.labels),
                              "stage_names": names, "base_arch": args.arch, "views": k, "local_agg": args.local_agg,
                              "feature_agg": args.feature_agg, "view_data": spec_views}
    model = build_views_model(config)
    weights = parse_weights(args.exit_weights, len(names))
    one, later = device_macs(model, input_spec["shape"])
    print(f"{k} views of {args.arch}: filters {args.filters}, exits {names} (local aggregation {args.local_agg}, "
          f"feature aggregation {args.feature_agg}), multiply-adds per sample: {one} per device, later stages "
          f"{later} (total {k * one + sum(later)}), parameters {sum(p.numel() for p in model.parameters())}")
    print(f"training on {len(train.labels)} {data.name} items x {k} views (thresholds calibrated on {calib_name} "
          f"with every view present), input mean {mean} std {std}, exit weights {weights}, "
          f"view dropout {args.view_dropout}")

    t0 = time.time()
    train_views_model(model, train_views, train.labels, input_spec, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, weight_decay=args.weight_decay, exit_weights=weights, seed=args.seed,
                      view_dropout=args.view_dropout, use_augment=args.augment,
                      feature_l1_weight=args.feature_l1, feature_hoyer_weight=args.feature_hoyer)
    train_seconds = time.time() - t0
    print(f"training took {train_seconds:.1f}s")

    everything = tuple(range(k))
    preds, etas = infer_views(model, calib_views, input_spec, [everything])[everything]
    calibration = calibrate.choose_thresholds(preds, etas, calib.labels, names, args.target_drop / 100.0)
    print(f"validation split ({calib_name}, every view present):")
    print(calibrate.format_sweep(calibration, names))
    calibration = {"dataset": calib_name, "samples": int(len(calib.labels)), **calibration}
    thresholds = calibration["thresholds"]

    report = views_report(model, test_views, test.labels, input_spec, thresholds)
    print(f"test set ({data.name}/test, {k} views):")
    print(format_views_table(report, names, thresholds))

    config["training"] = {"arch": args.arch, "dataset": data.name, "epochs": args.epochs, "batchSize": args.batch_size,
                          "lr": args.lr, "weightDecay": args.weight_decay, "exitWeights": weights, "seed": args.seed,
                          "augment": args.augment, "trainSamples": int(len(train.labels)), "valSize": args.val_size,
                          "viewDropout": args.view_dropout}
    if args.feature_l1:
        config["training"]["featureL1"] = args.feature_l1
    if args.feature_hoyer:
        config["training"]["featureHoyer"] = args.feature_hoyer
    evaluation = evaluation_block(f"{data.name}-views{k}/test", report["all"], calibration)
    evaluation["views"] = views_evaluation(report, spec_views)
    name = args.name or os.path.basename(os.path.normpath(args.out))
    write_views_bundle(args.out, model, config=config, name=name, version=args.version, labels=data.labels,
                       input_spec=input_spec, thresholds=thresholds, evaluation=evaluation, opset=args.opset)
    print(f"wrote bundle {args.out} ({time.time() - started:.1f}s in all)")
    return 0


def views_evaluation(report: dict[str, Any], spec_views: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `evaluation.views` (an extra field): how the views were made, each device
    alone and the Overall with 1, 2, ... views missing, on the test set."""
    def brief(r: dict[str, Any]) -> dict[str, Any]:
        return {"present": r["present"], "overall": round(r["overall"], 6), "ideal": round(r["ideal"], 6),
                "stageAccuracy": {s["name"]: round(s["accuracyAll"], 6) for s in r["stages"]},
                "exitRate": {s["name"]: round(s["exitRate"], 6) for s in r["stages"]}}

    return {"data": spec_views, "single": [brief(r) for r in report["single"]],
            "missing": [{"missing": g["missing"], "overall": round(g["overall"], 6),
                         "minOverall": round(g["minOverall"], 6), "maxOverall": round(g["maxOverall"], 6),
                         "subsets": [brief(r) for r in g["subsets"]]} for g in report["missing"]],
            "bestSingleView": report["bestSingleView"], "gain": round(report["gain"], 6)}
