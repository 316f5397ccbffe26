"""Training configuration of the supervised families (one strict TOML tree) and RUL metrics.

The ``[model]`` section is the family's own (:mod:`trainer.families.rul`).
"""

from __future__ import annotations

import itertools
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from edge.core.errors import ConfigError
from edge.core.names import NAME_PATTERN
from edge.core.strict import Strict
from edge.models.policy import MAX_RULE_WINDOWS
from trainer.cmapss import INFORMATIVE_SENSORS, SUBSETS, column_index
from trainer.families.rul import GradientBoostingSection
from trainer.features import FEATURES, FeatureSpec
from trainer.tablespec import TableSpec


class BundleSection(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="bundle name: models/<name>/<version>")
    description: str = Field(default="", max_length=2000)


class DataSection(Strict):
    dataset: Literal["cmapss", "table", "history"] = Field(
        default="cmapss", description="cmapss: the NASA C-MAPSS preset of the table source "
        "(trainer.cmapss); table: a CSV/Parquet file described by [data.table] (or path and "
        "layout); history: the agent's Parquet history dir")
    path: str = Field(default="", description="table file or history directory (relative "
                      "paths are taken from the config file's directory)")
    layout: Literal["auto", "long", "wide"] = Field(default="auto", description="table form")
    table: TableSpec | None = Field(default=None, description="dataset=table: the table and "
                                    "its columns (trainer.tabular); replaces path/layout")
    subset: str = Field(default="FD001", description="C-MAPSS subset: FD001..FD004")
    signals: list[str] = Field(
        default_factory=lambda: list(INFORMATIVE_SENSORS), min_length=1,
        description="signal names in the window's order (C-MAPSS: s1..s21, op1..op3)",
    )
    min_samples: int | None = Field(
        default=None, ge=1, description="also train on windows ending after this many "
        "samples, front-padded with the first sample (as short test runs are)")
    sample_period_s: float = Field(default=1.0, gt=0, description="seconds per sample (one cycle)")
    validation_fraction: float = Field(
        default=0.2, ge=0, lt=1, description="share of units held out (whole units, never windows)"
    )
    split_seed: int = Field(default=0, description="seed of the unit-wise split")
    range_margin: float = Field(
        default=0.1, ge=0, le=10, description="the limit alarm sits this share of the training "
        "span outside the training range (manifest limits.margin)")
    clip_to_limits: bool = Field(
        default=False, description="the agent clips readings past the limit alarm's bounds "
        "before the model sees them (manifest limits.clip); the alert and history keep the "
        "real value")

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset(cls, v: Any) -> Any:
        if v == "skab":
            raise ValueError('SKAB has no failures to learn remaining life from: [model] '
                             'family = "pca" or "isoforest" trains on it')
        return v

    @field_validator("subset")
    @classmethod
    def _subset(cls, v: str) -> str:
        if v not in SUBSETS:
            raise ValueError(f"expected one of {', '.join(SUBSETS)}")
        return v

    @field_validator("signals")
    @classmethod
    def _signals(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("duplicate signal names")
        return v

    @model_validator(mode="after")
    def _known(self) -> DataSection:
        if self.dataset == "cmapss":
            for s in self.signals:
                column_index(s)
        elif self.table is not None:
            if self.dataset != "table" or not self.table.path or self.path:
                raise ValueError('[data.table] (with its path) is for dataset = "table", '
                                 "instead of data.path")
            t = self.table
            if t.train or t.validation or t.test:
                # A run to failure cut by time would end before its failure.
                raise ValueError("data.table.train/validation/test: the RUL families split "
                                 "whole assets (data.validation_fraction, data.split_seed); "
                                 "time ranges are for the anomaly families")
        elif not self.path:
            raise ValueError(f"dataset={self.dataset!r} needs data.path")
        return self


class RegimeSection(Strict):
    """Per-regime standardisation inside the graph (see trainer.regimes)."""

    settings: list[str] = Field(default_factory=list, description="operating-setting signals "
                                "(appended to the window after data.signals); empty = off")
    decimals: list[int] = Field(default_factory=list, description="rounding of each setting "
                                "that makes its set points discrete")
    min_share: float = Field(default=0.01, gt=0, lt=1, description="smallest regime share")


class WindowSection(Strict):
    length: int = Field(default=30, ge=2, le=4096, description="samples per window")
    hop: int = Field(default=1, ge=1, description="samples between consecutive windows")
    max_hold_samples: int = Field(default=3, ge=0, description="edge gap rule: hold the last value")


class FeatureSection(Strict):
    names: list[str] = Field(default_factory=lambda: list(FEATURES), min_length=1)
    last_n: int = Field(default=5, ge=1, description="samples averaged by the 'last' feature")
    centre: bool = Field(
        default=True, description="take level features relative to each signal's training mean"
    )
    ewm_halflife: float = Field(default=10.0, gt=0, description="'ewm' half-life (samples)")
    bands: int = Field(default=4, ge=1, le=256, description="number of spectral bands")
    per_signal: dict[str, list[str]] = Field(
        default_factory=dict, description="feature list for a signal, replacing 'names' for it")

    @field_validator("names")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        unknown = [f for f in v if f not in FEATURES]
        if unknown:
            raise ValueError(f"unknown features {unknown}; available: {', '.join(FEATURES)}")
        return v

    def spec(self) -> FeatureSpec:
        return FeatureSpec(list(self.names), self.last_n, self.ewm_halflife, self.bands,
                           {k: list(v) for k, v in self.per_signal.items()})


class TargetSection(Strict):
    rul_cap: float = Field(
        default=125.0, gt=0, description="piecewise-linear RUL target cap (cycles)"
    )
    horizon: float = Field(default=30.0, gt=0, description="classifier label: fails within "
                           "this many samples (RUL <= horizon)")


class QualitySection(Strict):
    """The data quality gate before fitting (see trainer.quality)."""

    max_missing: float = Field(default=0.5, ge=0, le=1, description="refuse a signal missing "
                               "from more than this share of its grid slots")
    flat_samples: int = Field(default=20, ge=2, description="report runs of identical values "
                              "at least this long as flat-lined")
    allow: list[str] = Field(default_factory=list, description="signals to keep despite a "
                             "refusal (recorded in the manifest)")
    ranges: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="signal -> [min, max] of physically plausible "
        "values: written to the manifest (plausible_min/max), where the agent treats a "
        "reading outside as a sensor fault; the quality report counts them in training data")

    @field_validator("ranges")
    @classmethod
    def _ordered(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for name, (lo, hi) in v.items():
            if not lo < hi:
                raise ValueError(f"quality.ranges.{name} = [{lo:g}, {hi:g}]: min must be "
                                 "below max")
        return v


class LabelSection(Strict):
    failures: dict[str, float] = Field(default_factory=dict, description="table/history: "
                                       "asset -> failure time (epoch s); runs end there")


class ThresholdSection(Strict):
    warning: float = 30.0
    critical: float | None = 15.0
    reset: float | None = 40.0
    rationale: str = "RUL below 30 cycles: the engine fails within 30 cycles"


class AlertRuleSection(Strict):
    """The alert rule the bundle deploys (manifest ``alert_policy``; the levels are the
    thresholds): ``forewarn evaluate --bundle`` and the agent both apply it."""

    k: int = Field(1, ge=1, le=MAX_RULE_WINDOWS,
                   description="open an alert when k of the last n windows breach")
    n: int = Field(1, ge=1, le=MAX_RULE_WINDOWS, description="the debounce window, in windows")
    clear_after: int = Field(3, ge=1, description="windows past the reset level to clear")
    cooldown_s: float = Field(0.0, ge=0, description="no re-open for this long after a clear "
                                                     "(seconds of data time)")

    @model_validator(mode="after")
    def _k_le_n(self) -> AlertRuleSection:
        if self.k > self.n:
            raise ValueError(f"k={self.k} exceeds n={self.n}")
        return self

    def policy(self, direction: str, rationale: str) -> dict[str, Any]:
        """The manifest's ``alert_policy`` section (:class:`edge.models.policy.AlertPolicy`)."""
        return {"levels": "thresholds", "direction": direction, "k": self.k, "n": self.n,
                "clear_after": self.clear_after, "cooldown_s": self.cooldown_s,
                "rationale": rationale}


class ReferenceSection(Strict):
    bins: int = Field(default=10, ge=2, le=100, description="quantile bins of reference histograms")


class TrainConfig(Strict):
    bundle: BundleSection
    data: DataSection = Field(default_factory=DataSection)
    window: WindowSection = Field(default_factory=WindowSection)
    features: FeatureSection = Field(default_factory=FeatureSection)
    target: TargetSection = Field(default_factory=TargetSection)
    model: GradientBoostingSection = Field(default_factory=GradientBoostingSection)
    thresholds: ThresholdSection = Field(default_factory=ThresholdSection)
    alerts: AlertRuleSection = Field(default_factory=AlertRuleSection)
    reference: ReferenceSection = Field(default_factory=ReferenceSection)
    regimes: RegimeSection = Field(default_factory=RegimeSection)
    quality: QualitySection = Field(default_factory=QualitySection)
    labels: LabelSection = Field(default_factory=LabelSection)

    @property
    def inputs(self) -> list[str]:
        """The window's rows: the signals, then any regime settings."""
        return [*self.data.signals, *self.regimes.settings]

    def canonical_json(self) -> str:
        """Stable text of the full config (defaults included) for fingerprints."""
        d = self.model_dump(mode="json")
        if self.data.table is None:
            # Configs from before the table source keep their fingerprint.
            d["data"].pop("table")
        if self.alerts == AlertRuleSection():
            d.pop("alerts")  # likewise for configs from before [alerts] (the same rule)
        return json.dumps(d, sort_keys=True, separators=(",", ":"))


def load_config(path: Path) -> TrainConfig:
    """Read a training TOML file; errors name the file, the key, the value and the problem."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read training config ({exc})") from exc
    try:
        cfg = TrainConfig.model_validate(raw)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(x) for x in e['loc'])} → {e.get('input')!r:.60} → {e['msg']}"
            for e in exc.errors()
        ]
        raise ConfigError(f"{path}: invalid training config: " + "; ".join(problems)) from exc
    if cfg.features.last_n > cfg.window.length:
        raise ConfigError(
            f"{path}: features.last_n → {cfg.features.last_n} → exceeds window.length "
            f"{cfg.window.length}"
        )
    if cfg.window.hop > cfg.window.length:
        raise ConfigError(f"{path}: window.hop → {cfg.window.hop} → exceeds window.length")
    stray = sorted(set(cfg.features.per_signal) - set(cfg.data.signals))
    if stray:
        raise ConfigError(f"{path}: features.per_signal → {stray} → not in data.signals")
    stray = sorted(set(cfg.quality.ranges) - set(cfg.data.signals) - set(cfg.regimes.settings))
    if stray:
        raise ConfigError(f"{path}: quality.ranges → {stray} → not in data.signals")
    r = cfg.regimes
    if len(r.decimals) != len(r.settings):
        raise ConfigError(f"{path}: regimes.decimals → {r.decimals} → needs one per setting "
                          f"{r.settings}")
    if set(r.settings) & set(cfg.data.signals):
        raise ConfigError(f"{path}: regimes.settings → {r.settings} → also in data.signals")
    if cfg.data.dataset == "cmapss":
        for s in r.settings:
            try:
                column_index(s)
            except ValueError as exc:
                raise ConfigError(f"{path}: regimes.settings → {s!r} → {exc}") from None
    return cfg


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
