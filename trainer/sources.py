"""The training data a config names, in one shape for the pipeline.

Tables (C-MAPSS's files are a preset of the table source, :mod:`trainer.cmapss`)
and the agent's Parquet history all become a :class:`TrainData`: run-to-failure
runs (each with ``.unit``, ``len()`` and ``.signals(names) -> [signals, T]``),
an optional official test set (C-MAPSS's test file and RUL file), the long-form
readings the quality report inspects, and the input files' hashes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.core.errors import ConfigError
from trainer import cmapss, presets
from trainer.config import TrainingConfig
from trainer.loaders import Readings, read_agent_history, select, to_runs
from trainer.tablespec import TableSpec
from trainer.tabular import TableData, read_source


def failure_times(table: TableData, spec: TableSpec, period: float) -> dict[str, float]:
    """Each asset's failure time from its label column (none without one).

    ``run_to_failure``: the first row flagged 1 (rows after it are refused; without a
    label column, the last row); ``rul``: the last row's time plus its remaining life
    in samples.
    """
    if all(s.label is None for s in table.series):
        return {}
    if spec.label_kind == "anomaly":
        raise ConfigError(f"{table.path}: data.table.label_kind → 'anomaly' → a RUL or "
                          'failure model needs label_kind = "rul" or "run_to_failure"')
    out = {}
    for s in table.series:
        assert s.label is not None
        if spec.label_kind == "rul":
            out[s.asset] = float(s.ts[-1] + s.label[-1] * period)
            continue
        hit = np.flatnonzero(s.label == 1)
        if not hit.size:
            raise ConfigError(f"{table.path}: column {spec.label_column}: asset {s.asset} "
                              "has no failure row (label 1); it is not run to failure")
        if hit[0] != len(s) - 1:
            raise ConfigError(f"{table.path}: {table.where(int(s.rows[hit[0] + 1]))}, column "
                              f"{spec.label_column}: asset {s.asset} has rows after its "
                              "failure row (a run ends at its failure)")
        out[s.asset] = float(s.ts[hit[0]])
    return out


@dataclass(frozen=True)
class TrainData:
    train: list[Any]
    test: list[Any] = field(default_factory=list)
    test_rul: np.ndarray | None = None
    readings: Readings | None = None
    files: list[dict[str, str]] = field(default_factory=list)  # name, sha256
    units: dict[str, str] = field(default_factory=dict)        # signal -> unit text


def _cmapss_test(cfg: TrainingConfig, files: dict[str, Path]) -> tuple[list[Any], np.ndarray,
                                                                     list[dict[str, str]]]:
    """The official test set: each test engine's record and its true remaining life."""
    test, _ = cmapss.read(files["test"], "test", cfg.inputs, cfg.data.sample_period_s)
    rul, rul_data = cmapss.read_rul(files["RUL"], len(test.series))
    return cmapss.runs(test), rul, [*rul_data.files, *test.files]


def load_training_data(cfg: TrainingConfig, config_dir: Path | None = None,
                       data_root: Path | None = None) -> TrainData:
    d = cfg.data
    test: list[Any] = []
    test_rul, test_files = None, list[dict[str, str]]()
    if d.dataset in ("cmapss", "table"):
        if d.dataset == "cmapss":
            files = cmapss.find(data_root, d.subset)
            spec, path = cmapss.spec("train"), files["train"]
            table = cmapss.read(path, "train", cfg.inputs, d.sample_period_s)[0]
            test, test_rul, test_files = _cmapss_test(cfg, files)
        else:
            spec = d.table or TableSpec(path=d.path, layout=d.layout)
            path = presets.table(spec, config_dir, data_root).path
            table = read_source(spec, path, cfg.inputs, d.sample_period_s)
        for note in table.repairs:
            print(f"{path}: repaired: {note}", file=sys.stderr)
        r, units = table.readings(), dict(spec.units)
        failures = {**failure_times(table, spec, d.sample_period_s), **cfg.labels.failures}
    else:
        path = Path(d.path)
        if not path.is_absolute():
            path = (data_root or config_dir or Path.cwd()) / path
        r, units, failures = select(read_agent_history(path), cfg.inputs), {}, cfg.labels.failures
    if not len(r):
        raise ConfigError(f"{path}: no readings of the signals {cfg.inputs}")
    unknown = sorted(set(failures) - set(r.assets))
    if unknown:
        raise ConfigError(f"labels.failures → {unknown} → no such asset in {path}")
    if not failures:
        raise ConfigError("labels.failures → {} → a RUL or failure model needs the failure "
                          "time of each run-to-failure asset (or a label column: "
                          'data.table.label_kind = "rul" or "run_to_failure")')
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
    return TrainData(runs, test, test_rul, r, [*test_files, *r.files], units)
