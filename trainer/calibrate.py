"""The DDNN exit rule, the accuracy table, and the threshold sweep that picks each exit's default.

Exit rule: p = softmax(logits), eta = -sum(p_i ln p_i) / ln C; a sample leaves at the first stage
whose eta < threshold, and the last stage always answers. eta is computed in float64 from the
float32 logits through log_softmax, so large logits stay finite and the TypeScript runtime (which
does the same) agrees sample by sample.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

SWEEP = [round(0.05 * i, 2) for i in range(1, 20)]  # 0.05 .. 0.95


def normalized_entropy(logits: np.ndarray) -> np.ndarray:
    """eta in [0, 1] per row of logits [N, C] (C >= 2); NaN where a logit is not finite."""
    z = np.asarray(logits, dtype=np.float32).astype(np.float64)
    classes = z.shape[1]
    if classes < 2:
        raise ValueError("normalized entropy needs at least two classes")
    with np.errstate(invalid="ignore", over="ignore"):
        shifted = z - z.max(axis=1, keepdims=True)
        # cumsum adds left to right like the TypeScript loop (numpy's sum is pairwise), so both
        # runtimes round the same way.
        log_p = shifted - np.log(np.cumsum(np.exp(shifted), axis=1)[:, -1:])
        eta = -np.cumsum(np.exp(log_p) * log_p, axis=1)[:, -1] / math.log(classes)
    eta[~np.isfinite(z).all(axis=1)] = np.nan
    # Rounding can leave eta a hair outside [0, 1].
    return np.clip(eta, 0.0, 1.0)


def exit_stages(etas: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Index of the stage each sample exits at. etas is [N, K]; thresholds has K-1 values
    (the last stage has none). NaN entropy never exits early."""
    n, k = etas.shape
    if len(thresholds) != k - 1:
        raise ValueError(f"{k} stages need {k - 1} thresholds, got {len(thresholds)}")
    exits = np.full(n, k - 1, dtype=np.int64)
    pending = np.ones(n, dtype=bool)
    for stage, t in enumerate(thresholds):
        with np.errstate(invalid="ignore"):
            here = pending & (etas[:, stage] < t)
        exits[here] = stage
        pending &= ~here
    return exits


def summarize(preds: np.ndarray, etas: np.ndarray, labels: np.ndarray, thresholds: Sequence[float],
              names: Sequence[str]) -> dict[str, Any]:
    """The accuracy table: per stage exitRate, accuracyAll (all samples), accuracyExited (samples
    that left there; None when none did), Overall (the answer at each sample's exit) and Ideal
    (right at any exit)."""
    n = len(labels)
    exits = exit_stages(etas, thresholds)
    correct = preds == labels[:, None]
    stages = []
    for k, name in enumerate(names):
        here = exits == k
        count = int(here.sum())
        stages.append({
            "name": name,
            "exitRate": count / n if n else 0.0,
            "accuracyAll": float(correct[:, k].mean()) if n else 0.0,
            "accuracyExited": float(correct[here, k].mean()) if count else None,
        })
    overall = float(correct[np.arange(n), exits].mean()) if n else 0.0
    ideal = float(correct.any(axis=1).mean()) if n else 0.0
    return {"samples": n, "stages": stages, "overall": overall, "ideal": ideal}


def _overall(preds: np.ndarray, etas: np.ndarray, labels: np.ndarray, thresholds: Sequence[float]) -> tuple[float, list[float]]:
    exits = exit_stages(etas, thresholds)
    overall = float((preds[np.arange(len(labels)), exits] == labels).mean())
    rates = [float((exits == k).mean()) for k in range(etas.shape[1])]
    return overall, rates


def choose_thresholds(preds: np.ndarray, etas: np.ndarray, labels: np.ndarray, names: Sequence[str],
                      target_drop: float = 0.005, sweep: Sequence[float] = SWEEP) -> dict[str, Any]:
    """Picks each exit's threshold, earliest exit first: sweep exit k with the exits before it at
    their chosen thresholds and the exits after it off (threshold 0), and keep the LARGEST
    threshold whose Overall accuracy stays within `target_drop` (a fraction: 0.005 = 0.5 points)
    of the last stage alone. Threshold 0 (exit off) when none does. Greedy on purpose: the
    earliest exit saves the most compute and traffic, so it gets the accuracy budget first."""
    k = etas.shape[1]
    baseline = float((preds[:, -1] == labels).mean())
    floor = baseline - target_drop - 1e-12
    chosen = [0.0] * (k - 1)
    sweeps = []
    for stage in range(k - 1):
        rows, ok = [], []
        for t in sweep:
            trial = list(chosen)
            trial[stage] = t
            overall, rates = _overall(preds, etas, labels, trial)
            rows.append({"threshold": t, "exitRate": [round(r, 6) for r in rates], "overall": round(overall, 6)})
            if overall >= floor:
                ok.append(t)
        chosen[stage] = max(ok) if ok else 0.0
        sweeps.append({"stage": names[stage], "chosen": chosen[stage], "rows": rows})
    return {"thresholds": chosen, "lastStageAccuracy": round(baseline, 6), "targetDrop": target_drop, "sweeps": sweeps}


def format_sweep(calibration: dict[str, Any], names: Sequence[str]) -> str:
    lines = [f"threshold sweep (last stage alone: {100 * calibration['lastStageAccuracy']:.2f}%, "
             f"keep Overall within {100 * calibration['targetDrop']:.2f} points)"]
    columns = [f"exit@{n}" for n in names]
    widths = [max(len(c), 7) for c in columns]
    for sweep in calibration["sweeps"]:
        lines.append(f"exit {sweep['stage']}:")
        lines.append("  threshold  " + "  ".join(c.rjust(w) for c, w in zip(columns, widths)) + "  overall")
        for row in sweep["rows"]:
            rates = "  ".join(f"{100 * r:.2f}%".rjust(w) for r, w in zip(row["exitRate"], widths))
            mark = "  <- chosen" if row["threshold"] == sweep["chosen"] else ""
            lines.append(f"  {row['threshold']:9.2f}  {rates}  {100 * row['overall']:6.2f}%{mark}")
        if sweep["chosen"] == 0.0:
            lines.append("  no threshold keeps Overall within the target: exit off (threshold 0)")
    return "\n".join(lines)


def format_table(summary: dict[str, Any], thresholds: Sequence[float]) -> str:
    """The accuracy table as text, percentages (like the paper's Table II)."""
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    width = max([len(s["name"]) for s in summary["stages"]] + [7])
    lines = [f"samples: {summary['samples']}",
             f"{'stage':<{width}}  threshold  exitRate  accuracyAll  accuracyExited"]
    for k, s in enumerate(summary["stages"]):
        t = f"{thresholds[k]:.4g}" if k < len(thresholds) else "-"
        lines.append(f"{s['name']:<{width}}  {t:>9}  {pct(s['exitRate']):>8}  {pct(s['accuracyAll']):>11}  "
                     f"{pct(s['accuracyExited']):>14}")
    lines.append(f"{'Overall':<{width}}  {pct(summary['overall'])}")
    lines.append(f"{'Ideal':<{width}}  {pct(summary['ideal'])}")
    return "\n".join(lines)
