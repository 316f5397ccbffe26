"""The training data a config names, in one shape for the pipeline.

C-MAPSS units, table files and the agent's Parquet history all become a
:class:`TrainData`: run-to-failure runs (each with ``.unit``, ``len()`` and
``.signals(names) -> [signals, T]``), an optional official test set, the
long-form readings the quality report inspects, and the input files' hashes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ConfigError
from trainer.data import CMAPSS, SENSOR_UNITS, load_cmapss
from trainer.loaders import Readings, read_agent_history, read_table, select, to_runs
from trainer.models import TrainConfig


@dataclass(frozen=True)
class TrainData:
    train: list[Any]
    test: list[Any] = field(default_factory=list)
    test_rul: np.ndarray | None = None
    readings: Readings | None = None
    files: list[dict[str, str]] = field(default_factory=list)  # name, sha256
    units: dict[str, str] = field(default_factory=dict)        # signal -> unit text


def runs_to_readings(runs: list[Any], names: list[str], period: float) -> Readings:
    """Long form of gridded runs (sample i of a run at ``i * period``)."""
    a, s, t, v = [], [], [], []
    for u in runs:
        x = u.signals(names)
        n = x.shape[1]
        for i, name in enumerate(names):
            a.append(np.full(n, str(u.unit), dtype=object))
            s.append(np.full(n, name, dtype=object))
            t.append(np.arange(n, dtype=np.float64) * period)
            v.append(x[i].astype(np.float64))
    return Readings(np.concatenate(a), np.concatenate(s), np.concatenate(t), np.concatenate(v))


def from_cmapss(cfg: TrainConfig, c: CMAPSS) -> TrainData:
    files = [{"name": c.files[k].name.removesuffix(".gz"), "sha256": c.sha256[k]}
             for k in sorted(c.sha256)]
    return TrainData(c.train, c.test, c.test_rul,
                     runs_to_readings(c.train, cfg.inputs, cfg.data.sample_period_s), files,
                     {s: SENSOR_UNITS.get(s, "") for s in cfg.inputs})


def load_training_data(cfg: TrainConfig, config_dir: Path | None = None,
                       data_root: Path | None = None) -> TrainData:
    d = cfg.data
    if d.dataset == "cmapss":
        return from_cmapss(cfg, load_cmapss(d.subset, data_root))
    path = Path(d.path)
    if not path.is_absolute():
        path = (data_root or config_dir or Path.cwd()) / path
    r = read_table(path, d.layout) if d.dataset == "table" else read_agent_history(path)
    r = select(r, cfg.inputs)
    if not len(r):
        raise ConfigError(f"{path}: no readings of the signals {cfg.inputs}")
    failures = cfg.labels.failures
    unknown = sorted(set(failures) - set(r.assets))
    if unknown:
        raise ConfigError(f"labels.failures → {unknown} → no such asset in {path}")
    if not failures:
        raise ConfigError("labels.failures → {} → a RUL or failure model needs the failure "
                          "time of each run-to-failure asset")
    runs = to_runs(r, cfg.inputs, d.sample_period_s, cfg.window.max_hold_samples,
                   until=failures)
    runs = [u for u in runs if u.unit in failures]
    # Slots nothing could be held into (gaps longer than the edge's hold) carry the
    # previous value for training, as the quality report has already flagged them.
    for u in runs:
        for s, v in u.values.items():
            idx = np.where(np.isfinite(v), np.arange(v.size), 0)
            np.maximum.accumulate(idx, out=idx)
            first = np.flatnonzero(np.isfinite(v))
            fill = v[first[0]] if first.size else 0.0
            u.values[s] = np.where(np.isfinite(v[idx]), v[idx], fill)
    return TrainData(runs, [], None, r, r.files, {})
