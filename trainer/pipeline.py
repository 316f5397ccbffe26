"""The training pipeline: training data -> feature graph -> gradient boosting -> signed bundle.

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
from sklearn.base import BaseEstimator

from edge.core.errors import BundleError, ConfigError
from edge.drift.monitor import SCORE_KEY, calibrate_thresholds
from edge.models.signing import load_private_key
from trainer.config import TrainingConfig, load_config
from trainer.export import (
    DEVIATIONS_OUTPUT,
    SCORE_OUTPUT,
    histogram,
    self_test_cases,
    signal_specs,
    write_bundle,
)
from trainer.families.rul import CLASSIFIER, GradientBoostingSection, fit_onnx
from trainer.features import (
    INPUT_NAME,
    band_edges_hz,
    build_feature_graph,
    compute_features,
    session,
)
from trainer.metrics import best_f1_threshold, nasa_score, rmse
from trainer.quality import QualityReport, assess
from trainer.regimes import fit_regimes
from trainer.sources import TrainData, load_training_data
from trainer.windows import last_window, split_units, unit_windows

# The agent's default drift reporting interval (edge.core.config.DriftConfig).
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


def fingerprint(cfg: TrainingConfig, data: TrainData) -> str:
    """sha256 over the input files' (decompressed) hashes and the canonical config."""
    h = hashlib.sha256()
    for f in data.files:
        h.update(f"{f['name']}={f['sha256']}\n".encode())
    h.update(cfg.canonical_json().encode())
    return h.hexdigest()


@dataclass(frozen=True)
class TrainingRun:
    """Everything one training produced, before it is written as a bundle."""

    estimator: BaseEstimator
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
    mlflow_uri: str | None = None,
) -> Path:
    """Train, export, sign; return the bundle directory ``<out_dir>/<name>/<version>``.

    ``version`` defaults to the first 12 hex digits of the training fingerprint,
    so the same data and config always land in the same place. With
    ``mlflow_uri`` the run is also logged (and the bundle registered) there.
    """
    say = _Progress(progress)
    cfg = load_config(Path(config_path)).expect("supervised", str(config_path))
    key = load_private_key(Path(key_path))  # fail before minutes of training
    if mlflow_uri:
        from trainer.mlflow_log import require_mlflow
        require_mlflow()  # fail before training, not after
    src = (f"C-MAPSS {cfg.data.subset}" if cfg.data.dataset == "cmapss"
           else f"{cfg.data.dataset} {cfg.data.path}")
    say(f"loading {src} from {data_root or 'the packaged copy / config directory'}")
    data = load_training_data(cfg, Path(config_path).resolve().parent, data_root)
    version = version or fingerprint(cfg, data)[:12]
    target = Path(out_dir) / cfg.bundle.name / version
    if target.exists() and not overwrite:
        raise BundleError(f"{target}: already exists (choose another version, or overwrite)")
    run = train(cfg, data, config_name=Path(config_path).name, version=version, say=say)
    bundle = write_bundle(Path(out_dir), run.manifest_fields, run.model, key,
                          overwrite=overwrite)
    say(f"wrote {bundle}")
    if mlflow_uri:
        from trainer.mlflow_log import log_run
        say(f"logged to MLflow: {log_run(mlflow_uri, bundle, Path(config_path))}")
    return bundle


@dataclass(frozen=True)
class _Graph:
    """The feature graph of a run and what it was built from."""

    model: onnx.ModelProto
    names: list[str]
    train_series: np.ndarray
    centre: list[float] | None
    regime: Any


@dataclass(frozen=True)
class _Windows:
    fit_units: list[Any]
    val_units: list[Any]
    x_fit: np.ndarray
    y_fit: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def train(
    cfg: TrainingConfig,
    data: TrainData,
    *,
    config_name: str = "",
    version: str | None = None,
    say: Callable[[str], None] = lambda _msg: None,
) -> TrainingRun:
    """Check the data, fit the model and assemble the merged graph and the manifest fields."""
    report = _quality(cfg, data, say)
    graph = _feature_graph(cfg, data, say)
    win = _windows(cfg, data)
    feats = session(graph.model)
    f_fit = compute_features(feats, win.x_fit)
    say(f"{len(win.fit_units)} training units ({len(win.x_fit)} windows), "
        f"{len(win.val_units)} validation units ({len(win.x_val)} windows), "
        f"{len(graph.names)} features from the ONNX feature graph")
    # References describe the whole training file (both sides of the split).
    x_all = np.concatenate([win.x_fit, win.x_val]) if len(win.x_val) else win.x_fit
    f_all = compute_features(feats, x_all)
    ref_mean, ref_std = f_all.mean(axis=0, dtype=np.float64), f_all.std(axis=0, dtype=np.float64)

    mc = _section(cfg)
    p, clf = mc.params, mc.family == CLASSIFIER
    say(f"fitting {mc.family}: {p.n_estimators} trees, depth {p.max_depth}")
    t_fit = time.monotonic()
    target = (win.y_fit <= cfg.target.horizon).astype(np.int64) if clf else win.y_fit
    say("exporting: skl2onnx + merge with the feature graph")
    est, model = fit_onnx(mc, graph.model, f_fit, target, ref_mean, ref_std,
                          monitor=_fit_monitor(p.n_estimators, say))
    fit_s = time.monotonic() - t_fit
    sess = session(model.SerializeToString())
    s_all = _score(sess, x_all)
    metrics, thresholds = _metrics_and_thresholds(cfg, data, win, s_all, sess)
    fields = _manifest_fields(cfg, data, graph, win, sess, x_all, s_all, metrics, thresholds,
                              report, config_name, version)
    say(f"fit {fit_s:.1f}s; " + ", ".join(f"{k} {metrics[k]:.3f}" for k in
                                          ("validation_rmse", "test_rmse", "test_rmse_capped",
                                           "validation_f1", "test_f1") if k in metrics))
    return TrainingRun(est, graph.model, model, fields)


def _section(cfg: TrainingConfig) -> GradientBoostingSection:
    if not isinstance(cfg.model, GradientBoostingSection):
        raise ConfigError(f"model.family → {cfg.model.family!r} → the supervised pipeline "
                          "fits gradient_boosting or gradient_boosting_classifier")
    return cfg.model


def _quality(cfg: TrainingConfig, data: TrainData, say: Callable[[str], None]
             ) -> QualityReport | None:
    if data.readings is None:
        return None
    d, q = cfg.data, cfg.quality
    report = assess(data.readings, cfg.inputs, d.sample_period_s, max_missing=q.max_missing,
                    flat_samples=q.flat_samples, allow=q.allow, ranges=q.ranges)
    say("data quality:\n" + report.text())
    return report


def _feature_graph(cfg: TrainingConfig, data: TrainData, say: Callable[[str], None]) -> _Graph:
    d = cfg.data
    train_series = np.concatenate([u.signals(cfg.inputs) for u in data.train], axis=1)
    regime, centre = None, None
    if cfg.regimes.settings:
        n_s = len(d.signals)
        regime = fit_regimes(d.signals, cfg.regimes.settings, train_series[:n_s],
                             train_series[n_s:], cfg.regimes.decimals, cfg.regimes.min_share)
        say(f"{len(regime.centroids)} operating regimes from {cfg.regimes.settings}")
    elif cfg.features.centre:
        # Level features relative to each signal's training mean (see build_feature_graph);
        # two decimals keep the centre readable in the lineage.
        centre = [round(float(v), 2) for v in train_series.mean(axis=1)]
    feat_model, names = build_feature_graph(d.signals, cfg.window.length, cfg.features.spec(),
                                            centre=centre, regime=regime)
    return _Graph(feat_model, names, train_series, centre, regime)


def _windows(cfg: TrainingConfig, data: TrainData) -> _Windows:
    """Whole units split into fit and validation (never windows of one unit on both sides)."""
    d, w, inputs, cap = cfg.data, cfg.window, cfg.inputs, cfg.target.rul_cap
    fit_units, val_units = split_units(data.train, d.validation_fraction, d.split_seed)
    x_fit, y_fit, _ = unit_windows(fit_units, inputs, w.length, w.hop, cap, d.min_samples)
    x_val, y_val, _ = unit_windows(val_units, inputs, w.length, w.hop, cap, d.min_samples) \
        if val_units else (x_fit[:0], y_fit[:0], None)
    return _Windows(fit_units, val_units, x_fit, y_fit, x_val, y_val)


def _metrics_and_thresholds(cfg: TrainingConfig, data: TrainData, win: _Windows,
                            s_all: np.ndarray, sess: Any
                            ) -> tuple[dict[str, float], dict[str, Any]]:
    n_fit, w = len(win.x_fit), cfg.window
    metrics: dict[str, float] = {"train_windows": float(n_fit),
                                 "validation_windows": float(len(win.x_val))}
    thresholds = cfg.thresholds.model_dump()
    if cfg.model.family == CLASSIFIER:
        s_val, y_lab = s_all[n_fit:], win.y_val <= cfg.target.horizon
        level, evidence = best_f1_threshold(s_val, y_lab) if len(win.x_val) else (0.5, {})
        metrics.update(evidence)
        thresholds = {"warning": level, "critical": None, "reset": round(level * 0.8, 6),
                      "false_alarm_rate": evidence.get("validation_false_alarm_rate"),
                      "rationale": f"best F1 on the validation units' windows for 'fails "
                                   f"within {cfg.target.horizon:g} samples'"}
    else:
        metrics["train_rmse"] = rmse(s_all[:n_fit], win.y_fit)
        if len(win.x_val):
            metrics["validation_rmse"] = rmse(s_all[n_fit:], win.y_val)
    if data.test and data.test_rul is not None:
        x_test = np.stack([last_window(u.signals(cfg.inputs), w.length) for u in data.test])
        metrics.update(_test_metrics(cfg, _score(sess, x_test.astype(np.float32)),
                                     data.test_rul, thresholds["warning"]))
        metrics["test_units"] = float(len(data.test))
    return metrics, thresholds


def _drift_references(cfg: TrainingConfig, names: list[str], sess: Any, x_all: np.ndarray,
                      s_all: np.ndarray) -> dict[str, Any]:
    # Drift references live on the graph's deviations output, which is what the
    # agent's drift monitor sees; thresholds come from contiguous chunks of one
    # reporting interval, so they include the data's autocorrelation.
    d_all = _deviations(sess, x_all)
    ref_hist = {n: histogram(d_all[:, i], cfg.reference.bins) for i, n in enumerate(names)}
    score_hist = histogram(s_all, cfg.reference.bins)
    drift_thresholds = calibrate_thresholds(
        np.column_stack([d_all, s_all]), [*names, SCORE_KEY],
        {**ref_hist, SCORE_KEY: score_hist}, DRIFT_INTERVAL_WINDOWS)
    return {"reference": {"features": ref_hist, "score": score_hist},
            "drift_thresholds": drift_thresholds}


def _lineage(cfg: TrainingConfig, data: TrainData, graph: _Graph,
             report: QualityReport | None, config_name: str) -> dict[str, Any]:
    d, w, centre = cfg.data, cfg.window, graph.centre
    return {
        "dataset": d.dataset, "subset": d.subset if d.dataset == "cmapss" else None,
        "files": data.files,
        "config_file": config_name,
        "config": json.loads(cfg.canonical_json()),
        "feature_centre": dict(zip(d.signals, centre, strict=True)) if centre else None,
        "regimes": graph.regime.lineage() if graph.regime else None,
        "band_edges_hz": band_edges_hz(w.length, cfg.features.bands, d.sample_period_s)
        if any("band" in n for n in graph.names) else None,
        "data_quality": report.lineage() if report is not None else None,
        "project_version": _version("forewarn"),
        "drift_interval_windows": DRIFT_INTERVAL_WINDOWS,
    }


def _manifest_fields(cfg: TrainingConfig, data: TrainData, graph: _Graph, win: _Windows,
                     sess: Any, x_all: np.ndarray, s_all: np.ndarray,
                     metrics: dict[str, float], thresholds: dict[str, Any],
                     report: QualityReport | None, config_name: str,
                     version: str | None) -> dict[str, Any]:
    d, w, inputs, names = cfg.data, cfg.window, cfg.inputs, graph.names
    clf = cfg.model.family == CLASSIFIER
    fp = fingerprint(cfg, data)
    version = version or fp[:12]
    # Self-test: four windows spanning one training engine from healthy to failure.
    first_unit = unit_windows(win.fit_units[:1], inputs, w.length, w.hop, cfg.target.rul_cap)[0]
    st_windows = first_unit[np.linspace(0, len(first_unit) - 1, 4).round().astype(int)]
    created = (
        datetime.fromtimestamp(int(os.environ["SOURCE_DATE_EPOCH"]), UTC)
        if "SOURCE_DATE_EPOCH" in os.environ else datetime.now(UTC)
    )
    return {
        "name": cfg.bundle.name,
        "version": version,
        "created": created.isoformat(timespec="seconds"),
        "description": cfg.bundle.description,
        "signals": signal_specs(inputs, data.units, graph.train_series, cfg.quality.ranges),
        "limits": {"margin": d.range_margin, "clip": d.clip_to_limits},
        "sample_period_s": d.sample_period_s,
        "window": w.length,
        "hop": w.hop,
        "gap": {"max_hold_samples": w.max_hold_samples},
        "input_name": INPUT_NAME,
        "output": {
            "kind": "probability" if clf else "rul", "score_output": SCORE_OUTPUT,
            "unit": "" if clf else "cycles", "alert_when": "above" if clf else "below",
            "deviations_output": DEVIATIONS_OUTPUT, "feature_names": names,
        },
        "thresholds": thresholds,
        "alert_policy": cfg.alerts.policy("above" if clf else "below",
                                          f"[alerts] of the training config {config_name}"),
        **_drift_references(cfg, names, sess, x_all, s_all),
        "metrics": metrics,
        "fingerprint": fp,
        "lineage": _lineage(cfg, data, graph, report, config_name),
        "libraries": {
            "python": platform.python_version(),
            **{m: _version(m) for m in
               ("numpy", "scikit-learn", "skl2onnx", "onnx", "onnxruntime")},
        },
        "self_test": self_test_cases(st_windows, _score(sess, st_windows)),
    }


def _test_metrics(cfg: TrainingConfig, pred: np.ndarray, rul: np.ndarray, level: float
                  ) -> dict[str, float]:
    """The official protocol: the last window of each test engine against RUL_FD00x."""
    if cfg.model.family == CLASSIFIER:
        y, hit = rul <= cfg.target.horizon, pred > level
        tp = float(np.sum(hit & y))
        return {"test_f1": 2 * tp / max(1.0, 2 * tp + np.sum(hit & ~y) + np.sum(~hit & y)),
                "test_precision": tp / max(1.0, float(np.sum(hit))),
                "test_recall": tp / max(1.0, float(np.sum(y)))}
    cap = cfg.target.rul_cap
    return {"test_rmse": rmse(pred, rul), "test_rmse_capped": rmse(pred, np.minimum(rul, cap)),
            "test_nasa_score": nasa_score(pred, rul),
            "test_nasa_score_capped": nasa_score(pred, np.minimum(rul, cap))}
