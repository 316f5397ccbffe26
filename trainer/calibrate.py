"""Alert thresholds for a target false-alarm rate or for best F1, through the agent's rules.

Both calibrations replay scores through :class:`edge.alerts.rules.RuleMachine`,
so the K-of-N debounce and the hysteresis the agent applies are part of the
rate that is promised: a "false alarm" is an alert *opened* on healthy data,
not a single window above the level.

Point-wise metrics follow the SKAB benchmark (``core/metrics.py``, binary):
``F1 = TP / (TP + (FP + FN) / 2)``, ``FAR = FP / (FP + TN)``, ``MAR = FN / (FN + TP)``,
counted over every test row, a row being predicted anomalous while an alert is
open (the state after the last window that ended at or before the row).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from edge.alerts.rules import RuleMachine, RuleSpec, Transition

WEEK_S = 7 * 86_400.0


@dataclass(frozen=True)
class RuleTrace:
    active: np.ndarray  # [windows] bool: alert open after this window
    opened: list[float]  # ts of every "opened" transition
    events: list[Transition] = field(default_factory=list)  # every transition, in order


def run_rules(spec: RuleSpec, ts: np.ndarray, scores: np.ndarray) -> RuleTrace:
    """Feed one asset's window scores (time order) through a fresh RuleMachine."""
    m = RuleMachine(spec)
    active = np.zeros(len(ts), dtype=bool)
    events: list[Transition] = []
    for i, (t, s) in enumerate(zip(ts.tolist(), scores.tolist(), strict=True)):
        events.extend(m.update(t, s))
        active[i] = m.active
    return RuleTrace(active, [e.ts for e in events if e.kind == "opened"], events)


def pointwise(row_ts: np.ndarray, win_ts: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Row predictions: the alert state after the last window ending at or before the row."""
    idx = np.searchsorted(win_ts, row_ts, side="right") - 1
    return (idx >= 0) & active[np.clip(idx, 0, None)] if len(win_ts) else \
        np.zeros(len(row_ts), dtype=bool)


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, truth: np.ndarray, pred: np.ndarray) -> Counts:
        y, p = np.asarray(truth, bool), np.asarray(pred, bool)
        self.tp += int((y & p).sum())
        self.fp += int((~y & p).sum())
        self.fn += int((y & ~p).sum())
        self.tn += int((~y & ~p).sum())
        return self

    def metrics(self) -> dict[str, float]:
        """SKAB binary metrics; FAR and MAR in percent as the leaderboard prints them.

        >>> Counts(tp=8, fp=1, fn=2, tn=9).metrics()["f1"]
        0.8421052631578947
        """
        pos, neg = self.tp + self.fn, self.fp + self.tn
        return {
            "f1": self.tp / (self.tp + (self.fp + self.fn) / 2) if self.tp else 0.0,
            "far_pct": 100.0 * self.fp / neg if neg else 0.0,
            "mar_pct": 100.0 * self.fn / pos if pos else 0.0,
            "tp": float(self.tp), "fp": float(self.fp), "fn": float(self.fn),
            "tn": float(self.tn),
        }


@dataclass(frozen=True)
class Calibration:
    method: str
    threshold: float
    expected_false_alarms_per_week: float | None
    false_alarm_rate_per_window: float | None
    evidence: dict[str, Any] = field(default_factory=dict)

    def rationale(self) -> str:
        e = self.evidence
        if self.method == "false_alarm_rate":
            return (f"lowest level whose replay through the alert rule (k={e['k']} of "
                    f"n={e['n']}) opened at most {e['target_per_week']:g} alarm per asset per "
                    f"week on {e['windows']} healthy validation windows "
                    f"({e['hours']:.1f} h, {e['assets']} asset(s)): "
                    f"{e['opened']} opened, {self.expected_false_alarms_per_week:.3g}/week")
        if self.method == "best_f1":
            return (f"best point-wise F1 {e['f1']:.3f} (FAR {e['far_pct']:.1f} %, MAR "
                    f"{e['mar_pct']:.1f} %) over {e['rows']} labelled validation rows of "
                    f"{e['assets']} asset(s), replayed through the alert rule (k={e['k']} of "
                    f"n={e['n']})")
        return f"fixed level {self.threshold:g} from the training config"


def _candidates(scores: np.ndarray, n: int = 60) -> np.ndarray:
    s = np.asarray(scores, np.float64)
    s = s[np.isfinite(s)]
    qs = np.quantile(s, np.linspace(0.5, 1.0, n)) if s.size else np.array([1.0])
    return np.unique(np.round(np.concatenate([qs, qs * 1.05]), 6))


def calibrate_false_alarms(
    spec: RuleSpec, healthy: list[tuple[np.ndarray, np.ndarray]],
    *, target_per_week: float = 1.0, hop_s: float,
) -> Calibration:
    """Lowest warning level whose alarm rate on healthy ``(ts, scores)`` runs is <= target.

    The observed rate is ``opened / asset-time``; with less than a week of
    healthy data a zero count is weak evidence, which the evidence records.
    """
    all_scores = np.concatenate([s for _, s in healthy])
    n_win = int(all_scores.size)
    seconds = max(n_win * hop_s, hop_s)
    best = None
    for level in _candidates(all_scores):
        sp = replace(spec, warning=float(level), critical=None, reset=None)
        opened = sum(len(run_rules(sp, t, s).opened) for t, s in healthy)
        rate_week = opened / seconds * WEEK_S
        if rate_week <= target_per_week:
            best = (float(level), opened, rate_week)
            break
    if best is None:  # even the highest healthy score alarms too often: go above it
        best = (float(all_scores.max()) * 1.1 + 1e-9, 0, 0.0)
    level, opened, rate_week = best
    evidence = {"windows": n_win, "hours": seconds / 3600.0, "assets": len(healthy),
                "opened": opened, "target_per_week": target_per_week, "k": spec.k,
                "n": spec.n, "windows_above": int((all_scores > level).sum())}
    return Calibration("false_alarm_rate", level, rate_week,
                       float((all_scores > level).mean()), evidence)


@dataclass(frozen=True)
class LabelledRun:
    """One asset's labelled rows and its window scores (both in time order)."""

    row_ts: np.ndarray
    labels: np.ndarray
    win_ts: np.ndarray
    scores: np.ndarray


def evaluate_level(spec: RuleSpec, runs: list[LabelledRun]) -> Counts:
    c = Counts()
    for r in runs:
        tr = run_rules(spec, r.win_ts, r.scores)
        c.add(r.labels, pointwise(r.row_ts, r.win_ts, tr.active))
    return c


def calibrate_best_f1(spec: RuleSpec, runs: list[LabelledRun],
                      max_far_pct: float | None = None) -> Calibration:
    """The warning level with the best pooled point-wise F1 on labelled validation runs.

    With ``max_far_pct``, only levels whose false-alarm rate stays within it compete
    (F1 alone buys misses back with false alarms); when none does, the level with
    the fewest false alarms is taken and ``evidence["far_bound_met"]`` is 0.
    """
    scores = np.concatenate([r.scores for r in runs])
    best: tuple[float, dict[str, float]] | None = None
    fewest: tuple[float, dict[str, float]] | None = None
    for level in _candidates(scores, 40):
        m = evaluate_level(replace(spec, warning=float(level), critical=None, reset=None),
                           runs).metrics()
        if fewest is None or m["far_pct"] < fewest[1]["far_pct"]:
            fewest = (float(level), m)
        if max_far_pct is not None and m["far_pct"] > max_far_pct:
            continue
        if best is None or m["f1"] > best[1]["f1"]:
            best = (float(level), m)
    met = best is not None
    best = best or fewest
    assert best is not None
    level, m = best
    rows = sum(len(r.row_ts) for r in runs)
    evidence = {**m, "rows": rows, "assets": len(runs), "k": spec.k, "n": spec.n,
                "far_bound_met": float(met)}
    if max_far_pct is not None:
        evidence["max_far_pct"] = max_far_pct
    return Calibration("best_f1", level, None, m["far_pct"] / 100.0, evidence)
