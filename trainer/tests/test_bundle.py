import hashlib
import json
import os

import numpy as np
import onnx
import pytest
import torch

from trainer.__main__ import main
from trainer.data import preprocess, read_idx, reshape_images
from trainer.evaluate import load_bundle_model
from trainer.export import write_bundle
from trainer.models import build_model, run_stages
from trainer.tests import onnx_reference
from trainer.tests.conftest import FASHION_DIR, requires_fashion

TEST_IMAGES = os.path.join(FASHION_DIR, "t10k-images-idx3-ubyte.gz")
TEST_LABELS = os.path.join(FASHION_DIR, "t10k-labels-idx1-ubyte.gz")


def check_bundle(bundle: str) -> dict:
    """What a Contract 1 loader checks, done independently of trainer.export."""
    manifest = json.load(open(os.path.join(bundle, "ddnn.json")))
    assert manifest["format"] == "ddnn-bundle/v1"
    stages = manifest["stages"]
    classes = len(manifest["labels"])
    for k, s in enumerate(stages):
        data = open(os.path.join(bundle, s["file"]), "rb").read()
        assert hashlib.sha256(data).hexdigest() == s["sha256"]
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model)
        assert 13 <= model.opset_import[0].version <= 17
        graph = model.graph
        inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
        assert [i.name for i in inputs] == [s["input"]]
        last = k == len(stages) - 1
        assert [o.name for o in graph.output] == ([s["logits"]] if last else [s["features"], s["logits"]])
        for v in [*inputs, *graph.output]:
            assert v.type.tensor_type.shape.dim[0].dim_param, f"{s['file']}: {v.name} has a fixed batch size"
        assert graph.output[-1].type.tensor_type.shape.dim[1].dim_value == classes
        if last:
            assert "exit" not in s and "features" not in s
        else:
            assert 0.0 <= s["exit"]["threshold"] <= 1.0
        if k > 0:
            assert s["input"] == stages[k - 1]["features"]
    return manifest


def check_onnx_matches_pytorch(bundle: str, images: np.ndarray) -> None:
    """Every stage's ONNX graph, chained as the runtime chains it, against the PyTorch checkpoint."""
    manifest, model = load_bundle_model(bundle)
    spec = manifest["input"]
    x = preprocess(reshape_images(images, spec["shape"]), spec["scale"], spec["mean"], spec["std"])
    with torch.no_grad():
        features, logits = run_stages(model, torch.from_numpy(x))
    current = x
    for k, s in enumerate(manifest["stages"]):
        outputs = onnx_reference.run(onnx.load(os.path.join(bundle, s["file"])), {s["input"]: current})
        np.testing.assert_allclose(outputs[-1], logits[k].numpy(), rtol=1e-4, atol=1e-4)
        if "features" in s:
            np.testing.assert_allclose(outputs[0], features[k].numpy(), rtol=1e-4, atol=1e-4)
            current = outputs[0]


def run_json(capsys, argv: list[str]) -> dict:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@requires_fashion
def test_train_export_evaluate(tmp_path, capsys):
    bundle = str(tmp_path / "fashion-tiny")
    # 2 epochs x 100 steps of 64 on a 6,400-image subset.
    assert main(["train", "--arch", "deep", "--filters", "8", "--epochs", "2", "--batch-size", "64",
                 "--train-limit", "6400", "--test-limit", "1000", "--out", bundle]) == 0
    manifest = check_bundle(bundle)
    assert [s["name"] for s in manifest["stages"]] == ["device", "server"]
    assert manifest["stages"][0]["input"] == "image" and manifest["stages"][1]["input"] == "features"
    assert manifest["input"]["shape"] == [1, 28, 28] and len(manifest["labels"]) == 10
    ev = manifest["evaluation"]
    assert ev["dataset"] == "fashion-mnist/test" and ev["samples"] == 1000
    assert set(ev["stageAccuracy"]) == {"device", "server"}
    assert ev["stageAccuracy"]["server"] > 0.6  # learned something in 200 steps
    assert ev["calibration"]["thresholds"] == [manifest["stages"][0]["exit"]["threshold"]]
    assert os.path.getsize(os.path.join(bundle, "checkpoint.pt")) > 0
    check_onnx_matches_pytorch(bundle, read_idx(TEST_IMAGES)[:64])

    # evaluate rebuilds from checkpoint.pt and reproduces the manifest's table.
    out = run_json(capsys, ["evaluate", "--bundle", bundle, "--images", TEST_IMAGES, "--labels", TEST_LABELS,
                            "--limit", "1000", "--json"])
    assert list(out) == ["samples", "stages", "overall", "ideal"]
    assert out["samples"] == 1000
    assert [list(s) for s in out["stages"]] == [["name", "exitRate", "accuracyAll", "accuracyExited"]] * 2
    for s in out["stages"]:
        assert s["accuracyAll"] == pytest.approx(ev["stageAccuracy"][s["name"]], abs=1e-6)
        assert s["exitRate"] == pytest.approx(ev["exitRate"][s["name"]], abs=1e-6)
    assert out["overall"] == pytest.approx(ev["overall"], abs=1e-6)

    # Overrides and per-sample predictions.
    preds_path = str(tmp_path / "p.json")
    off = run_json(capsys, ["evaluate", "--bundle", bundle, "--images", TEST_IMAGES, "--labels", TEST_LABELS,
                            "--limit", "50", "--json", "--threshold", "device=0", "--predictions", preds_path])
    assert off["stages"][0]["exitRate"] == 0 and off["stages"][0]["accuracyExited"] is None
    assert off["overall"] == off["stages"][1]["accuracyAll"]
    p = json.load(open(preds_path))
    assert list(p) == ["exitStage", "label", "stageLabels", "stageEntropy"]
    assert p["exitStage"] == [1] * 50
    assert p["label"] == [row[1] for row in p["stageLabels"]]
    assert all(len(r) == 2 and all(0 <= e <= 1 for e in r) for r in p["stageEntropy"])
    labels = read_idx(TEST_LABELS)[:50]
    assert np.mean(np.array(p["label"]) == labels) == pytest.approx(off["overall"])

    assert main(["evaluate", "--bundle", bundle, "--images", TEST_IMAGES, "--labels", TEST_LABELS,
                 "--threshold", "server=0.5"]) == 2
    assert "last stage" in capsys.readouterr().err


@pytest.mark.parametrize("stages,names,shape,mean,std", [
    (1, "solo", "3,8,8", "0.4,0.5,0.6", "0.2,0.25,0.3"),
    (4, "cam,gw,fog,cloud", "3,32,32", "0.4,0.5,0.6", "0.2,0.25,0.3"),
    (2, "a,b", "16", "0.5", "0.5"),
])
def test_synth_bundle(tmp_path, capsys, stages, names, shape, mean, std):
    bundle = str(tmp_path / "synth")
    images, labels = str(tmp_path / "x.idx.gz"), str(tmp_path / "y.idx.gz")
    assert main(["synth-images", "--out-images", images, "--out-labels", labels, "--shape", shape,
                 "--count", "300", "--classes", "5", "--seed", "3"]) == 0
    assert read_idx(images).shape == (300, *map(int, shape.split(",")))
    assert main(["synth", "--out", bundle, "--stages", str(stages), "--stage-names", names,
                 "--tensor-names", "in,feat,out", "--input-shape", shape, "--mean", mean, "--std", std,
                 "--classes", "5", "--seed", "7", "--calibrate-images", images]) == 0
    manifest = check_bundle(bundle)
    check_onnx_matches_pytorch(bundle, read_idx(images)[:32])
    assert [s["name"] for s in manifest["stages"]] == names.split(",")
    assert manifest["stages"][0]["input"] == "in" and all(s["logits"] == "out" for s in manifest["stages"])
    assert manifest["input"]["mean"] == [float(v) for v in mean.split(",")]
    out = run_json(capsys, ["evaluate", "--bundle", bundle, "--images", images, "--labels", labels, "--json"])
    assert out["samples"] == 300
    rates = [s["exitRate"] for s in out["stages"]]
    assert sum(rates) == pytest.approx(1.0)
    if stages > 1:
        # Median thresholds on these very images: about half leave at the first exit.
        assert rates[0] == pytest.approx(0.5, abs=0.01)
        assert all(r > 0 for r in rates)
    else:
        assert rates == [1.0]


def test_synth_rejects_bad_names(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "b"), "--stages", "2", "--stage-names", "Device,server"]) == 2
    assert "DNS label" in capsys.readouterr().err
    assert main(["synth", "--out", str(tmp_path / "b"), "--stages", "2", "--tensor-names", "x,x,y"]) == 2


@pytest.mark.parametrize("arch", ["shallow", "deep3"])
def test_export_of_untrained_arch(tmp_path, arch):
    """Binarized layers bake into plain Conv/Gemm; three stages chain by name."""
    torch.manual_seed(0)
    config = {"input_shape": [1, 28, 28], "filters": 8, "classes": 10}
    model = build_model(arch, config)
    # Non-trivial BN statistics, so folding them into the exported convs is actually checked.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 1, 28, 28) * 2 + 1)
    model.eval()
    bundle = str(tmp_path / arch)
    spec = {"shape": [1, 28, 28], "dtype": "float32", "scale": 1 / 255, "mean": [0.3], "std": [0.35]}
    write_bundle(bundle, model, arch=arch, config=config, name=arch, version="0.1.0",
                 labels=[str(i) for i in range(10)], input_spec=spec, thresholds=[0.5] * (len(model.names) - 1),
                 evaluation=None)
    manifest = check_bundle(bundle)
    if arch == "deep3":
        assert [(s["input"], s.get("features")) for s in manifest["stages"]] == [
            ("image", "features"), ("features", "edge_features"), ("edge_features", None)]
    images = np.random.default_rng(0).integers(0, 256, (16, 28, 28), dtype=np.uint8)
    check_onnx_matches_pytorch(bundle, images)
    ops = {n.op_type for s in manifest["stages"] for n in onnx.load(os.path.join(bundle, s["file"])).graph.node}
    assert ops <= {"Conv", "Relu", "MaxPool", "Flatten", "Gemm", "GlobalAveragePool"}, ops


def test_train_on_cifar_batches(tmp_path):
    """A user pointing --data-dir at CIFAR-10 python batches gets a 3-channel bundle."""
    import pickle

    rng = np.random.default_rng(0)
    for name, n in (("data_batch_1", 64), ("test_batch", 32)):
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"labels": [int(v) for v in rng.integers(0, 10, n)]}, f)
    bundle = str(tmp_path / "cifar")
    assert main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--arch", "deep3", "--filters", "4",
                 "--epochs", "1", "--batch-size", "32", "--val-size", "16", "--out", bundle]) == 0
    manifest = check_bundle(bundle)
    assert manifest["input"]["shape"] == [3, 32, 32]
    assert len(manifest["input"]["mean"]) == 3 and len(manifest["input"]["std"]) == 3
    assert manifest["labels"][0] == "airplane"
    assert manifest["evaluation"]["dataset"] == "cifar10/test" and manifest["evaluation"]["samples"] == 32
    assert manifest["evaluation"]["calibratedOn"] == "cifar10/train[48:64]"
