"""Training configuration (one strict TOML tree), model fitting and RUL metrics."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sklearn.ensemble import GradientBoostingRegressor

from edge.bundle import NAME_PATTERN
from edge.errors import ConfigError
from trainer.data import INFORMATIVE_SENSORS, SUBSETS, sensor_index
from trainer.features import FEATURES


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BundleSection(_Section):
    name: str = Field(pattern=NAME_PATTERN, description="bundle name: models/<name>/<version>")
    description: str = Field(default="", max_length=2000)


class DataSection(_Section):
    dataset: Literal["cmapss"] = Field(default="cmapss", description="data set family")
    subset: str = Field(default="FD001", description="C-MAPSS subset: FD001..FD004")
    signals: list[str] = Field(
        default_factory=lambda: list(INFORMATIVE_SENSORS), min_length=1,
        description="sensor names (s1..s21), in the window's signal order",
    )
    sample_period_s: float = Field(default=1.0, gt=0, description="seconds per sample (one cycle)")
    validation_fraction: float = Field(
        default=0.2, ge=0, lt=1, description="share of units held out (whole units, never windows)"
    )
    split_seed: int = Field(default=0, description="seed of the unit-wise split")
    range_margin: float = Field(
        default=0.5, ge=0, description="signal min/max = training range widened by this share of it"
    )

    @field_validator("subset")
    @classmethod
    def _subset(cls, v: str) -> str:
        if v not in SUBSETS:
            raise ValueError(f"expected one of {', '.join(SUBSETS)}")
        return v

    @field_validator("signals")
    @classmethod
    def _signals(cls, v: list[str]) -> list[str]:
        for s in v:
            sensor_index(s)
        if len(set(v)) != len(v):
            raise ValueError("duplicate signal names")
        return v


class WindowSection(_Section):
    length: int = Field(default=30, ge=2, le=4096, description="samples per window")
    hop: int = Field(default=1, ge=1, description="samples between consecutive windows")
    max_hold_samples: int = Field(default=3, ge=0, description="edge gap rule: hold the last value")


class FeatureSection(_Section):
    names: list[str] = Field(default_factory=lambda: list(FEATURES), min_length=1)
    last_n: int = Field(default=5, ge=1, description="samples averaged by the 'last' feature")
    centre: bool = Field(
        default=True, description="take level features relative to each signal's training mean"
    )

    @field_validator("names")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        unknown = [f for f in v if f not in FEATURES]
        if unknown:
            raise ValueError(f"unknown features {unknown}; available: {', '.join(FEATURES)}")
        return v


class TargetSection(_Section):
    rul_cap: float = Field(
        default=125.0, gt=0, description="piecewise-linear RUL target cap (cycles)"
    )


class GBRParams(_Section):
    n_estimators: int = Field(default=300, ge=1, le=5000)
    max_depth: int = Field(default=5, ge=1, le=16)
    learning_rate: float = Field(default=0.05, gt=0, le=1)
    subsample: float = Field(default=0.7, gt=0, le=1)
    max_features: float | None = Field(
        default=0.3, gt=0, le=1, description="share of features considered per split"
    )
    min_samples_leaf: int = Field(default=20, ge=1)
    loss: Literal["squared_error", "absolute_error", "huber"] = "squared_error"
    random_state: int = 0


class ModelSection(_Section):
    family: Literal["gradient_boosting"] = "gradient_boosting"
    params: GBRParams = Field(default_factory=GBRParams)


class ThresholdSection(_Section):
    warning: float = 30.0
    critical: float | None = 15.0
    reset: float | None = 40.0
    rationale: str = "RUL below 30 cycles: the engine fails within 30 cycles"


class ReferenceSection(_Section):
    bins: int = Field(default=10, ge=2, le=100, description="quantile bins of reference histograms")


class TrainConfig(_Section):
    bundle: BundleSection
    data: DataSection = Field(default_factory=DataSection)
    window: WindowSection = Field(default_factory=WindowSection)
    features: FeatureSection = Field(default_factory=FeatureSection)
    target: TargetSection = Field(default_factory=TargetSection)
    model: ModelSection = Field(default_factory=ModelSection)
    thresholds: ThresholdSection = Field(default_factory=ThresholdSection)
    reference: ReferenceSection = Field(default_factory=ReferenceSection)

    def canonical_json(self) -> str:
        """Stable text of the full config (defaults included) for fingerprints."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


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
    return cfg


def fit_model(
    cfg: ModelSection,
    features: np.ndarray,
    target: np.ndarray,
    *,
    monitor: Callable[[int, Any, Any], bool] | None = None,
) -> GradientBoostingRegressor:
    """Fit the configured regressor on feature rows (as computed by the feature graph).

    ``monitor(i, estimator, locals)`` is called after each boosting stage (progress).
    """
    model = GradientBoostingRegressor(**cfg.params.model_dump())
    model.fit(features, target, monitor=monitor)
    return model


def rmse(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred, np.float64) - true) ** 2)))


def nasa_score(pred: np.ndarray, true: np.ndarray) -> float:
    """PHM08 scoring function: late predictions (d > 0) cost more than early ones.

    >>> round(nasa_score(np.array([10.0, 30.0]), np.array([20.0, 20.0])), 3)
    2.876
    """
    d = np.asarray(pred, np.float64) - true
    return float(np.sum(np.where(d < 0, np.exp(-d / 13.0) - 1.0, np.exp(d / 10.0) - 1.0)))
