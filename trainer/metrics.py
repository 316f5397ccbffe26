"""Validation and test figures of the supervised families: best-F1 level, RMSE, PHM08 score."""

from __future__ import annotations

import itertools

import numpy as np


def best_f1_threshold(prob: np.ndarray, label: np.ndarray) -> tuple[float, dict[str, float]]:
    """The probability level with the best F1 on labelled validation windows.

    >>> best_f1_threshold(np.array([0.1, 0.4, 0.8, 0.9]), np.array([0, 0, 1, 1]))[0]
    0.6
    """
    p, y = np.asarray(prob, np.float64), np.asarray(label).astype(bool)
    cands = np.unique(p)
    best = (-1.0, 0.5, 0.0, 0.0)
    for lo, hi in itertools.pairwise(cands):
        t = round(float(lo + hi) / 2, 6)  # midway: robust to float32 rounding of scores
        hit = p > t
        tp, fp, fn = int(np.sum(hit & y)), int(np.sum(hit & ~y)), int(np.sum(~hit & y))
        f1 = 2 * tp / max(1, 2 * tp + fp + fn)
        if f1 > best[0]:
            best = (f1, t, tp / max(1, tp + fp), tp / max(1, tp + fn))
    f1, t, prec, rec = best
    return t, {"validation_f1": max(f1, 0.0), "validation_precision": prec,
               "validation_recall": rec, "validation_false_alarm_rate":
               float(np.mean(p[~y] > t)) if np.any(~y) else 0.0}


def rmse(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred, np.float64) - true) ** 2)))


def nasa_score(pred: np.ndarray, true: np.ndarray) -> float:
    """PHM08 scoring function: late predictions (d > 0) cost more than early ones.

    >>> round(nasa_score(np.array([10.0, 30.0]), np.array([20.0, 20.0])), 3)
    2.876
    """
    d = np.asarray(pred, np.float64) - true
    return float(np.sum(np.where(d < 0, np.exp(-d / 13.0) - 1.0, np.exp(d / 10.0) - 1.0)))
