"""IsolationForest family: one ONNX ``TreeEnsemble`` node behind the feature graph.

Its ``[model]`` section and its fit-to-ONNX step; the rebuild of the forest as
ONNX is in :mod:`trainer.isoforest`.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from edge.core.strict import Strict

NAME = "isoforest"
TASK = "anomaly"
SECTIONS = frozenset({"calibration"})  # no template variant: [commissioning] is pca's
SUMMARY = "unsupervised anomaly score: IsolationForest path length on healthy windows"


class IsoForestSection(Strict):
    family: Literal["isoforest"]
    n_estimators: int = Field(100, ge=1, le=10_000)
    max_samples: Literal["auto"] | int | float = Field(
        "auto", description='rows per tree: "auto" = min(256, n), an int >= 2, or a '
                            "fraction in (0, 1]")
    max_features: float = Field(1.0, gt=0, le=1, description="share of features per tree")
    seed: int = Field(0, ge=0, description="random_state: the same data give the same trees")

    @field_validator("max_samples")
    @classmethod
    def _rows(cls, v: str | int | float) -> str | int | float:
        if (isinstance(v, int) and v < 2) or (isinstance(v, float) and not 0 < v <= 1):
            raise ValueError(f"max_samples={v!r}: an int >= 2 or a fraction in (0, 1]")
        return v


def fit_onnx(mc: IsoForestSection, feat_model: Any, f_train: np.ndarray,
             ref_mean: np.ndarray, ref_std: np.ndarray) -> tuple[Any, dict[str, float]]:
    """The merged graph (feature graph -> forest score) and its manifest metrics."""
    from trainer.isoforest import build_isoforest_model, fit_isoforest

    iso = fit_isoforest(f_train, n_estimators=mc.n_estimators, max_samples=mc.max_samples,
                        max_features=mc.max_features, seed=mc.seed)
    return (build_isoforest_model(feat_model, iso, ref_mean, ref_std),
            {"isoforest_trees": float(iso.n_trees),
             "isoforest_max_samples": float(iso.forest.max_samples_)})
