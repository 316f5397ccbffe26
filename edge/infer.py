"""onnxruntime sessions: batched scoring of ready windows, warm-up and self-test."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class ScoredWindow:
    """One scored window of one asset, as handed to alerts, drift and the API."""

    asset: str
    ts: float  # timestamp of the window's last slot (epoch s)
    score: float
    deviations: np.ndarray | None  # [features] in reference std units, if the graph has them
    model: str  # "<name>/<version>"
