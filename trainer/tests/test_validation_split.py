"""`train` calibrates the exit thresholds on a validation split held out of the training set, never
on the test set: the test set only measures the table a bundle reports."""

import json
import os

import numpy as np
import pytest

from trainer import calibrate
from trainer.__main__ import build_parser, main
from trainer.data import Split, channel_stats, load_fashion_mnist
from trainer.evaluate import infer, load_bundle_model
from trainer.export import load_checkpoint
from trainer.tests.conftest import requires_fashion
from trainer import train as train_module

SCALE = 1 / 255


def test_default_holds_out_5000_training_images():
    args = build_parser().parse_args(["train", "--out", "x"])
    assert args.val_size == train_module.DEFAULT_VAL_SIZE == 5000


def test_train_help_documents_the_validation_split(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--val-size" in text and "last N training images" in text
    assert "never on the test set" in text and "(default: 5000)" in text


def test_hold_out_takes_the_last_images_out_of_training():
    images = np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1)
    train, val, name = train_module.hold_out(Split(images, np.arange(100)), 30, 0, "toy")
    assert name == "toy/train[70:100]"
    np.testing.assert_array_equal(val.labels, np.arange(70, 100))
    np.testing.assert_array_equal(train.labels, np.arange(70))
    # --train-limit counts from the start of what is left: the held-out images never train.
    train, val, _ = train_module.hold_out(Split(images, np.arange(100)), 30, 20, "toy")
    np.testing.assert_array_equal(train.labels, np.arange(20))
    np.testing.assert_array_equal(val.labels, np.arange(70, 100))


@pytest.mark.parametrize("val_size,train_limit,message", [
    (0, 0, "at least 1"),
    (100, 0, "leaves no training data"),
    (30, 71, "--train-limit 71 and --val-size 30"),
])
def test_hold_out_refuses_splits_that_do_not_fit(val_size, train_limit, message):
    split = Split(np.zeros((100, 1, 1, 1), np.uint8), np.zeros(100, np.int64))
    with pytest.raises(ValueError, match=message):
        train_module.hold_out(split, val_size, train_limit, "toy")


def test_train_exits_2_when_the_split_does_not_fit(tmp_path, capsys):
    # Tiny settings, so a regression that trains anyway stays fast.
    assert main(["train", "--val-size", "0", "--filters", "4", "--epochs", "1", "--train-limit", "64",
                 "--test-limit", "64", "--out", str(tmp_path / "b")]) == 2
    assert "--val-size" in capsys.readouterr().err


@requires_fashion
def test_default_train_calibrates_on_the_validation_split_not_the_test_set(tmp_path):
    bundle = str(tmp_path / "fashion-val")
    assert main(["train", "--arch", "deep", "--filters", "4", "--epochs", "1", "--batch-size", "64",
                 "--train-limit", "2000", "--test-limit", "1000", "--out", bundle]) == 0
    manifest = json.load(open(os.path.join(bundle, "ddnn.json")))
    ev = manifest["evaluation"]
    # The reported table is the test set's ...
    assert ev["dataset"] == "fashion-mnist/test" and ev["samples"] == 1000
    # ... and the thresholds come from the last 5,000 training images.
    assert ev["calibration"]["dataset"] == "fashion-mnist/train[55000:60000]"
    assert ev["calibration"]["samples"] == 5000 and ev["calibratedOn"] == ev["calibration"]["dataset"]
    assert ev["calibration"]["thresholds"] == [manifest["stages"][0]["exit"]["threshold"]]

    data = load_fashion_mnist()
    _, model = load_bundle_model(bundle)
    names = [s["name"] for s in manifest["stages"]]

    def sweep(images: np.ndarray, labels: np.ndarray) -> dict:
        preds, etas = infer(model, images, manifest["input"])
        return calibrate.choose_thresholds(preds, etas, labels, names, 0.005)

    val = sweep(data.train.images[55000:], data.train.labels[55000:])
    assert ev["calibration"]["sweeps"] == val["sweeps"]
    assert ev["calibration"]["lastStageAccuracy"] == val["lastStageAccuracy"]
    test = sweep(data.test.images[:1000], data.test.labels[:1000])
    assert ev["calibration"]["sweeps"] != test["sweeps"]

    # Training saw the first 2,000 images only: the input statistics and the recorded count are theirs.
    assert (manifest["input"]["mean"], manifest["input"]["std"]) == channel_stats(data.train.images[:2000], SCALE)
    training = load_checkpoint(bundle)["config"]["training"]
    assert training["trainSamples"] == 2000 and training["valSize"] == 5000
