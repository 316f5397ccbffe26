"""A candidate of the active model's family, refit on the appliance's own history.

The active bundle's manifest keeps the training config it was made from
(``lineage.config``, the canonical form of :class:`trainer.config.TrainingConfig`); the
candidate is that config refit on local rows, so family, signals, window, features,
alert rule and calibration method stay those of the active model and only the data
changes. Which rows are normal comes from the crew's verdicts
(:func:`trainer.alertspans.row_classes`): confirmed faults and, by default, the
model's unjudged alerts are cut out, false alarms stay in. Each run of kept rows is
windowed on its own (a fresh window buffer), so no window spans a cut.

As in ``forewarn train``, the first ``1 - data.validation_fraction`` of each asset's
kept rows fit the model and the rest calibrates the level when the method is
``false_alarm_rate``; beyond ``max_windows`` the fit windows are thinned evenly.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ValidationError

from edge.core.errors import BundleError, ConfigError
from edge.models.bundle import Manifest
from trainer.alertspans import CLASS_NAMES, FALSE_ALARM, NORMAL
from trainer.anomaly_pipeline import (
    Fitted,
    feed,
    fit_bundle,
    quality_gate,
    window_set,
)
from trainer.config import TrainingConfig, problems
from trainer.localhistory import AssetRows
from trainer.quality import DataQualityError

CHUNK_ROWS = 200_000  # rows windowed at once: bounds the window array's memory


def config_of(m: Manifest) -> TrainingConfig:
    """The training config recorded in the active bundle (``lineage.config``)."""
    raw = m.lineage.get("config")
    family = m.lineage.get("model_family")
    where = f"bundle {m.name}/{m.version}"
    if not isinstance(raw, dict):
        raise BundleError(f"{where}: lineage.config is missing: the bundle does not say how "
                          "it was trained, so it cannot be refit here (train it again with "
                          "`forewarn train`, which records it)")
    if m.output.kind != "anomaly":
        raise BundleError(f"{where}: output.kind {m.output.kind!r} (family {family!r}): "
                          "retraining on the appliance refits the anomaly families (pca, "
                          "isoforest); a supervised target needs failure labels the "
                          "history does not hold")
    try:
        return TrainingConfig.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"{where}: lineage.config does not validate: {problems(exc)}") \
            from exc


@dataclass
class TrainingSet:
    """The normal windows of every asset, and what was left out."""

    fit: list[np.ndarray] = field(default_factory=list)  # [n, signals, window] per asset
    validation: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    lo: np.ndarray | None = None  # per signal: smallest and largest kept value
    hi: np.ndarray | None = None
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASS_NAMES, 0))
    assets: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # asset -> why
    stride: int = 1
    digest: Any = field(default_factory=hashlib.sha256)

    @property
    def windows(self) -> int:
        return sum(len(w) for w in self.fit)

    def fit_windows(self) -> np.ndarray:
        if not self.fit:
            raise ConfigError("no normal training windows in the training period: every "
                              "row is inside a confirmed fault, an unjudged alert or a gap "
                              "(give verdicts on the alerts, widen the period, or set "
                              "retrain.unjudged = \"normal\")")
        return np.concatenate(self.fit)

    def ranges(self) -> np.ndarray:
        """``[signals, 2]``: the kept rows' extremes (what the training range is made of)."""
        assert self.lo is not None and self.hi is not None
        return np.stack([self.lo, self.hi], axis=1)


def _runs(keep: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.r_[0, keep.astype(np.int8), 0]))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _windows(cfg: TrainingConfig, rows: AssetRows, keep: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """Windows of every run of kept rows, each run in a fresh window buffer."""
    d, w = cfg.data, cfg.window
    ends, wins = [], []
    for a, b in _runs(keep):
        for lo in range(a, b, CHUNK_ROWS):
            hi = min(b, lo + CHUNK_ROWS)
            ws = window_set(d.signals, d.sample_period_s, w.length, w.hop, w.max_hold_samples)
            t, x = feed(ws, rows.asset, rows.ts[lo:hi], rows.values[:, lo:hi])
            if len(t):
                ends.append(t)
                wins.append(x)
    if not wins:
        return np.empty(0), np.empty((0, len(d.signals), w.length), np.float32)
    return np.concatenate(ends), np.concatenate(wins)


def add_asset(ts_: TrainingSet, cfg: TrainingConfig, rows: AssetRows, classes: np.ndarray,
              *, n_assets: int, max_windows: int) -> None:
    """Add one asset's training-period rows (``classes`` from ``row_classes``)."""
    for k, name in enumerate(CLASS_NAMES):
        ts_.rows[name] += int((classes == k).sum())
    keep = (classes == NORMAL) | (classes == FALSE_ALARM)
    if not keep.any():
        ts_.skipped[rows.asset] = "no normal rows"
        return
    try:
        quality_gate(cfg, rows.asset, rows.ts[keep], rows.values[:, keep])
    except DataQualityError as exc:
        ts_.skipped[rows.asset] = str(exc)
        return
    idx = np.flatnonzero(keep)
    cut = int(idx[int(len(idx) * (1 - cfg.data.validation_fraction))])
    fit_keep, val_keep = keep.copy(), keep.copy()
    fit_keep[cut:] = False
    val_keep[:cut] = False
    _, fit = _windows(cfg, rows, fit_keep)
    if not len(fit):
        ts_.skipped[rows.asset] = f"no complete window in {int(fit_keep.sum())} normal rows"
        return
    est = max(1, int(keep.sum()) // cfg.window.hop)
    stride = max(1, math.ceil(n_assets * est / max_windows))
    ts_.stride = max(ts_.stride, stride)
    ts_.fit.append(fit[::stride])
    if cfg.calibration.method == "false_alarm_rate":
        v_end, v = _windows(cfg, rows, val_keep)
        cap = max(1, max_windows // max(1, n_assets))
        if len(v):  # the most recent ones, unthinned: the rule's k of n needs neighbours
            ts_.validation.append((v_end[-cap:], v[-cap:]))
    v = np.where(keep, rows.values, np.nan)
    with np.errstate(all="ignore"):
        lo, hi = np.nanmin(v, axis=1), np.nanmax(v, axis=1)
    ts_.lo = lo if ts_.lo is None else np.fmin(ts_.lo, lo)
    ts_.hi = hi if ts_.hi is None else np.fmax(ts_.hi, hi)
    ts_.assets.append(rows.asset)
    ts_.digest.update(rows.digest().encode())
    ts_.digest.update(classes.tobytes())


def widened_ranges(cfg: TrainingConfig, active: Manifest, local: np.ndarray) -> np.ndarray:
    """``[signals, 2]``: the local rows' extremes widened to the active's training range.

    The training range drives the crew's limit alerts, which no gate or canary stage
    judges: a refit on a few hours of local history (a machine warming up, one
    product) would otherwise narrow it and raise limit alerts on readings the active
    model took as normal. A retrain refines the score; the range only ever widens.

    >>> import numpy as np
    >>> from types import SimpleNamespace as NS
    >>> cfg = NS(data=NS(signals=["t", "p"]))
    >>> act = NS(signals=[NS(name="t", train_min=20.0, train_max=30.0),
    ...                   NS(name="p", train_min=None, train_max=None)])
    >>> widened_ranges(cfg, act, np.array([[25.0, 31.0], [1.0, 2.0]])).tolist()
    [[20.0, 31.0], [1.0, 2.0]]
    """
    out = np.array(local, dtype=np.float64, copy=True)
    by_name = {s.name: s for s in active.signals}
    for i, name in enumerate(cfg.data.signals):
        spec = by_name.get(name)
        if spec is None:
            continue
        if spec.train_min is not None:
            out[i, 0] = np.fmin(out[i, 0], spec.train_min)
        if spec.train_max is not None:
            out[i, 1] = np.fmax(out[i, 1], spec.train_max)
    return out


def fit_candidate(cfg: TrainingConfig, active: Manifest, data: TrainingSet, *,
                  version: str, fingerprint: str, lineage: dict[str, Any]
                  ) -> tuple[Fitted, Any, dict[str, Any]]:
    """The in-memory candidate (what the gate replays), its graph and manifest fields."""
    units = {s.name: s.unit for s in active.signals}
    return fit_bundle(cfg, data.fit_windows(), widened_ranges(cfg, active, data.ranges()),
                      healthy_val=data.validation or None, version=version,
                      lineage=lineage, fingerprint=fingerprint, units=units)
