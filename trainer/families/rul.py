"""Gradient-boosting families: remaining useful life (regressor) and the probability
of failure within a horizon (classifier).

Their ``[model]`` section and their fit-to-ONNX step (skl2onnx, merged behind the
feature graph by :func:`trainer.export.build_bundle_model`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import onnx
from pydantic import Field

from edge.core.strict import Strict

REGRESSOR, CLASSIFIER = "gradient_boosting", "gradient_boosting_classifier"
# The optional config sections both take (trainer.config).
SECTIONS = frozenset({"target", "thresholds", "regimes", "labels"})
SUMMARY = {REGRESSOR: "remaining useful life (regression on run-to-failure data)",
           CLASSIFIER: "probability of failure within target.horizon samples"}


class GBRParams(Strict):
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


class GradientBoostingSection(Strict):
    family: Literal["gradient_boosting", "gradient_boosting_classifier"] = Field(
        default="gradient_boosting", description="gradient_boosting: RUL regressor; "
        "gradient_boosting_classifier: probability of failure within target.horizon")
    params: GBRParams = Field(default_factory=GBRParams)


def fit_model(cfg: GradientBoostingSection, features: np.ndarray, target: np.ndarray, *,
              monitor: Callable[[int, Any, Any], bool] | None = None) -> Any:
    """Fit the configured model on feature rows (as computed by the feature graph);
    the classifier's ``target`` is 0/1 (fails within the horizon).

    ``monitor(i, estimator, locals)`` is called after each boosting stage (progress).
    """
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

    params = cfg.params.model_dump()
    model: GradientBoostingRegressor | GradientBoostingClassifier
    if cfg.family == CLASSIFIER:
        params.pop("loss")  # regression losses; the classifier uses log-loss
        model = GradientBoostingClassifier(**params)
    else:
        model = GradientBoostingRegressor(**params)
    model.fit(features, target, monitor=monitor)
    return model


def fit_onnx(cfg: GradientBoostingSection, feat_model: onnx.ModelProto, f_fit: np.ndarray,
             target: np.ndarray, ref_mean: np.ndarray, ref_std: np.ndarray, *,
             monitor: Callable[[int, Any, Any], bool] | None = None
             ) -> tuple[Any, onnx.ModelProto]:
    """The fitted estimator and the merged graph (feature graph -> estimator)."""
    from trainer.export import build_bundle_model

    est = fit_model(cfg, f_fit, target, monitor=monitor)
    return est, build_bundle_model(feat_model, est, ref_mean, ref_std)
