"""Anomaly bundles from a TOML config: SKAB series -> agent windows -> features -> model -> bundle.

The model is the family ``[model] family`` names: ``pca`` (Hotelling T² + Q,
:mod:`trainer.anomaly`) or ``isoforest`` (IsolationForest as one TreeEnsemble
node, :mod:`trainer.isoforest`); scaling, calibration, reference histograms,
self-test windows and manifest fields are the same for both. The config is the
one training config (:class:`trainer.config.TrainingConfig`) of an anomaly family.

Training windows are cut by the agent's own :class:`edge.scoring.window.WindowSet` (same
grid, gap rule and hop), features come from the ONNX feature graph, and the
merged graph is what the agent runs. :func:`fit_bundle` builds an in-memory
:class:`edge.models.bundle.Bundle` (used per file by ``forewarn evaluate``);
:func:`train_from_config` writes a signed one (``forewarn train``).
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.core.errors import ConfigError
from edge.drift.monitor import SCORE_KEY, calibrate_thresholds
from edge.models.bundle import Bundle, DriftCalibration, Manifest
from edge.models.signing import load_private_key
from edge.scoring.window import WindowSet
from trainer import anomaly_data
from trainer.bulkfeed import window_series
from trainer.calibrate import Calibration, calibrate_false_alarms
from trainer.config import TrainingConfig, load_config
from trainer.export import (
    DEVIATIONS_OUTPUT,
    SCORE_OUTPUT,
    histogram,
    self_test_cases,
    signal_specs,
    write_bundle,
)
from trainer.families import isoforest, pca
from trainer.families.isoforest import IsoForestSection
from trainer.families.pca import PcaSection
from trainer.features import INPUT_NAME, build_feature_graph, compute_features, session
from trainer.loaders import Readings
from trainer.quality import QualityReport, assess
from trainer.skab import UNITS

FEED_BLOCK = 128  # rows written per signal before the next signal (<= max lateness)


def window_set(signals: list[str], period: float, window: int, hop: int,
               max_hold: int) -> WindowSet:
    return WindowSet(signals, period=period, window=window, hop=hop, max_hold=max_hold,
                     max_lateness=FEED_BLOCK)


def feed(ws: WindowSet, asset: str, ts: np.ndarray, values: np.ndarray) -> tuple[
        np.ndarray, np.ndarray]:
    """Replay one asset's rows ``values[signals, t]`` at ``ts`` through ``ws``, vectorised.

    The evaluation's bulk feed (:func:`trainer.bulkfeed.window_series`): the same
    windows as the agent's reading-by-reading path, so training sees exactly the
    windows the agent will score (an earlier feed closed one held slot past the end).
    Returns ``(end_ts [n], windows [n, signals, window])`` of the ready windows.
    """
    return window_series(ws, asset, ts, values)


@dataclass(frozen=True)
class Fitted:
    bundle: Bundle
    calibration: Calibration
    train_scores: np.ndarray
    params: dict[str, np.ndarray] | None = None  # a template's parameters of its own fit


def _fit_family(mc: Any, feat_model: Any, f_train: np.ndarray, ref_mean: np.ndarray,
                ref_std: np.ndarray) -> tuple[Any, dict[str, float]]:
    """The merged graph of the configured family and its manifest metrics."""
    if isinstance(mc, IsoForestSection):
        return isoforest.fit_onnx(mc, feat_model, f_train, ref_mean, ref_std)
    if isinstance(mc, PcaSection):
        return pca.fit_onnx(mc, feat_model, f_train, ref_mean, ref_std)
    raise ConfigError(f"model.family → {mc.family!r} → the anomaly pipeline fits pca or "
                      "isoforest")


def _calibrate(cfg: TrainingConfig, sess: Any, s_train: np.ndarray,
               healthy_val: list[tuple[np.ndarray, np.ndarray]] | None) -> Calibration:
    """The warning level: ``calibration.threshold``, or the level of the target false
    alarms per week replayed through the alert rule on held-out healthy windows."""
    c = cfg.calibration
    if c.method == "fixed":
        return Calibration("fixed", c.threshold, None, float((s_train > c.threshold).mean()))
    if not healthy_val:
        raise ConfigError("calibration.method = false_alarm_rate needs healthy "
                          "validation windows")
    scored = [(t, sess.run([SCORE_OUTPUT], {INPUT_NAME: x})[0].astype(np.float64))
              for t, x in healthy_val]
    return calibrate_false_alarms(cfg.rule(1.0), scored, target_per_week=c.alarms_per_week,
                                  hop_s=cfg.window.hop * cfg.data.sample_period_s)


def _references(cfg: TrainingConfig, names: list[str], dev: np.ndarray, s_train: np.ndarray
                ) -> dict[str, Any]:
    """Reference histograms and drift thresholds of the training windows."""
    bins = cfg.reference.bins
    ref_hist = {n: histogram(dev[:, i], bins) for i, n in enumerate(names)}
    score_hist = histogram(s_train, bins)
    interval = min(360, len(s_train) // 4)
    # Too few windows to calibrate: {} loads as a calibration without thresholds.
    drift: DriftCalibration | dict[str, Any] = calibrate_thresholds(
        np.column_stack([dev, s_train]), [*names, SCORE_KEY],
        {**ref_hist, SCORE_KEY: score_hist}, interval) if interval >= 10 else {}
    return {"reference": {"features": ref_hist, "score": score_hist},
            "drift_thresholds": drift}


def _alerting(cfg: TrainingConfig, cal: Calibration) -> dict[str, Any]:
    """The manifest's thresholds (the calibrated level) and alert policy ([alerts])."""
    a = cfg.alerts
    return {
        "thresholds": {"warning": cal.threshold, "critical": None, "reset": None,
                       "false_alarm_rate": cal.false_alarm_rate_per_window,
                       "rationale": f"{cal.rationale()}; alert rule k={a.k} n={a.n} "
                                    f"clear_after={a.clear_after} (alert_policy)"},
        "alert_policy": a.policy("above", "[alerts] of the training config" + (
            "; the warning level's false-alarm calibration replays this rule"
            if cal.method == "false_alarm_rate" else "")),
    }


def _shape(cfg: TrainingConfig, names: list[str], series: np.ndarray,
           units: dict[str, str] | None) -> dict[str, Any]:
    """The manifest fields that describe the input and output (what the agent feeds)."""
    d, w = cfg.data, cfg.window
    return {
        "signals": signal_specs(d.signals, UNITS if units is None else units, series,
                                cfg.quality.ranges),
        "limits": {"margin": d.range_margin, "clip": d.clip_to_limits},
        "sample_period_s": d.sample_period_s, "window": w.length, "hop": w.hop,
        "gap": {"max_hold_samples": w.max_hold_samples}, "input_name": INPUT_NAME,
        "output": {"kind": "anomaly", "score_output": SCORE_OUTPUT, "unit": "",
                   "alert_when": "above", "deviations_output": DEVIATIONS_OUTPUT,
                   "feature_names": names},
    }


def fit_bundle(cfg: TrainingConfig, train_windows: np.ndarray, series: np.ndarray, *,
               healthy_val: list[tuple[np.ndarray, np.ndarray]] | None = None,
               version: str = "0", lineage: dict[str, Any] | None = None,
               fingerprint: str = "", units: dict[str, str] | None = None
               ) -> tuple[Fitted, Any, dict[str, Any]]:
    """Fit the configured family on healthy windows; returns the in-memory bundle, the
    graph and the manifest fields.

    ``series`` ``[signals, t]`` gives the plausible signal ranges; ``healthy_val``
    (``(end_ts, windows)`` runs) is required for ``calibration.method =
    "false_alarm_rate"``.
    """
    d, w, fc = cfg.data, cfg.window, cfg.features
    feat_model, names = build_feature_graph(d.signals, w.length, fc.names, last_n=fc.last_n)
    f_train = compute_features(session(feat_model), train_windows)
    ref_mean = f_train.mean(axis=0, dtype=np.float64)
    ref_std = f_train.std(axis=0, dtype=np.float64)
    model, model_metrics = _fit_family(cfg.model, feat_model, f_train, ref_mean, ref_std)
    raw = model.SerializeToString()
    sess = session(raw)
    s_train, dev = sess.run([SCORE_OUTPUT, DEVIATIONS_OUTPUT], {INPUT_NAME: train_windows})
    s_train = s_train.astype(np.float64)
    cal = _calibrate(cfg, sess, s_train, healthy_val)
    st_idx = np.linspace(0, len(train_windows) - 1, 4).round().astype(int)
    fields: dict[str, Any] = {
        "name": cfg.bundle.name, "version": version, "description": cfg.bundle.description,
        **_shape(cfg, names, series, units), **_alerting(cfg, cal),
        **_references(cfg, names, dev, s_train),
        "metrics": {"train_windows": float(len(train_windows)),
                    **model_metrics,
                    "train_score_p99": float(np.quantile(s_train, 0.99)),
                    **({"expected_false_alarms_per_week": cal.expected_false_alarms_per_week}
                       if cal.expected_false_alarms_per_week is not None else {})},
        "fingerprint": fingerprint,
        "lineage": {**(lineage or {}), "model_family": cfg.model.family,
                    "config": json.loads(cfg.canonical_json()),
                    "calibration": {"method": cal.method, "evidence": cal.evidence}},
        "self_test": self_test_cases(train_windows[st_idx], s_train[st_idx]),
    }
    params = None
    if cfg.commissioning is not None:
        from trainer.template import as_template

        # Fit, references and calibration above are the full family's on these
        # windows; the template graph scores them identically with `params`.
        model, params = as_template(cfg, feat_model, f_train, train_windows[st_idx], fields)
        raw = model.SerializeToString()
    manifest = Manifest.model_validate(
        {**fields, "model_sha256": hashlib.sha256(raw).hexdigest()})
    bundle = Bundle(path=Path(f"<memory>/{cfg.bundle.name}/{version}"), manifest=manifest,
                    model_bytes=raw, signed_by=None)
    return Fitted(bundle, cal, s_train, params), model, fields


def quality_gate(cfg: TrainingConfig, asset: str, ts: np.ndarray, series: np.ndarray
                 ) -> QualityReport:
    """The trainer's data-quality gate on one run ``series[signals, t]`` (see
    trainer.quality): raises DataQualityError naming a refused signal."""
    d, q = cfg.data, cfg.quality
    n_sig, n = series.shape
    r = Readings(np.full(n_sig * n, asset, dtype=object),
                 np.repeat(np.asarray(d.signals, dtype=object), n),
                 np.tile(np.asarray(ts, np.float64), n_sig),
                 np.asarray(series, np.float64).ravel())
    return assess(r, d.signals, d.sample_period_s, max_missing=q.max_missing,
                  flat_samples=q.flat_samples, allow=q.allow, ranges=q.ranges)


def train_from_config(config_path: Path, out_dir: Path, key_path: Path,
                      data_root: Path | None, version: str | None = None, *,
                      overwrite: bool = False) -> Path:
    """Fit on the healthy rows of the configured table (the SKAB preset: its anomaly-free
    run), calibrate on held-out healthy windows, score the test rows; write a signed
    bundle."""
    cfg = load_config(config_path).expect("anomaly", str(config_path))
    key = load_private_key(Path(key_path))
    src = anomaly_data.source(cfg, Path(config_path).resolve().parent, data_root)
    data = anomaly_data.read(cfg, src)
    for note in data.repairs:
        print(f"{src.path}: repaired: {note}", file=sys.stderr)
    d, w = cfg.data, cfg.window
    q = cfg.quality
    report = assess(data.readings(), d.signals, d.sample_period_s, max_missing=q.max_missing,
                    flat_samples=q.flat_samples, allow=q.allow, ranges=q.ranges)
    print("data quality:\n" + report.text(), file=sys.stderr)

    def cut(asset: str, ts: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ws = window_set(d.signals, d.sample_period_s, w.length, w.hop, w.max_hold_samples)
        return feed(ws, asset, ts, values)

    win = anomaly_data.windows(cfg, src, data, cut)
    h = hashlib.sha256(f"{src.path.name}={data.sha256}\n{cfg.canonical_json()}".encode())
    fp = h.hexdigest()
    lineage: dict[str, Any] = {
        "dataset": src.dataset, "files": [{"name": src.lineage_name, "sha256": data.sha256}],
        "config_file": Path(config_path).name, "split": win.split,
        "data_quality": report.lineage()}
    if data.repairs:
        lineage["repairs"] = data.repairs
    fitted, model, fields = fit_bundle(
        cfg, win.train, win.series, healthy_val=win.validation, version=version or fp[:12],
        lineage=lineage, fingerprint=fp, units=src.spec.units)
    if win.test:
        sess = session(model.SerializeToString())
        if fitted.params is not None:
            from trainer.template import run_template

            scores = [run_template(sess, x, fitted.params)[0] for _, x, _ in win.test]
        else:
            scores = [sess.run([SCORE_OUTPUT], {INPUT_NAME: x})[0] for _, x, _ in win.test]
        fields["metrics"].update(anomaly_data.test_metrics(
            scores, [y for _, _, y in win.test], fitted.calibration.threshold))
    return write_bundle(Path(out_dir), fields, model, key, overwrite=overwrite)
