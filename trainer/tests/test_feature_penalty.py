"""--feature-l1 and --feature-hoyer: activity penalties that make the device's features sparse."""

import os

import numpy as np
import pytest
import torch

from trainer.data import Split, preprocess, read_idx
from trainer.models import build_model, run_stages
from trainer.tests.conftest import FASHION_DIR, requires_fashion
from trainer.train import feature_hoyer, feature_l1, seed_everything, train_model

SPEC = {"scale": 1 / 255, "mean": [0.2860], "std": [0.3530]}


def test_penalties_on_known_tensors():
    dense = torch.ones(2, 4, 2, 2)
    sparse = torch.zeros(2, 4, 2, 2)
    sparse[:, 0, 0, 0] = 3.0
    assert feature_l1([dense]).item() == pytest.approx(1.0)
    assert feature_l1([sparse]).item() == pytest.approx(3.0 / 16)
    # Hoyer: 1 for a constant tensor, 1/sqrt(n) for a single non-zero value, blind to scale.
    assert feature_hoyer([dense]).item() == pytest.approx(1.0)
    assert feature_hoyer([sparse]).item() == pytest.approx(1 / 4)
    assert feature_hoyer([7 * sparse]).item() == pytest.approx(1 / 4)
    # Summed over the stages' tensors.
    assert feature_hoyer([dense, sparse]).item() == pytest.approx(1.25)


def device_zero_share(l1: float, hoyer: float, train: Split, probe: np.ndarray) -> float:
    seed_everything(0, 1)
    model = build_model("deep", {"input_shape": [1, 28, 28], "filters": 8, "classes": 10})
    train_model(model, train, SPEC, epochs=3, batch_size=64, lr=3e-3, weight_decay=0.0, exit_weights=[1.0, 1.0],
                seed=0, use_augment=False, feature_l1_weight=l1, feature_hoyer_weight=hoyer, log=lambda _: None)
    model.eval()
    with torch.no_grad():
        features, _ = run_stages(model, torch.from_numpy(preprocess(probe, SPEC["scale"], SPEC["mean"], SPEC["std"])))
    return float((features[0] == 0).float().mean())


@requires_fashion
def test_penalties_increase_exact_zeros_in_device_features():
    images = read_idx(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz"))[:2048].reshape(-1, 1, 28, 28)
    labels = read_idx(os.path.join(FASHION_DIR, "train-labels-idx1-ubyte.gz"))[:2048].astype(np.int64)
    probe = read_idx(os.path.join(FASHION_DIR, "t10k-images-idx3-ubyte.gz"))[:500].reshape(-1, 1, 28, 28)
    train = Split(images, labels)
    base = device_zero_share(0.0, 0.0, train, probe)
    l1 = device_zero_share(1.0, 0.0, train, probe)
    hoyer = device_zero_share(0.0, 3.0, train, probe)
    print(f"zero share of device features: none {base:.3f}, --feature-l1 1 {l1:.3f}, --feature-hoyer 3 {hoyer:.3f}")
    assert l1 > base + 0.05
    assert hoyer > base + 0.05
