"""Operating-condition (regime) normalisation, fitted here and run inside the ONNX graph.

C-MAPSS FD002 mixes six flight conditions, each shifting every sensor's level
far more than wear does. Standardising each sensor by the mean and std of its
regime removes that. The regime of a sample is the nearest centroid of its
operating settings (scaled per setting), so the window fed to the bundle carries
the settings as extra signals and the graph does the lookup: serving cannot
normalise differently from training.

Regimes are found by rounding the settings to a grid (they are discrete set
points with small noise) and keeping grid cells that hold at least
``min_share`` of the samples; each centroid is the mean of its cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STD_FLOOR = 1e-6


@dataclass(frozen=True)
class RegimeNorm:
    inputs: tuple[str, ...]      # the window's rows: sensors, then settings
    sensors: tuple[str, ...]
    settings: tuple[str, ...]
    centroids: np.ndarray        # [regimes, settings]
    scale: np.ndarray            # [settings]; distances are in these units
    mean: np.ndarray             # [sensors, regimes]
    std: np.ndarray              # [sensors, regimes]

    def lineage(self) -> dict[str, object]:
        return {
            "settings": list(self.settings),
            "centroids": np.round(self.centroids, 6).tolist(),
            "scale": np.round(self.scale, 6).tolist(),
            "regimes": int(self.centroids.shape[0]),
        }


def find_centroids(settings: np.ndarray, decimals: list[int], min_share: float = 0.01
                   ) -> np.ndarray:
    """Centroids ``[R, k]`` of the setting cells holding >= ``min_share`` of the rows,
    sorted lexicographically (so the regime numbering is reproducible)."""
    s = np.asarray(settings, np.float64)
    if s.ndim != 2 or s.shape[1] != len(decimals):
        raise ValueError(f"settings shape {s.shape} does not match {len(decimals)} decimals")
    keys = np.stack([np.round(s[:, j], d) for j, d in enumerate(decimals)], axis=1)
    _cells, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    keep = np.flatnonzero(counts >= min_share * len(s))
    if keep.size == 0:
        raise ValueError("no operating regime holds min_share of the samples")
    return np.stack([s[inverse.ravel() == i].mean(axis=0) for i in keep])


def _scale(centroids: np.ndarray) -> np.ndarray:
    spread = centroids.std(axis=0) if len(centroids) > 1 else np.ones(centroids.shape[1])
    out: np.ndarray = np.where(spread > 0, spread, 1.0)
    return out


def assign(settings: np.ndarray, centroids: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Nearest centroid (ties: lowest index, like ONNX ArgMin) of rows ``[..., k]``."""
    d = ((settings[..., None, :] - centroids) / scale) ** 2
    out: np.ndarray = d.sum(axis=-1).argmin(axis=-1)
    return out


def fit_regimes(sensors: list[str], settings: list[str], sensor_series: np.ndarray,
                setting_series: np.ndarray, decimals: list[int], min_share: float = 0.01
                ) -> RegimeNorm:
    """Fit centroids and per-regime mean/std from ``[sensors, N]`` and ``[settings, N]``."""
    cent = find_centroids(setting_series.T, decimals, min_share)
    scale = _scale(cent)
    r = assign(setting_series.T, cent, scale)
    x = np.asarray(sensor_series, np.float64)
    mean = np.zeros((len(sensors), len(cent)))
    std = np.ones((len(sensors), len(cent)))
    for k in range(len(cent)):
        sel = x[:, r == k]
        if sel.shape[1]:
            mean[:, k], std[:, k] = sel.mean(axis=1), np.maximum(sel.std(axis=1), STD_FLOOR)
    # Rounded so the constants (and the lineage) are short and reproducible across BLAS builds.
    return RegimeNorm(tuple(sensors) + tuple(settings), tuple(sensors), tuple(settings),
                      np.round(cent, 6), np.round(scale, 6), np.round(mean, 6), np.round(std, 6))


def normalise(regime: RegimeNorm, windows: np.ndarray) -> np.ndarray:
    """Numpy reference of the graph's normalisation: ``[n, inputs, W]`` -> ``[n, sensors, W]``."""
    x = np.asarray(windows, np.float64)
    n_s = len(regime.sensors)
    r = assign(x[:, n_s:, :].transpose(0, 2, 1), regime.centroids, regime.scale)  # [n, W]
    mu = regime.mean[:, r].transpose(1, 0, 2)
    sd = regime.std[:, r].transpose(1, 0, 2)
    out: np.ndarray = (x[:, :n_s, :] - mu) / sd
    return out


def _c(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))


def regime_nodes(regime: RegimeNorm, x: str, out: str) -> list[onnx.NodeProto]:
    """ONNX nodes: ``x [b, inputs, W]`` (float64) -> ``out [b, sensors, W]`` standardised.

    Nearest centroid by ArgMin over squared scaled distances, a one-hot mask,
    and two MatMuls that pick each sample's regime mean and 1/std.
    """
    n_s, n_k, n_r = len(regime.sensors), len(regime.settings), len(regime.centroids)
    cent = (regime.centroids / regime.scale).reshape(n_r, n_k, 1)
    mk = helper.make_node
    return [
        _c("reg_sensor_idx", np.arange(n_s, dtype=np.int64)),
        _c("reg_setting_idx", np.arange(n_s, n_s + n_k, dtype=np.int64)),
        _c("reg_inv_scale", (1.0 / regime.scale).reshape(n_k, 1)),
        _c("reg_centroids", cent),
        _c("reg_axis1", np.array([1], dtype=np.int64)),
        _c("reg_axis2", np.array([2], dtype=np.int64)),
        _c("reg_ids", np.arange(n_r, dtype=np.int64).reshape(1, n_r, 1)),
        _c("reg_mean", regime.mean.astype(np.float64)),
        _c("reg_inv_std", 1.0 / regime.std.astype(np.float64)),
        mk("Gather", [x, "reg_sensor_idx"], ["reg_sensors"], axis=1),
        mk("Gather", [x, "reg_setting_idx"], ["reg_settings"], axis=1),
        mk("Mul", ["reg_settings", "reg_inv_scale"], ["reg_scaled"]),       # [b, k, W]
        mk("Unsqueeze", ["reg_scaled", "reg_axis1"], ["reg_s4"]),           # [b, 1, k, W]
        mk("Sub", ["reg_s4", "reg_centroids"], ["reg_diff"]),               # [b, R, k, W]
        mk("Mul", ["reg_diff", "reg_diff"], ["reg_sq"]),
        mk("ReduceSum", ["reg_sq", "reg_axis2"], ["reg_dist"], keepdims=0),  # [b, R, W]
        mk("ArgMin", ["reg_dist"], ["reg_idx"], axis=1, keepdims=1),        # [b, 1, W]
        mk("Equal", ["reg_idx", "reg_ids"], ["reg_mask"]),                  # [b, R, W]
        mk("Cast", ["reg_mask"], ["reg_onehot"], to=TensorProto.DOUBLE),
        mk("MatMul", ["reg_mean", "reg_onehot"], ["reg_mu"]),               # [b, S, W]
        mk("MatMul", ["reg_inv_std", "reg_onehot"], ["reg_isd"]),
        mk("Sub", ["reg_sensors", "reg_mu"], ["reg_dev"]),
        mk("Mul", ["reg_dev", "reg_isd"], [out]),
    ]
