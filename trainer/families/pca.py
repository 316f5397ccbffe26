"""PCA family: Hotelling T² + Q (SPE) on robust-scaled window features.

Its ``[model]`` section and its fit-to-ONNX step; the maths is in
:mod:`trainer.anomaly`.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from edge.core.strict import Strict

NAME = "pca"
TASK = "anomaly"
# [calibration] sets the alert level; [commissioning] makes the bundle a template.
SECTIONS = frozenset({"calibration", "commissioning"})
SUMMARY = "unsupervised anomaly score: PCA Hotelling T² + Q on healthy windows"


class PcaSection(Strict):
    family: Literal["pca"] = "pca"
    variance: float = Field(0.9, gt=0, le=1, description="share of variance the PCA keeps")
    quantile: float = Field(0.99, ge=0.5, lt=1, description="T² and Q normalised at this "
                            "quantile of the training rows (score 1 = that quantile)")


def fit_onnx(mc: PcaSection, feat_model: Any, f_train: np.ndarray, ref_mean: np.ndarray,
             ref_std: np.ndarray) -> tuple[Any, dict[str, float]]:
    """The merged graph (feature graph -> PCA score) and its manifest metrics."""
    from trainer.anomaly import build_anomaly_model, fit_pca

    pca = fit_pca(f_train, variance=mc.variance, quantile=mc.quantile)
    return (build_anomaly_model(feat_model, pca, ref_mean, ref_std),
            {"pca_components": float(pca.n_components)})
