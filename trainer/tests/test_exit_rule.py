import math

import numpy as np
import pytest

from trainer.calibrate import SWEEP, choose_thresholds, exit_stages, normalized_entropy, summarize


def test_entropy_extremes():
    assert normalized_entropy(np.zeros((1, 10), np.float32))[0] == pytest.approx(1.0, abs=1e-12)
    one_hot = np.full((1, 10), -1000.0, np.float32)
    one_hot[0, 3] = 1000.0
    assert normalized_entropy(one_hot)[0] == 0.0
    big = np.array([[3e38, -3e38, 0.0], [1e30, 1e30, -1e30]], np.float32)
    eta = normalized_entropy(big)
    assert np.isfinite(eta).all()
    assert eta[0] == 0.0
    assert eta[1] == pytest.approx(math.log(2) / math.log(3))
    assert np.isnan(normalized_entropy(np.array([[np.nan, 0.0]], np.float32))[0])


def test_entropy_matches_definition():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (20, 7)).astype(np.float32)
    p = np.exp(logits.astype(np.float64))
    p /= p.sum(axis=1, keepdims=True)
    expected = -(p * np.log(p)).sum(axis=1) / np.log(7)
    np.testing.assert_allclose(normalized_entropy(logits), expected, rtol=1e-12)


def test_exit_stages_first_confident_stage_and_last_always_answers():
    etas = np.array([[0.1, 0.1, 0.9], [0.5, 0.2, 0.9], [0.5, 0.5, 0.99], [np.nan, 0.1, 0.0], [0.4, 0.3, 0.0]])
    np.testing.assert_array_equal(exit_stages(etas, [0.4, 0.3]), [0, 1, 2, 1, 2])


def test_summary_table():
    preds = np.array([[1, 1], [2, 0], [0, 0], [3, 3]])
    labels = np.array([1, 0, 1, 2])
    etas = np.array([[0.1, 0.5], [0.9, 0.1], [0.9, 0.2], [0.2, 0.2]])
    s = summarize(preds, etas, labels, [0.5], ["device", "server"])
    assert s["samples"] == 4
    assert s["stages"][0] == {"name": "device", "exitRate": 0.5, "accuracyAll": 0.25, "accuracyExited": 0.5}
    assert s["stages"][1] == {"name": "server", "exitRate": 0.5, "accuracyAll": 0.5, "accuracyExited": 0.5}
    assert s["overall"] == 0.5 and s["ideal"] == 0.5
    none = summarize(preds, etas, labels, [0.0], ["device", "server"])
    assert none["stages"][0]["accuracyExited"] is None


def test_calibration_picks_largest_threshold_within_half_a_point():
    # 1000 samples, eta spread evenly over (0, 1). The server is wrong on every 10th sample (90.0%).
    # The device is right everywhere below eta 0.5 and wrong on 3 in 10 above it, so exiting at
    # t > 0.5 gives Overall = 0.9 + 0.1 t - 0.3 (t - 0.5) = 1.05 - 0.2 t: within 0.5 points of
    # 90% up to t = 0.775, so the sweep must pick 0.75.
    n = 1000
    i = np.arange(n)
    labels = np.zeros(n, dtype=np.int64)
    eta_device = (i + 0.5) / n
    device = ((eta_device > 0.5) & np.isin(i % 10, [1, 2, 3])).astype(np.int64)
    server = (i % 10 == 0).astype(np.int64)
    preds = np.stack([device, server], axis=1)
    etas = np.stack([eta_device, np.full(n, 0.5)], axis=1)
    cal = choose_thresholds(preds, etas, labels, ["device", "server"], target_drop=0.005)
    assert [r["threshold"] for r in cal["sweeps"][0]["rows"]] == SWEEP
    rows = {r["threshold"]: r["overall"] for r in cal["sweeps"][0]["rows"]}
    assert rows[0.75] >= 0.895 > rows[0.8]
    assert cal["thresholds"] == [0.75]
    assert cal["lastStageAccuracy"] == 0.9
    # A looser budget (2 points) moves the choice up.
    assert choose_thresholds(preds, etas, labels, ["device", "server"], target_drop=0.02)["thresholds"] == [0.85]


def test_calibration_turns_an_exit_off_when_nothing_qualifies():
    labels = np.zeros(100, dtype=np.int64)
    preds = np.stack([np.ones(100, np.int64), np.zeros(100, np.int64)], axis=1)  # device always wrong
    etas = np.stack([np.zeros(100), np.zeros(100)], axis=1)  # and always confident
    cal = choose_thresholds(preds, etas, labels, ["device", "server"])
    assert cal["thresholds"] == [0.0]


def test_three_stage_sweep_covers_each_exit():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    preds = np.stack([labels, labels, labels], axis=1)
    etas = rng.random((300, 3))
    cal = choose_thresholds(preds, etas, labels, ["device", "edge", "server"])
    assert [s["stage"] for s in cal["sweeps"]] == ["device", "edge"]
    assert cal["thresholds"] == [0.95, 0.95]  # always right: the largest thresholds win
