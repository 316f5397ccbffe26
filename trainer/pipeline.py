"""The training pipeline: C-MAPSS -> feature graph -> gradient boosting -> signed bundle.

:func:`train` fits and assembles everything in memory (tests reach the fitted
scikit-learn estimator through it); :func:`train_from_config` adds the config
file, the signing key and the bundle directory.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import onnx
from sklearn.ensemble import GradientBoostingRegressor

from edge.drift import SCORE_KEY, calibrate_thresholds
from edge.errors import BundleError
from edge.signing import load_private_key
from trainer.data import CMAPSS, SENSOR_UNITS, last_window, load_cmapss, split_units, unit_windows
from trainer.export import (
    DEVIATIONS_OUTPUT,
    SCORE_OUTPUT,
    build_bundle_model,
    histogram,
    self_test_cases,
    signal_ranges,
    write_bundle,
)
from trainer.features import INPUT_NAME, build_feature_graph, compute_features, session
from trainer.models import TrainConfig, fit_model, load_config, nasa_score, rmse

# The agent's default drift reporting interval (edge.config.DriftConfig).
DRIFT_INTERVAL_WINDOWS = 360


class _Progress:
    """Stage lines with elapsed time, on stderr by default."""

    def __init__(self, out: TextIO | None) -> None:
        self.out, self.t0 = out, time.monotonic()

    def __call__(self, msg: str) -> None:
        if self.out is not None:
            print(f"[{time.monotonic() - self.t0:6.1f}s] {msg}", file=self.out, flush=True)


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _fit_monitor(total: int, say: Callable[[str], None]) -> Any:
    step = max(1, total // 10)

    def monitor(i: int, _est: Any, _locals: Any) -> bool:
        if (i + 1) % step == 0 or i + 1 == total:
            say(f"  boosting {i + 1}/{total} trees")
        return False  # never stop early: the config decides the model size

    return monitor


def _score(sess: Any, windows: np.ndarray) -> np.ndarray:
    out = [sess.run([SCORE_OUTPUT], {INPUT_NAME: windows[i:i + 4096]})[0]
           for i in range(0, len(windows), 4096)]
    return np.concatenate(out).astype(np.float64)


def _deviations(sess: Any, windows: np.ndarray) -> np.ndarray:
    out = [sess.run([DEVIATIONS_OUTPUT], {INPUT_NAME: windows[i:i + 4096]})[0]
           for i in range(0, len(windows), 4096)]
    return np.concatenate(out).astype(np.float64)


def fingerprint(cfg: TrainConfig, data: CMAPSS) -> str:
    """sha256 over the input files' (decompressed) hashes and the canonical config."""
    h = hashlib.sha256()
    for kind in sorted(data.sha256):
        h.update(f"{data.files[kind].name.removesuffix('.gz')}={data.sha256[kind]}\n".encode())
    h.update(cfg.canonical_json().encode())
    return h.hexdigest()


@dataclass(frozen=True)
class TrainingRun:
    """Everything one training produced, before it is written as a bundle."""

    estimator: GradientBoostingRegressor
    feature_model: onnx.ModelProto
    model: onnx.ModelProto
    manifest_fields: dict[str, Any]


def train_from_config(
    config_path: Path,
    out_dir: Path,
    key_path: Path,
    data_root: Path | None = None,
    version: str | None = None,
    *,
    overwrite: bool = False,
    progress: TextIO | None = sys.stderr,
) -> Path:
    """Train, export, sign; return the bundle directory ``<out_dir>/<name>/<version>``.

    ``version`` defaults to the first 12 hex digits of the training fingerprint,
    so the same data and config always land in the same place.
    """
    say = _Progress(progress)
    cfg = load_config(Path(config_path))
    key = load_private_key(Path(key_path))  # fail before minutes of training
    say(f"loading C-MAPSS {cfg.data.subset} from {data_root or 'the packaged copy'}")
    data = load_cmapss(cfg.data.subset, data_root)
    version = version or fingerprint(cfg, data)[:12]
    target = Path(out_dir) / cfg.bundle.name / version
    if target.exists() and not overwrite:
        raise BundleError(f"{target}: already exists (choose another version, or overwrite)")
    run = train(cfg, data, config_name=Path(config_path).name, version=version, say=say)
    bundle = write_bundle(Path(out_dir), run.manifest_fields, run.model, key,
                          overwrite=overwrite)
    say(f"wrote {bundle}")
    return bundle


def train(
    cfg: TrainConfig,
    data: CMAPSS,
    *,
    config_name: str = "",
    version: str | None = None,
    say: Callable[[str], None] = lambda _msg: None,
) -> TrainingRun:
    """Fit the model and assemble the merged graph and the manifest fields."""
    d, w = cfg.data, cfg.window
    train_series = np.concatenate([u.signals(d.signals) for u in data.train], axis=1)
    # Level features are taken relative to each signal's training mean (see
    # build_feature_graph); two decimals keep the centre readable in the lineage.
    centre = ([round(float(v), 2) for v in train_series.mean(axis=1)]
              if cfg.features.centre else None)
    feat_model, names = build_feature_graph(
        d.signals, w.length, cfg.features.names, last_n=cfg.features.last_n, centre=centre
    )
    fit_units, val_units = split_units(data.train, d.validation_fraction, d.split_seed)
    cap = cfg.target.rul_cap
    x_fit, y_fit, _ = unit_windows(fit_units, d.signals, w.length, w.hop, cap)
    x_val, y_val, _ = unit_windows(val_units, d.signals, w.length, w.hop, cap)
    feats = session(feat_model)
    f_fit = compute_features(feats, x_fit)
    say(f"{len(fit_units)} training units ({len(x_fit)} windows), {len(val_units)} validation "
        f"units ({len(x_val)} windows), {len(names)} features from the ONNX feature graph")

    p = cfg.model.params
    say(f"fitting gradient boosting: {p.n_estimators} trees, depth {p.max_depth}")
    t_fit = time.monotonic()
    est = fit_model(cfg.model, f_fit, y_fit, monitor=_fit_monitor(p.n_estimators, say))
    fit_s = time.monotonic() - t_fit

    # References describe the whole training file (both sides of the split).
    x_all = np.concatenate([x_fit, x_val]) if len(x_val) else x_fit
    f_all = compute_features(feats, x_all)
    ref_mean, ref_std = f_all.mean(axis=0, dtype=np.float64), f_all.std(axis=0, dtype=np.float64)
    say("exporting: skl2onnx + merge with the feature graph")
    model = build_bundle_model(feat_model, est, ref_mean, ref_std)
    sess = session(model.SerializeToString())

    x_test = np.stack([last_window(u.signals(d.signals), w.length) for u in data.test])
    x_test = x_test.astype(np.float32)
    p_test, s_all = _score(sess, x_test), _score(sess, x_all)
    metrics = {
        "train_rmse": rmse(s_all[: len(x_fit)], y_fit),
        "test_rmse": rmse(p_test, data.test_rul),
        "test_rmse_capped": rmse(p_test, np.minimum(data.test_rul, cap)),
        "test_nasa_score": nasa_score(p_test, data.test_rul),
        "train_windows": float(len(x_fit)),
        "validation_windows": float(len(x_val)),
        "test_units": float(len(data.test)),
    }
    if len(x_val):
        metrics["validation_rmse"] = rmse(s_all[len(x_fit):], y_val)

    # Drift references live on the graph's deviations output, which is what the
    # agent's drift monitor sees; thresholds come from contiguous chunks of one
    # reporting interval, so they include the data's autocorrelation.
    d_all = _deviations(sess, x_all)
    ref_hist = {n: histogram(d_all[:, i], cfg.reference.bins) for i, n in enumerate(names)}
    score_hist = histogram(s_all, cfg.reference.bins)
    drift_thresholds = calibrate_thresholds(
        np.column_stack([d_all, s_all]), [*names, SCORE_KEY],
        {**ref_hist, SCORE_KEY: score_hist}, DRIFT_INTERVAL_WINDOWS)

    fp = fingerprint(cfg, data)
    version = version or fp[:12]

    ranges = signal_ranges(train_series, d.range_margin)
    # Self-test: four windows spanning one training engine from healthy to failure.
    first_unit = unit_windows(fit_units[:1], d.signals, w.length, w.hop, cap)[0]
    st_windows = first_unit[np.linspace(0, len(first_unit) - 1, 4).round().astype(int)]
    created = (
        datetime.fromtimestamp(int(os.environ["SOURCE_DATE_EPOCH"]), UTC)
        if "SOURCE_DATE_EPOCH" in os.environ else datetime.now(UTC)
    )
    fields: dict[str, Any] = {
        "name": cfg.bundle.name,
        "version": version,
        "created": created.isoformat(timespec="seconds"),
        "description": cfg.bundle.description,
        "signals": [
            {"name": s, "unit": SENSOR_UNITS.get(s, ""), "min": lo, "max": hi}
            for s, (lo, hi) in zip(d.signals, ranges, strict=True)
        ],
        "sample_period_s": d.sample_period_s,
        "window": w.length,
        "hop": w.hop,
        "gap": {"max_hold_samples": w.max_hold_samples},
        "input_name": INPUT_NAME,
        "output": {
            "kind": "rul", "score_output": SCORE_OUTPUT, "unit": "cycles",
            "alert_when": "below", "deviations_output": DEVIATIONS_OUTPUT,
            "feature_names": names,
        },
        "thresholds": cfg.thresholds.model_dump(),
        "reference": {"features": ref_hist, "score": score_hist},
        "drift_thresholds": drift_thresholds,
        "metrics": metrics,
        "fingerprint": fp,
        "lineage": {
            "dataset": d.dataset, "subset": d.subset,
            "files": [{"name": data.files[k].name, "sha256_uncompressed": data.sha256[k]}
                      for k in sorted(data.sha256)],
            "config_file": config_name,
            "config": json.loads(cfg.canonical_json()),
            "feature_centre": dict(zip(d.signals, centre, strict=True)) if centre else None,
            "project_version": _version("forewarn"),
            "drift_interval_windows": DRIFT_INTERVAL_WINDOWS,
        },
        "libraries": {
            "python": platform.python_version(),
            **{m: _version(m) for m in
               ("numpy", "scikit-learn", "skl2onnx", "onnx", "onnxruntime")},
        },
        "self_test": self_test_cases(st_windows, _score(sess, st_windows)),
    }
    say(f"fit {fit_s:.1f}s; test RMSE {metrics['test_rmse']:.2f} on the last window of "
        f"each of {len(data.test)} test engines")
    return TrainingRun(est, feat_model, model, fields)

