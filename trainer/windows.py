"""Windows of run-to-failure runs and their remaining life, and unit-wise splits.

A run is anything with ``.unit``, ``len()`` and ``.signals(names) -> [signals, T]``
(a table's asset on its grid, a C-MAPSS engine). Numpy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def sliding_windows(series: np.ndarray, window: int, hop: int = 1) -> np.ndarray:
    """``[signals, time]`` -> ``[n, signals, window]``; windows end at the last sample.

    Aligning to the end keeps the most recent window, which is the one scored live.

    >>> sliding_windows(np.arange(10.0).reshape(1, 10), 4, 3)[:, 0, :].tolist()
    [[0.0, 1.0, 2.0, 3.0], [3.0, 4.0, 5.0, 6.0], [6.0, 7.0, 8.0, 9.0]]
    """
    t = series.shape[1]
    if t < window:
        return np.empty((0, series.shape[0], window), dtype=series.dtype)
    ends = np.arange(t, window - 1, -hop)[::-1]
    idx = ends[:, None] - window + np.arange(window)[None, :]
    return np.ascontiguousarray(series[:, idx].transpose(1, 0, 2))


def last_window(series: np.ndarray, window: int) -> np.ndarray:
    """The final ``[signals, window]`` of a series; a short series is padded by
    repeating its first sample (C-MAPSS FD002 has test units shorter than 30 cycles)."""
    t = series.shape[1]
    if t >= window:
        return series[:, t - window:].copy()
    pad = np.repeat(series[:, :1], window - t, axis=1)
    return np.concatenate([pad, series], axis=1)


def unit_windows(
    units: list[Any], signals: list[str], window: int, hop: int, rul_cap: float,
    min_samples: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows of run-to-failure units with their capped RUL at the window's end.

    Returns ``(windows [n, signals, window] float32, rul [n], unit_id [n])``.
    The target is piecewise linear: constant ``rul_cap`` while healthy, then
    falling to 0 at the last recorded cycle (the literature standard for C-MAPSS).

    ``min_samples`` < ``window`` also yields windows ending after only that many
    samples, padded like :func:`last_window` does (the test sets hold engines
    shorter than a window, so training should see such windows too).
    """
    xs, ys, us = [], [], []
    for u in units:
        series = u.signals(signals)
        pad = max(0, window - (min_samples or window))
        if pad:
            series = np.concatenate([np.repeat(series[:, :1], pad, axis=1), series], axis=1)
        w = sliding_windows(series, window, hop)
        n = len(u) + pad  # samples in the padded series
        # The window ending at 0-based sample e has n - 1 - e cycles left.
        ends = np.arange(n, window - 1, -hop)[::-1] - 1
        xs.append(w)
        ys.append(np.minimum(n - 1 - ends, rul_cap).astype(np.float64))
        us.append(np.full(len(ends), u.unit))  # int (C-MAPSS) or str (asset) ids
    return (
        np.concatenate(xs).astype(np.float32),
        np.concatenate(ys),
        np.concatenate(us),
    )


def split_units(units: list[Any], validation_fraction: float, seed: int) -> tuple[
    list[Any], list[Any]
]:
    """Split whole units (never windows) into train and validation, reproducibly."""
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction={validation_fraction}: must be in [0, 1)")
    order = np.random.default_rng(seed).permutation(len(units))
    n_val = round(len(units) * validation_fraction)
    val_idx = set(order[:n_val].tolist())
    train = [u for i, u in enumerate(units) if i not in val_idx]
    val = [u for i, u in enumerate(units) if i in val_idx]
    return train, val
