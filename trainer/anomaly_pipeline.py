"""Anomaly bundles from a TOML config: SKAB series -> agent windows -> features -> model -> bundle.

The model is the family ``[model] family`` names: ``pca`` (Hotelling T² + Q,
:mod:`trainer.anomaly`) or ``isoforest`` (IsolationForest as one TreeEnsemble
node, :mod:`trainer.isoforest`); scaling, calibration, reference histograms,
self-test windows and manifest fields are the same for both.

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
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, field_validator, model_validator

from edge.alerts.rules import RuleSpec
from edge.core.errors import ConfigError
from edge.core.strict import Strict
from edge.drift.monitor import SCORE_KEY, calibrate_thresholds
from edge.models.bundle import Bundle, DriftCalibration, Manifest
from edge.models.policy import MAX_RULE_WINDOWS
from edge.models.signing import load_private_key
from edge.scoring.window import WindowSet
from trainer import anomaly_data
from trainer.bulkfeed import window_series
from trainer.calibrate import Calibration, calibrate_false_alarms
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
from trainer.features import FEATURES, INPUT_NAME, build_feature_graph, compute_features, session
from trainer.loaders import Readings
from trainer.models import AlertRuleSection, BundleSection, QualitySection, ReferenceSection
from trainer.quality import QualityReport, assess
from trainer.skab import UNITS
from trainer.tablespec import TableSpec

FEED_BLOCK = 128  # rows written per signal before the next signal (<= max lateness)


class AnomalyDataSection(Strict):
    dataset: Literal["skab", "table"] = Field(
        "skab", description='skab: the SKAB preset (its healthy run, from --data); '
        'table: your own CSV/Parquet table, described by [data.table]')
    table: TableSpec | None = Field(None, description="the table and its columns")
    signals: list[str] = Field(min_length=1, description="signal names, window order")
    sample_period_s: float = Field(1.0, gt=0)
    train_rows: int = Field(400, ge=10, description="per-file protocol: rows fitted per file")
    validation_fraction: float = Field(
        0.25, gt=0, lt=1, description="tail of the healthy run held out for calibration")
    range_margin: float = Field(0.1, ge=0, le=10, description="the limit alarm sits this "
                                "share of the training span outside the training range")
    clip_to_limits: bool = Field(False, description="the agent clips readings outside the "
                                 "limit alarm's bounds before the model sees them")

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset(cls, v: Any) -> Any:
        if v == "history":
            raise ValueError('the anomaly families read a table: write the history to one '
                             'with `forewarn export --since ... --out h.parquet`, then '
                             'dataset = "table" and [data.table] path = "h.parquet"')
        if v == "cmapss":
            raise ValueError('C-MAPSS is run-to-failure data: [model] family = '
                             '"gradient_boosting" trains on it; an anomaly family takes '
                             'dataset = "skab" or "table"')
        return v

    @model_validator(mode="after")
    def _source(self) -> AnomalyDataSection:
        if self.dataset == "table" and (self.table is None or not self.table.path):
            raise ValueError('dataset = "table" needs [data.table] with path = "<file>"')
        if self.dataset == "skab" and self.table is not None:
            raise ValueError('[data.table] is for dataset = "table"; the skab preset sets it')
        return self


class AnomalyWindowSection(Strict):
    length: int = Field(10, ge=2, le=4096)
    hop: int = Field(1, ge=1)
    max_hold_samples: int = Field(3, ge=0)


class AnomalyFeatureSection(Strict):
    names: list[str] = Field(default_factory=lambda: list(FEATURES), min_length=1)
    last_n: int = Field(5, ge=1)


class AlertSection(AlertRuleSection):
    """The deployed rule (manifest ``alert_policy``); also the rule the false-alarm
    calibration and the per-file protocol replay through."""

    k: int = Field(3, ge=1, le=MAX_RULE_WINDOWS,
                   description="open an alert when k of the last n windows breach")
    n: int = Field(5, ge=1, le=MAX_RULE_WINDOWS, description="the debounce window, in windows")
    clear_after: int = Field(5, ge=1, description="windows past the level to clear")


class CalibrationSection(Strict):
    method: Literal["fixed", "false_alarm_rate"] = "fixed"
    threshold: float = Field(3.0, gt=0, description="level for method=fixed (score units)")
    alarms_per_week: float = Field(1.0, gt=0, description="target for false_alarm_rate")


class CommissioningSection(Strict):
    """``[commissioning]``: write a template whose per-asset parameters are learned on site."""

    rows: int = Field(ge=10, description="readings per signal from an asset's first one "
                      "that the on-site fit uses (the per-file protocol's train_rows)")
    holdout_share: float = Field(0.25, gt=0, lt=1, description="verification: refit on the "
                                 "first (1 - share) of the rows, alert rule on the rest")
    tail_alarm_budget: float = Field(0.5, ge=0, le=1, description="refuse an asset whose "
                                     "alert is active on more of the held-back windows")
    min_window_share: float = Field(0.5, gt=0, le=1, description="fewer windows than this "
                                    "share of a gap-free period's is insufficient data")


class AnomalyConfig(Strict):
    bundle: BundleSection
    data: AnomalyDataSection
    window: AnomalyWindowSection = Field(default_factory=AnomalyWindowSection)
    features: AnomalyFeatureSection = Field(default_factory=AnomalyFeatureSection)
    model: PcaSection | IsoForestSection = Field(default_factory=PcaSection,
                                                   discriminator="family")
    alerts: AlertSection = Field(default_factory=AlertSection)
    calibration: CalibrationSection = Field(default_factory=CalibrationSection)
    reference: ReferenceSection = Field(default_factory=ReferenceSection)
    quality: QualitySection = Field(default_factory=QualitySection)
    commissioning: CommissioningSection | None = Field(
        None, description="present: the bundle is a template learned per asset on site")

    @field_validator("model", mode="before")
    @classmethod
    def _default_family(cls, v: Any) -> Any:
        # The family tag picks the section's schema; a [model] without one is PCA.
        return {"family": "pca", **v} if isinstance(v, dict) else v

    def canonical_json(self) -> str:
        d = self.model_dump(mode="json")
        if self.quality == QualitySection():
            # A config that leaves the quality gate at its defaults keeps the fingerprint
            # it had before the gate existed (the same data and config, the same bundle).
            d.pop("quality")
        if self.data.table is None:
            d["data"].pop("table")  # likewise for the presets, from before the table source
        if self.alerts.cooldown_s == 0:
            d["alerts"].pop("cooldown_s")  # and for configs from before the cooldown
        if self.commissioning is None:
            d.pop("commissioning")  # and for bundles from before templates
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    def rule(self, warning: float) -> RuleSpec:
        a = self.alerts
        return RuleSpec(warning=warning, direction="above", k=a.k, n=a.n,
                        clear_after=a.clear_after, cooldown_s=a.cooldown_s,
                        condition="anomaly")


def load_config(path: Path) -> AnomalyConfig:
    path = Path(path)
    try:
        cfg = AnomalyConfig.model_validate(tomllib.loads(path.read_text()))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read training config ({exc})") from exc
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid anomaly config: " + "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])} → {e.get('input')!r:.60} → {e['msg']}"
            for e in exc.errors())) from exc
    if cfg.window.hop > cfg.window.length or cfg.features.last_n > cfg.window.length:
        raise ConfigError(f"{path}: window.hop and features.last_n must not exceed "
                          f"window.length={cfg.window.length}")
    if cfg.alerts.k > cfg.alerts.n:
        raise ConfigError(f"{path}: alerts.k → {cfg.alerts.k} → exceeds alerts.n")
    if cfg.commissioning is not None and cfg.model.family != "pca":
        raise ConfigError(f"{path}: commissioning → model.family {cfg.model.family!r} → "
                          "templates exist for the pca family only")
    return cfg


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


def _fit_family(mc: PcaSection | IsoForestSection, feat_model: Any, f_train: np.ndarray,
                ref_mean: np.ndarray, ref_std: np.ndarray) -> tuple[Any, dict[str, float]]:
    """The merged graph of the configured family and its manifest metrics."""
    if isinstance(mc, IsoForestSection):
        return isoforest.fit_onnx(mc, feat_model, f_train, ref_mean, ref_std)
    return pca.fit_onnx(mc, feat_model, f_train, ref_mean, ref_std)


def fit_bundle(cfg: AnomalyConfig, train_windows: np.ndarray, series: np.ndarray, *,
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
    fsess = session(feat_model)
    f_train = compute_features(fsess, train_windows)
    ref_mean = f_train.mean(axis=0, dtype=np.float64)
    ref_std = f_train.std(axis=0, dtype=np.float64)
    model, model_metrics = _fit_family(cfg.model, feat_model, f_train, ref_mean, ref_std)
    raw = model.SerializeToString()
    sess = session(raw)
    s_train, dev = sess.run([SCORE_OUTPUT, DEVIATIONS_OUTPUT], {INPUT_NAME: train_windows})
    s_train = s_train.astype(np.float64)
    if cfg.calibration.method == "false_alarm_rate":
        if not healthy_val:
            raise ConfigError("calibration.method = false_alarm_rate needs healthy "
                              "validation windows")
        scored = [(t, sess.run([SCORE_OUTPUT], {INPUT_NAME: x})[0].astype(np.float64))
                  for t, x in healthy_val]
        cal = calibrate_false_alarms(cfg.rule(1.0), scored,
                                     target_per_week=cfg.calibration.alarms_per_week,
                                     hop_s=w.hop * d.sample_period_s)
    else:
        cal = Calibration("fixed", cfg.calibration.threshold, None,
                          float((s_train > cfg.calibration.threshold).mean()))
    bins = cfg.reference.bins
    ref_hist = {n: histogram(dev[:, i], bins) for i, n in enumerate(names)}
    score_hist = histogram(s_train, bins)
    interval = min(360, len(s_train) // 4)
    # Too few windows to calibrate: {} loads as a calibration without thresholds.
    drift: DriftCalibration | dict[str, Any] = calibrate_thresholds(
        np.column_stack([dev, s_train]), [*names, SCORE_KEY],
        {**ref_hist, SCORE_KEY: score_hist}, interval) if interval >= 10 else {}
    st_idx = np.linspace(0, len(train_windows) - 1, 4).round().astype(int)
    a = cfg.alerts
    fields: dict[str, Any] = {
        "name": cfg.bundle.name, "version": version, "description": cfg.bundle.description,
        "signals": signal_specs(d.signals, UNITS if units is None else units, series,
                                cfg.quality.ranges),
        "limits": {"margin": d.range_margin, "clip": d.clip_to_limits},
        "sample_period_s": d.sample_period_s, "window": w.length, "hop": w.hop,
        "gap": {"max_hold_samples": w.max_hold_samples}, "input_name": INPUT_NAME,
        "output": {"kind": "anomaly", "score_output": SCORE_OUTPUT, "unit": "",
                   "alert_when": "above", "deviations_output": DEVIATIONS_OUTPUT,
                   "feature_names": names},
        "thresholds": {"warning": cal.threshold, "critical": None, "reset": None,
                       "false_alarm_rate": cal.false_alarm_rate_per_window,
                       "rationale": f"{cal.rationale()}; alert rule k={a.k} n={a.n} "
                                    f"clear_after={a.clear_after} (alert_policy)"},
        "alert_policy": a.policy("above", "[alerts] of the training config" + (
            "; the warning level's false-alarm calibration replays this rule"
            if cal.method == "false_alarm_rate" else "")),
        "reference": {"features": ref_hist, "score": score_hist},
        "drift_thresholds": drift,
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


def quality_gate(cfg: AnomalyConfig, asset: str, ts: np.ndarray, series: np.ndarray
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
    cfg = load_config(config_path)
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
