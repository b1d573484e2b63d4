"""`python -m trainer evaluate-views`: the Table II of a multi-view bundle, in PyTorch from its
checkpoint: every exit with all views present, each device alone, and every set of views with
1, 2, ... views missing (the devices that failed), each at the manifest's thresholds."""

from __future__ import annotations

import itertools
import json
from typing import Any, Sequence

import numpy as np
import torch

from . import calibrate
from .data import load_dataset, preprocess, read_idx, reshape_images
from .evaluate import predictions, thresholds_with_overrides
from .export import load_checkpoint, read_manifest
from .views_data import make_views
from .views_model import MultiViewDDNN, build_views_model


def preprocess_views(views: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """Contract 1's preprocessing of every view: u8 [N, K, *shape] -> float32 [N, K, *shape]."""
    n, k = views.shape[:2]
    x = preprocess(views.reshape((n * k,) + views.shape[2:]), spec["scale"], spec["mean"], spec["std"])
    return x.reshape(views.shape)


def all_subsets(views: int) -> list[tuple[int, ...]]:
    """Every non-empty set of views present, all views first, then by views missing, then in order."""
    out: list[tuple[int, ...]] = []
    for present in range(views, 0, -1):
        out.extend(itertools.combinations(range(views), present))
    return out


def infer_views(model: MultiViewDDNN, views: np.ndarray, spec: dict[str, Any],
                subsets: Sequence[Sequence[int]], batch_size: int = 500) -> dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]]:
    """Every exit on every sample for each set of views present: {subset: (argmax [N, E] int64,
    eta [N, E] float64)}. The device stages run once per batch; only the aggregators and the
    later stages run per subset."""
    model.eval()
    keys = [tuple(s) for s in subsets]
    out: dict[tuple[int, ...], tuple[list[np.ndarray], list[np.ndarray]]] = {key: ([], []) for key in keys}
    exits = len(model.names)
    with torch.no_grad():
        for i in range(0, len(views), batch_size):
            x = torch.from_numpy(preprocess_views(views[i:i + batch_size], spec))
            n = x.shape[0]
            device = [model.devices[v](x[:, v]) for v in range(model.views)]
            for key in keys:
                present = torch.zeros(n, model.views, dtype=torch.bool)
                present[:, list(key)] = True
                _, logits = model.after_devices(device, present)
                lg = [t.numpy().astype(np.float32) for t in logits]
                out[key][0].append(np.stack([np.argmax(t, axis=1) for t in lg], axis=1))
                out[key][1].append(np.stack([calibrate.normalized_entropy(t) for t in lg], axis=1))
    result = {}
    for key, (preds, etas) in out.items():
        if preds:
            result[key] = (np.concatenate(preds).astype(np.int64), np.concatenate(etas))
        else:
            result[key] = (np.zeros((0, exits), dtype=np.int64), np.zeros((0, exits), dtype=np.float64))
    return result


def views_report(model: MultiViewDDNN, views: np.ndarray, labels: np.ndarray, spec: dict[str, Any],
                 thresholds: Sequence[float]) -> dict[str, Any]:
    """The multi-view table: `all` (every view present), `single` (each device alone, view order),
    `missing` (for m = 1..K-1 views missing: every subset and the mean, min and max Overall), and
    the aggregate's gain over the best single view, all at `thresholds`."""
    k = model.views
    subsets = all_subsets(k)
    results = infer_views(model, views, spec, subsets)

    def row(key: tuple[int, ...]) -> dict[str, Any]:
        preds, etas = results[key]
        return {"present": list(key), **calibrate.summarize(preds, etas, labels, thresholds, model.names)}

    full = row(tuple(range(k)))
    single = [row((v,)) for v in range(k)]
    missing = []
    for m in range(1, k):
        rows = [row(s) for s in subsets if len(s) == k - m]
        overall = [r["overall"] for r in rows]
        missing.append({"missing": m, "subsets": rows, "overall": float(np.mean(overall)),
                        "minOverall": min(overall), "maxOverall": max(overall)})
    best = max(range(k), key=lambda v: single[v]["overall"])
    return {"samples": int(len(labels)), "views": k, "localAggregation": model.local_agg,
            "featureAggregation": model.feature_agg, "all": full, "single": single, "missing": missing,
            "bestSingleView": best, "bestSingleOverall": single[best]["overall"],
            "gain": full["overall"] - single[best]["overall"]}


def format_views_table(report: dict[str, Any], names: Sequence[str], thresholds: Sequence[float]) -> str:
    """Table II for a multi-view model: the exits with every view present, then one row per set of
    views present (exit rates, each exit's accuracy over all samples, Overall, Ideal)."""
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    lines = [f"views: {report['views']} (local aggregation {report['localAggregation']}, feature aggregation "
             f"{report['featureAggregation']}); the {names[0]} exit is the local aggregator's",
             "all views present:", calibrate.format_table(report["all"], thresholds), ""]
    rate_cols = [f"exit@{n}" for n in names[:-1]]
    acc_cols = [f"{n} acc" for n in names]
    cols = ["views present", *rate_cols, *acc_cols, "Overall", "Ideal"]
    widths = [max(len(c), 8) for c in cols]
    widths[0] = max(widths[0], 2 * report["views"] + 10)
    lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cols, widths))))
    rows = [report["all"], *report["single"]]
    for group in report["missing"]:
        rows.extend(r for r in group["subsets"] if len(r["present"]) > 1)
    for r in rows:
        label = ",".join(map(str, r["present"])) + (" (all)" if len(r["present"]) == report["views"] else
                                                     " (alone)" if len(r["present"]) == 1 else "")
        cells = [label, *[pct(s["exitRate"]) for s in r["stages"][:-1]], *[pct(s["accuracyAll"]) for s in r["stages"]],
                 pct(r["overall"]), pct(r["ideal"])]
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    lines.append("")
    lines.append(f"0 views missing: Overall {pct(report['all']['overall'])}")
    for group in report["missing"]:
        m = group["missing"]
        lines.append(f"{m} view{'s' if m > 1 else ''} missing: Overall {pct(group['overall'])} on average "
                     f"(min {pct(group['minOverall'])}, max {pct(group['maxOverall'])}, "
                     f"{len(group['subsets'])} sets of views)")
    lines.append(f"best single view: {report['bestSingleView']} (Overall {pct(report['bestSingleOverall'])}); "
                 f"all views {pct(report['all']['overall'])}: {100 * report['gain']:+.2f} points")
    return "\n".join(lines)


def load_views_bundle(bundle_dir: str) -> tuple[dict[str, Any], MultiViewDDNN, dict[str, Any]]:
    """The manifest, the PyTorch model rebuilt from checkpoint.pt, and the checkpoint's config."""
    manifest = read_manifest(bundle_dir)
    if "views" not in manifest:
        raise ValueError(f"{bundle_dir}: not a multi-view bundle (no views block): use python -m trainer evaluate")
    ckpt = load_checkpoint(bundle_dir)
    if ckpt["arch"] != "views":
        raise ValueError(f"{bundle_dir}: checkpoint arch {ckpt['arch']!r} is not a multi-view model")
    model = build_views_model(ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    names = [s["name"] for s in manifest["stages"]]
    if model.names != names or model.views != manifest["views"]["count"]:
        raise ValueError(f"{bundle_dir}: checkpoint ({model.views} views, stages {model.names}) does not match the "
                         f"manifest ({manifest['views']['count']} views, stages {names})")
    return manifest, model.eval(), ckpt["config"]


def load_views_eval_set(images: Sequence[str], labels_path: str, views: int, input_shape: Sequence[int],
                        limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """One idx file of u8 images per view (view order) and one of labels -> ([N, K, *shape], [N])."""
    if len(images) != views:
        raise ValueError(f"--images given {len(images)} time(s); the bundle has {views} views: give it once per "
                         "view, view 0 first")
    labels = read_idx(labels_path).astype(np.int64).reshape(-1)
    per_view = []
    for path in images:
        x = read_idx(path)
        if x.dtype != np.uint8:
            raise ValueError(f"{path}: images must be unsigned bytes, got {x.dtype}")
        if len(x) != len(labels):
            raise ValueError(f"{path} holds {len(x)} images but {labels_path} holds {len(labels)} labels")
        per_view.append(reshape_images(x, input_shape, path))
    stacked = np.stack(per_view, axis=1)
    if limit is not None:
        stacked, labels = stacked[:limit], labels[:limit]
    return stacked, labels


def parse_present(text: str | None, views: int) -> tuple[int, ...]:
    """--present "0,2" -> (0, 2); None -> every view."""
    if text is None:
        return tuple(range(views))
    try:
        chosen = sorted({int(v) for v in text.split(",")})
    except ValueError:
        raise ValueError(f"--present {text!r}: comma-separated view indices, e.g. 0,2") from None
    if not chosen or chosen[0] < 0 or chosen[-1] >= views:
        raise ValueError(f"--present {text!r}: views are 0..{views - 1}")
    return tuple(chosen)


def main(args: Any) -> int:
    torch.set_num_threads(args.threads)
    manifest, model, config = load_views_bundle(args.bundle)
    thresholds = thresholds_with_overrides(manifest, args.threshold or [])
    spec = manifest["input"]
    if args.images:
        views, labels = load_views_eval_set(args.images, args.labels or "", model.views, spec["shape"], args.limit)
        source = f"{len(args.images)} view files"
    else:
        if args.labels:
            raise ValueError("--labels goes with --images (one file per view); without them the views are made "
                             "from --dataset")
        data = load_dataset(args.dataset, args.data_dir)
        part = data.test if args.split == "test" else data.train
        n = len(part.labels) if args.limit is None else min(args.limit, len(part.labels))
        seed = int(config["view_data"]["seed"])
        views = make_views(part.images[:n], model.views, args.split, seed)
        labels = part.labels[:n]
        source = f"{data.name}/{args.split}[:{n}], views made with seed {seed}"
    classes = len(manifest["labels"])
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels must be in 0..{classes - 1}")
    report = views_report(model, views, labels, spec, thresholds)
    present = parse_present(args.present, model.views)
    if args.predictions:
        preds, etas = infer_views(model, views, spec, [present])[present]
        with open(args.predictions, "w") as f:
            json.dump(predictions(preds, etas, thresholds), f)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"bundle: {args.bundle} ({manifest['name']} {manifest['version']}), {source}")
        print(format_views_table(report, model.names, thresholds))
    return 0
