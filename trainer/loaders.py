"""Generic training data: CSV/Parquet tables and the agent's own Parquet history.

Everything arrives as :class:`Readings` (long form: one row per asset, signal,
timestamp, value), which the quality report inspects as recorded, and which
:func:`to_runs` puts on a regular sample grid per asset for windowing.

Accepted tables (numpy + pyarrow, no pandas):

- long form: columns ``ts, asset, signal, value``
- wide form: columns ``ts, asset`` and one column per signal

``ts`` is epoch seconds (a number) or a timestamp (ISO 8601 in CSV). A table
without an ``asset`` column is one asset named after the file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from edge.core.errors import ConfigError

LONG = ("ts", "asset", "signal", "value")


@dataclass(frozen=True)
class Readings:
    """Long-form readings; ``files`` lists (name, sha256) of every file read."""

    asset: np.ndarray   # object (str) [n]
    signal: np.ndarray  # object (str) [n]
    ts: np.ndarray      # float64 epoch s [n]
    value: np.ndarray   # float64 [n]; NaN = missing
    files: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    @property
    def assets(self) -> list[str]:
        return sorted(set(self.asset.tolist()))

    @property
    def signals(self) -> list[str]:
        return sorted(set(self.signal.tolist()))


@dataclass(frozen=True)
class Run:
    """One asset's readings on a regular grid; the same interface as a C-MAPSS unit."""

    unit: str
    ts: np.ndarray                  # [T] grid times
    values: dict[str, np.ndarray]   # signal -> [T] (NaN where nothing could be held)

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def signals(self, names: list[str] | tuple[str, ...]) -> np.ndarray:
        missing = [n for n in names if n not in self.values]
        if missing:
            raise ValueError(f"asset {self.unit!r} has no signal(s) {missing}")
        return np.stack([self.values[n] for n in names])


def sha256_path(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_any(path: Path) -> pa.Table:
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pq.read_table(path)
        return pacsv.read_csv(path)
    except (OSError, pa.ArrowException) as exc:
        raise ConfigError(f"{path}: cannot read table ({exc})") from exc


def _seconds(col: pa.ChunkedArray, path: Path) -> np.ndarray:
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        us = pc.cast(pc.cast(col, pa.timestamp("us", tz="UTC") if pa.types.is_timestamp(
            col.type) else pa.timestamp("us")), pa.int64())
        return np.asarray(us.to_numpy(zero_copy_only=False), dtype=np.float64) / 1e6
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        try:
            parsed = pc.cast(col, pa.timestamp("us", tz="UTC"))
        except pa.ArrowException as exc:
            raise ConfigError(f"{path}: column ts: not a timestamp ({exc})") from exc
        return _seconds(parsed, path)
    try:
        return np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False),
                          dtype=np.float64)
    except pa.ArrowException as exc:
        raise ConfigError(f"{path}: column ts: not numeric ({exc})") from exc


def _floats(col: pa.ChunkedArray, path: Path, name: str) -> np.ndarray:
    try:
        arr = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowException as exc:
        raise ConfigError(f"{path}: column {name}: not numeric ({exc})") from exc
    return np.asarray(arr, dtype=np.float64)  # nulls arrive as NaN


def _strings(col: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.cast(col, pa.string()).to_pylist(), dtype=object)


def read_table(path: Path, layout: Literal["auto", "long", "wide"] = "auto") -> Readings:
    """Read a CSV or Parquet file in long or wide form (``auto``: long if it has
    exactly the columns ts, asset, signal, value)."""
    path = Path(path)
    t = _read_any(path)
    cols = t.column_names
    if "ts" not in cols:
        raise ConfigError(f"{path}: no 'ts' column (columns: {cols})")
    if layout == "auto":
        layout = "long" if set(cols) == set(LONG) else "wide"
    ts = _seconds(t["ts"], path)
    n = t.num_rows
    asset = _strings(t["asset"]) if "asset" in cols else np.full(n, path.stem, dtype=object)
    files = [{"name": path.name, "sha256": sha256_path(path)}]
    if layout == "long":
        missing = [c for c in LONG if c not in cols]
        if missing:
            raise ConfigError(f"{path}: long form needs columns {LONG}; missing {missing}")
        return Readings(asset, _strings(t["signal"]), ts, _floats(t["value"], path, "value"),
                        files)
    names = [c for c in cols if c not in ("ts", "asset")]
    if not names:
        raise ConfigError(f"{path}: wide form needs one column per signal besides ts, asset")
    vals = [_floats(t[c], path, c) for c in names]
    return Readings(
        np.tile(asset, len(names)),
        np.repeat(np.asarray(names, dtype=object), n),
        np.tile(ts, len(names)),
        np.concatenate(vals),
        files,
    )


def read_agent_history(root: Path, since: float = 0.0, until: float = 4e9,
                       assets: list[str] | None = None) -> Readings:
    """The agent's Parquet history (``edge.history.parquet`` layout), deduplicated."""
    from edge.history.history import read_history

    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: history directory not found")
    t = read_history(root, since, until, assets)
    parts = sorted(root.glob("date=*/asset=*/part-*.parquet"))
    files = [{"name": str(p.relative_to(root)), "sha256": sha256_path(p)} for p in parts]
    return Readings(_strings(t["asset"]), _strings(t["signal"]),
                    t["ts"].to_numpy().astype(np.float64),
                    t["value"].to_numpy().astype(np.float64), files)


def select(r: Readings, signals: list[str]) -> Readings:
    keep = np.isin(r.signal, np.asarray(signals, dtype=object))
    return Readings(r.asset[keep], r.signal[keep], r.ts[keep], r.value[keep], r.files)


def to_runs(r: Readings, signals: list[str], period: float, max_hold: int,
            until: dict[str, float] | None = None) -> list[Run]:
    """Put each asset on a grid of ``period`` seconds from its first reading.

    A slot takes the last reading at or before its time (a duplicate timestamp:
    the first one), held for at most ``max_hold`` slots, as the edge's window
    does; beyond that the slot is NaN. ``until[asset]`` ends a run (failure time).
    """
    # One stable sort into (asset, signal) groups, each by time: a mask per pair
    # would cost O(readings x assets x signals) (FD002: minutes).
    order = np.lexsort((np.arange(len(r)), r.ts, r.signal, r.asset))
    a_s, s_s, t_s, v_s = r.asset[order], r.signal[order], r.ts[order], r.value[order]
    cuts = np.flatnonzero((a_s[1:] != a_s[:-1]) | (s_s[1:] != s_s[:-1])) + 1
    bounds = np.r_[0, cuts, len(order)].tolist()
    groups = {(a_s[lo], s_s[lo]): (lo, hi) for lo, hi in pairwise(bounds)}
    a_cuts = np.r_[0, np.flatnonzero(a_s[1:] != a_s[:-1]) + 1, len(order)].tolist()
    spans = {a_s[lo]: (float(t_s[lo:hi].min()), float(t_s[lo:hi].max()))
             for lo, hi in pairwise(a_cuts) if hi > lo}
    runs = []
    for a in r.assets:
        t0, t1 = spans[a]
        if until is not None and a in until:
            t1 = float(until[a])
        grid = t0 + period * np.arange(int(np.floor((t1 - t0) / period + 1e-9)) + 1)
        values = {}
        for s in signals:
            lo, hi = groups.get((a, s), (0, 0))
            ts, v = t_s[lo:hi], v_s[lo:hi]
            first = np.r_[True, np.diff(ts) > 0] if ts.size else np.zeros(0, bool)
            ts, v = ts[first], v[first]
            ok = np.isfinite(v)
            ts, v = ts[ok], v[ok]
            idx = np.searchsorted(ts, grid + 1e-9 * period, side="right") - 1
            held = np.where(idx >= 0, v[np.clip(idx, 0, None)] if v.size else np.nan, np.nan)
            age = np.where(idx >= 0, (grid - ts[np.clip(idx, 0, None)]) / period
                           if ts.size else np.inf, np.inf)
            values[s] = np.where(age <= max_hold + 1e-9, held, np.nan)
        runs.append(Run(a, grid, values))
    return runs
