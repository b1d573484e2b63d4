"""Multi-view (horizontal) DDNN: the data set, the aggregators, view dropout, training, the bundle's
views block (docs/bundle-views.md) and evaluate-views."""

import hashlib
import json
import os

import numpy as np
import onnx
import pytest
import torch

from trainer.__main__ import main
from trainer.data import load_fashion_mnist, read_idx
from trainer.tests import onnx_reference
from trainer.tests.conftest import requires_fashion
from trainer.views_data import BLOCK, make_views, sample_paths
from trainer.views_evaluate import all_subsets, load_views_bundle, preprocess_views
from trainer.views_export import write_views_bundle
from trainer.views_model import aggregate, build_views_model
from trainer.views_train import drop_views, views_channel_stats


def _items(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)


def test_views_of_an_item_do_not_depend_on_how_many_items_are_made():
    images = _items(BLOCK + 300)
    every = make_views(images, 3, "test", 0)
    assert every.shape == (BLOCK + 300, 3, 1, 28, 28) and every.dtype == np.uint8
    np.testing.assert_array_equal(make_views(images[:10], 3, "test", 0), every[:10])
    np.testing.assert_array_equal(make_views(images[BLOCK - 5:BLOCK + 7], 3, "test", 0, start=BLOCK - 5),
                                  every[BLOCK - 5:BLOCK + 7])
    np.testing.assert_array_equal(make_views(images, 3, "test", 0), every)
    # Another seed, split or K is another data set.
    assert not np.array_equal(make_views(images[:10], 3, "test", 1), every[:10])
    assert not np.array_equal(make_views(images[:10], 3, "train", 0), every[:10])
    assert not np.array_equal(make_views(images[:10], 4, "test", 0)[:, :3], every[:10])


def test_each_view_sees_about_half_of_the_item_from_its_own_side():
    ones = np.full((400, 1, 28, 28), 100, dtype=np.uint8)
    views = make_views(ones, 3, "test", 0)
    visible = views == 100  # neither occluded (0) nor hit by impulse noise (0 or 255)
    share = visible.mean(axis=(0, 2, 3, 4))
    assert np.all((share > 0.35) & (share < 0.55)), share
    # Camera 0 looks from the right (+x), so it sees the right half far more often than the left.
    assert visible[:, 0, 0, :, 20:].mean() > 0.8 and visible[:, 0, 0, :, :8].mean() < 0.1
    # Together the three views leave almost nothing unseen.
    assert visible.any(axis=1).mean() > 0.9
    noise = (views == 255).mean()
    assert 0.02 < noise < 0.03  # IMPULSE / 2 hot pixels


def test_views_reject_bad_arguments():
    with pytest.raises(ValueError, match="2 to 6 views"):
        make_views(_items(2), 7, "test")
    with pytest.raises(ValueError, match="split"):
        make_views(_items(2), 3, "valid")


def test_aggregators_over_the_views_present():
    a = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    b = torch.tensor([[0.0, 4.0], [-1.0, 2.5]])
    c = torch.tensor([[2.0, 1.0], [7.0, -3.0]])
    present = torch.tensor([[True, True, False], [False, True, True]])
    torch.testing.assert_close(aggregate([a, b, c], present, "max"), torch.tensor([[1.0, 4.0], [7.0, 2.5]]))
    torch.testing.assert_close(aggregate([a, b, c], present, "avg"), torch.tensor([[0.5, 1.0], [3.0, -0.25]]))
    cat = aggregate([a, b, c], present, "concat")
    torch.testing.assert_close(cat, torch.tensor([[1.0, -2.0, 0.0, 4.0, 0.0, 0.0], [0.0, 0.0, -1.0, 2.5, 7.0, -3.0]]))
    # One view present: max and avg are that view.
    only = torch.tensor([[False, True, False]] * 2)
    for how in ("max", "avg"):
        torch.testing.assert_close(aggregate([a, b, c], only, how), b)


def test_view_dropout_keeps_at_least_one_view():
    rng = np.random.default_rng(0)
    present = drop_views(rng, 20000, 3, 0.25)
    assert present.any(axis=1).all()
    assert 0.72 < present.mean() < 0.78
    assert drop_views(rng, 50, 3, 0.0).all()
    assert (drop_views(rng, 500, 2, 0.99).sum(axis=1) == 1).all()


def test_channel_stats_of_views():
    views = _items(30).reshape(10, 3, 1, 28, 28)
    x = views.astype(np.float64) / 255
    mean, std = views_channel_stats(views, 1 / 255)
    assert mean == [round(float(x.mean()), 4)] and std == [round(float(x.std()), 4)]


def _chain(bundle: str, manifest: dict, views_x: np.ndarray, present: list[int]) -> list[np.ndarray]:
    """What a views-aware runtime computes from the ONNX files alone: each view's device graph,
    the aggregators (numpy, as docs/bundle-views.md defines them), then the later stages."""
    spec = manifest["views"]
    first = manifest["stages"][0]
    outs = [onnx_reference.run(onnx.load(os.path.join(bundle, d["file"])), {first["input"]: views_x[:, v]})
            for v, d in enumerate(spec["devices"])]
    logits = [outs[v][1] for v in present]
    feats = [outs[v][0] for v in present]
    local = np.max(logits, axis=0) if spec["localAggregation"] == "max" else _avg(logits)
    if spec["featureAggregation"] == "concat":
        h = np.concatenate([outs[v][0] if v in present else np.zeros_like(outs[v][0])
                            for v in range(spec["count"])], axis=1)
    else:
        h = np.max(feats, axis=0) if spec["featureAggregation"] == "max" else _avg(feats)
    exits = [local]
    for s in manifest["stages"][1:]:
        o = onnx_reference.run(onnx.load(os.path.join(bundle, s["file"])), {s["input"]: h.astype(np.float32)})
        exits.append(o[-1])
        h = o[0]
    return exits


def _avg(xs: list[np.ndarray]) -> np.ndarray:
    total = xs[0].astype(np.float32)
    for x in xs[1:]:
        total = (total + x).astype(np.float32)
    return (total / np.float32(len(xs))).astype(np.float32)


def _check_views_bundle(bundle: str) -> dict:
    """The views block as docs/bundle-views.md has it, checked apart from trainer.views_export."""
    manifest = json.load(open(os.path.join(bundle, "ddnn.json")))
    assert manifest["format"] == "ddnn-bundle/v1"
    views = manifest["views"]
    assert list(views) == ["count", "localAggregation", "featureAggregation", "devices"]
    assert len(views["devices"]) == views["count"]
    assert views["devices"][0] == {"file": manifest["stages"][0]["file"], "sha256": manifest["stages"][0]["sha256"]}
    files = [d["file"] for d in views["devices"]] + [s["file"] for s in manifest["stages"][1:]]
    assert len(set(files)) == len(files)
    for d in [*views["devices"], *manifest["stages"]]:
        data = open(os.path.join(bundle, d["file"]), "rb").read()
        assert hashlib.sha256(data).hexdigest() == d["sha256"]
        onnx.checker.check_model(onnx.load_from_string(data))
    assert "exit" in manifest["stages"][0] and "exit" not in manifest["stages"][-1]
    return manifest


def _torch_exits(model, views_u8: np.ndarray, spec: dict, present: list[int]) -> list[np.ndarray]:
    x = torch.from_numpy(preprocess_views(views_u8, spec))
    mask = torch.zeros(len(x), model.views, dtype=torch.bool)
    mask[:, present] = True
    with torch.no_grad():
        return [t.numpy() for t in model(x, mask)["exits"]]


@pytest.mark.parametrize("arch,local,feature", [("deep", "avg", "concat"), ("deep3", "max", "avg"),
                                                ("shallow", "max", "max")])
def test_exported_views_compute_what_pytorch_computes(tmp_path, arch, local, feature):
    torch.manual_seed(0)
    config = {"input_shape": [1, 28, 28], "filters": 4, "classes": 10, "base_arch": arch, "views": 3,
              "local_agg": local, "feature_agg": feature, "view_data": {"seed": 0}}
    model = build_views_model(config)
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for _ in range(3):
            model(torch.randn(16, 3, 1, 28, 28) * 2 + 1)
    model.eval()
    spec = {"shape": [1, 28, 28], "dtype": "float32", "scale": 1 / 255, "mean": [0.15], "std": [0.3]}
    bundle = str(tmp_path / "views")
    write_views_bundle(bundle, model, config=config, name="views", version="0.1.0",
                       labels=[str(i) for i in range(10)], input_spec=spec,
                       thresholds=[0.5] * (len(model.names) - 1), evaluation=None)
    manifest = _check_views_bundle(bundle)
    assert [d["file"] for d in manifest["views"]["devices"]] == ["device-view0.onnx", "device-view1.onnx",
                                                                  "device-view2.onnx"]
    assert manifest["views"]["featureAggregation"] == feature
    if feature == "concat":
        server = onnx.load(os.path.join(bundle, manifest["stages"][1]["file"]))
        assert server.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 3 * 4
    views_u8 = make_views(_items(8), 3, "test")
    x = preprocess_views(views_u8, spec)
    for present in ([0, 1, 2], [1], [0, 2]):
        ours = _chain(bundle, manifest, x, present)
        for got, want in zip(ours, _torch_exits(model, views_u8, spec, present)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@requires_fashion
def test_train_sample_and_evaluate_views(tmp_path, capsys):
    bundle = str(tmp_path / "fashion-views-tiny")
    assert main(["train", "--views", "3", "--filters", "8", "--epochs", "2", "--batch-size", "64",
                 "--train-limit", "3200", "--val-size", "1000", "--test-limit", "300", "--out", bundle]) == 0
    manifest = _check_views_bundle(bundle)
    assert manifest["views"]["count"] == 3
    assert (manifest["views"]["localAggregation"], manifest["views"]["featureAggregation"]) == ("max", "max")
    assert [s["name"] for s in manifest["stages"]] == ["device", "server"]
    ev = manifest["evaluation"]
    assert ev["dataset"] == "fashion-mnist-views3/test" and ev["samples"] == 300
    assert ev["calibratedOn"] == "fashion-mnist/train[59000:60000]"
    assert ev["calibration"]["thresholds"] == [manifest["stages"][0]["exit"]["threshold"]]
    assert [r["present"] for r in ev["views"]["single"]] == [[0], [1], [2]]
    assert [g["missing"] for g in ev["views"]["missing"]] == [1, 2]
    assert ev["views"]["data"]["seed"] == 0 and ev["views"]["data"]["views"] == 3

    # The K = 1 reading: stages[] alone (view 0's device, then the server) is the model with view 0 only.
    _, model, _ = load_views_bundle(bundle)
    data = load_fashion_mnist()
    views_u8 = make_views(data.test.images[:32], 3, "test")
    x = preprocess_views(views_u8, manifest["input"])
    current, chained = x[:, 0], []
    for s in manifest["stages"]:
        out = onnx_reference.run(onnx.load(os.path.join(bundle, s["file"])), {s["input"]: current})
        chained.append(out[-1])
        current = out[0]
    for got, want in zip(chained, _torch_exits(model, views_u8, manifest["input"], [0])):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    for got, want in zip(_chain(bundle, manifest, x, [0, 1, 2]), _torch_exits(model, views_u8, manifest["input"],
                                                                              [0, 1, 2])):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

    # The evaluation sample: one idx file per view, reproducible bytes.
    out_dir = str(tmp_path / "eval")
    assert main(["sample", "--views", "3", "--count", "300", "--out", out_dir]) == 0
    images, labels = sample_paths(out_dir, "fashion-mnist", 3, 300)
    assert [os.path.basename(p) for p in images] == [f"fashion-mnist-views3-t10k-300-view{v}-images-idx3-ubyte.gz"
                                                      for v in range(3)]
    first = [open(p, "rb").read() for p in images]
    assert all(b[4:8] == b"\0\0\0\0" for b in first)  # gzip mtime 0
    assert main(["sample", "--views", "3", "--count", "300", "--out", out_dir]) == 0
    assert [open(p, "rb").read() for p in images] == first
    np.testing.assert_array_equal(read_idx(images[1]), make_views(data.test.images[:300], 3, "test")[:, 1, 0])

    # evaluate-views on the sample files reproduces the table train wrote; made from the data set too.
    capsys.readouterr()
    flags = ["evaluate-views", "--bundle", bundle, "--json"]
    assert main([*flags, *[a for p in images for a in ("--images", p)], "--labels", labels]) == 0
    report = json.loads(capsys.readouterr().out)
    assert main([*flags, "--limit", "300"]) == 0
    assert json.loads(capsys.readouterr().out) == report
    assert report["samples"] == 300 and report["views"] == 3
    assert report["all"]["overall"] == pytest.approx(ev["overall"], abs=1e-6)
    for s in report["all"]["stages"]:
        assert s["accuracyAll"] == pytest.approx(ev["stageAccuracy"][s["name"]], abs=1e-6)
        assert s["exitRate"] == pytest.approx(ev["exitRate"][s["name"]], abs=1e-6)
    assert [r["overall"] for r in report["single"]] == pytest.approx([r["overall"] for r in ev["views"]["single"]],
                                                                     abs=1e-6)
    assert [len(g["subsets"]) for g in report["missing"]] == [3, 3]
    assert report["missing"][1]["subsets"] == report["single"]
    assert report["gain"] == pytest.approx(report["all"]["overall"] - max(r["overall"] for r in report["single"]))

    # Text table, threshold override and per-sample predictions.
    assert main(["evaluate-views", "--bundle", bundle, "--limit", "50", "--threshold", "device=0",
                 "--predictions", str(tmp_path / "p.json")]) == 0
    text = capsys.readouterr().out
    assert "0,1,2 (all)" in text and "1 (alone)" in text and "2 views missing" in text
    p = json.load(open(tmp_path / "p.json"))
    assert p["exitStage"] == [1] * 50
    # --present: the predictions of the model with only those views.
    assert main(["evaluate-views", "--bundle", bundle, "--limit", "50", "--present", "2,0", "--json",
                 "--predictions", str(tmp_path / "p02.json")]) == 0
    two = json.loads(capsys.readouterr().out)["missing"][0]["subsets"][1]
    assert two["present"] == [0, 2]
    p = json.load(open(tmp_path / "p02.json"))
    assert np.mean(np.array(p["label"]) == data.test.labels[:50]) == pytest.approx(two["overall"])
    assert main(["evaluate-views", "--bundle", bundle, "--present", "3", "--limit", "5"]) == 2
    assert "views are 0..2" in capsys.readouterr().err

    # The single-view commands refuse a multi-view bundle and say what to use.
    assert main(["evaluate", "--bundle", bundle, "--images", images[0], "--labels", labels]) == 2
    assert "evaluate-views" in capsys.readouterr().err
    assert main([*flags, "--images", images[0], "--labels", labels]) == 2
    assert "once per view" in capsys.readouterr().err


def test_train_refuses_a_bad_view_count(tmp_path, capsys):
    for k in ("0", "7"):
        assert main(["train", "--views", k, "--filters", "4", "--epochs", "1", "--train-limit", "64",
                     "--out", str(tmp_path / "b")]) == 2
        assert "2 to 6 views" in capsys.readouterr().err


def test_subsets_list_every_set_of_views_present_all_first():
    assert all_subsets(3) == [(0, 1, 2), (0, 1), (0, 2), (1, 2), (0,), (1,), (2,)]
    assert len(all_subsets(6)) == 63


@requires_fashion
def test_the_same_command_writes_the_same_bundle(tmp_path):
    argv = ["train", "--views", "2", "--local-agg", "avg", "--filters", "4", "--epochs", "1", "--batch-size", "64",
            "--train-limit", "640", "--val-size", "200", "--test-limit", "100"]
    for out in ("a", "b"):
        assert main([*argv, "--out", str(tmp_path / out / "views2")]) == 0
    for file in ("ddnn.json", "device-view0.onnx", "device-view1.onnx", "server.onnx"):
        assert (tmp_path / "a" / "views2" / file).read_bytes() == (tmp_path / "b" / "views2" / file).read_bytes(), file
