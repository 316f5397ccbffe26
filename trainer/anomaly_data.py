"""Healthy training windows for the anomaly families, from the one tabular source.

Each asset's rows are cut by the agent's own window grid; rows labelled
anomalous (``label_kind = "anomaly"``) never reach a training or calibration
window. Training, validation and test rows are the table's time ranges when
``[data.table]`` sets them; otherwise every row trains and the tail
``validation_fraction`` of each asset's windows calibrates the threshold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge.core.errors import ConfigError
from trainer import presets
from trainer.tablespec import to_epoch
from trainer.tabular import Series, TableData, read_source

if TYPE_CHECKING:
    from trainer.config import TrainingConfig

Feed = Callable[[str, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Windows:
    train: np.ndarray                                  # [n, signals, window]
    validation: list[tuple[np.ndarray, np.ndarray]]    # (end_ts, windows) per run
    test: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    series: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # rows trained on
    split: str = ""


def source(cfg: TrainingConfig, config_dir: Path | None, data_root: Path | None
           ) -> presets.Source:
    d = cfg.data
    if d.dataset == "skab":
        return presets.skab(data_root)
    if d.table is None:  # the config validator already refuses this
        raise ConfigError('dataset = "table" needs a [data.table] section with its path')
    if d.table.label_column and d.table.label_kind != "anomaly":
        raise ConfigError(f"data.table.label_kind → {d.table.label_kind!r} → an anomaly "
                          'family learns from label_kind = "anomaly" (0 healthy, 1 anomalous)')
    return presets.table(d.table, config_dir, data_root)


def read(cfg: TrainingConfig, src: presets.Source) -> TableData:
    return read_source(src.spec, src.path, cfg.data.signals, cfg.data.sample_period_s)


def _healthy(s: Series) -> Series:
    if s.label is None:
        return s
    keep = s.label == 0
    return Series(s.asset, s.ts[keep], s.values[:, keep], s.label[keep], s.rows[keep])


def _range(bounds: list[float | str]) -> tuple[float, float] | None:
    return (to_epoch(bounds[0]), to_epoch(bounds[1])) if bounds else None


def windows(cfg: TrainingConfig, src: presets.Source, data: TableData, feed: Feed) -> Windows:
    """The healthy windows of every asset: training, calibration and (labelled) test."""
    spec = src.spec
    tr, va, te = _range(spec.train), _range(spec.validation), _range(spec.test)
    train, val, test, used = [], [], [], []
    for s in data.series:
        rows = s
        if tr is not None:
            rows = s.select(*tr)
        else:
            keep = np.ones(len(s), dtype=bool)
            for r in (va, te):
                if r is not None:
                    keep &= ~((s.ts >= r[0]) & (s.ts < r[1]))
            rows = Series(s.asset, s.ts[keep], s.values[:, keep],
                          None if s.label is None else s.label[keep], s.rows[keep])
        rows = _healthy(rows)
        if not len(rows):
            continue
        used.append(rows.values)
        end_ts, wins = feed(rows.asset, rows.ts, rows.values)
        if va is None:
            cut = int(len(wins) * (1 - cfg.data.validation_fraction))
            train.append(wins[:cut])
            val.append((end_ts[cut:], wins[cut:]))
        else:
            train.append(wins)
            v = _healthy(s.select(*va))
            if len(v):
                val.append(feed(v.asset, v.ts, v.values))
        if te is not None:
            t = s.select(*te)
            if len(t):
                t_end, t_wins = feed(t.asset, t.ts, t.values)
                lab = np.zeros(len(t_end)) if t.label is None else \
                    t.label[np.clip(np.searchsorted(t.ts, t_end, side="right") - 1, 0, None)]
                test.append((t_end, t_wins, lab))
    if not train or not sum(len(w) for w in train):
        raise ConfigError(f"{src.path}: no healthy training windows (window.length "
                          f"{cfg.window.length}; check data.table.train and the labels)")
    x = np.concatenate(train)
    n_val = sum(len(w) for _, w in val)
    split = (f"first {len(x)} windows fit, last {n_val} calibrate" if va is None
             else f"{len(x)} windows in {spec.train or 'the rows outside validation/test'} "
                  f"fit, {n_val} in {spec.validation} calibrate")
    if te is not None:
        split += f", {sum(len(w) for _, w, _ in test)} in {spec.test} test"
    return Windows(x, val, test, np.concatenate(used, axis=1), split)


def test_metrics(scores: list[np.ndarray], labels: list[np.ndarray], level: float
                 ) -> dict[str, float]:
    """Window-level alarms on the test rows at the calibrated level.

    ``test_window_precision`` (windows over the level that are labelled anomalous)
    is the figure the agent shows beside the crew's live precision: the
    validation rows of an anomaly family are healthy only, so the labelled test
    rows are the only place a precision can be measured before deployment.

    >>> m = test_metrics([np.array([0.1, 0.9, 0.8, 0.7])], [np.array([0, 1, 1, 0])], 0.5)
    >>> m["test_window_precision"], m["test_window_recall"]
    (0.6666666666666666, 1.0)
    """
    s, y = np.concatenate(scores), np.concatenate(labels).astype(bool)
    hit = s > level
    out = {"test_windows": float(len(s)), "test_anomalous_windows": float(y.sum()),
           "test_window_false_alarm_rate": float(hit[~y].mean()) if np.any(~y) else 0.0}
    if np.any(y):
        out["test_window_recall"] = float(hit[y].mean())
    if np.any(hit):
        out["test_window_precision"] = float(y[hit].mean())
    return out
