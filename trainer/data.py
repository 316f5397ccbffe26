"""NASA C-MAPSS loaders, windows and unit-wise splits (numpy only, no pandas).

The project ships gzip copies of FD001 and FD002 under ``trainer/data/cmapss``
(public domain, see its SOURCE.md); a ``root`` directory holding the original
``.txt`` files (or ``.txt.gz``) can be given instead.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PACKAGED_ROOT = Path(__file__).resolve().parent / "data" / "cmapss"
SUBSETS = ("FD001", "FD002", "FD003", "FD004")
SENSOR_NAMES = tuple(f"s{i}" for i in range(1, 22))
SETTING_NAMES = ("op1", "op2", "op3")
# The 14 sensors that carry degradation information in FD001; the other seven are
# constant (or nearly) in a single operating condition, so windows of them are noise.
INFORMATIVE_SENSORS = (
    "s2", "s3", "s4", "s7", "s8", "s9", "s11", "s12", "s13", "s14", "s15", "s17", "s20", "s21",
)
# Units from Saxena et al. (PHM08), table 2; Rankine is written "degR".
SENSOR_UNITS = {
    "s1": "degR", "s2": "degR", "s3": "degR", "s4": "degR", "s5": "psia", "s6": "psia",
    "s7": "psia", "s8": "rpm", "s9": "rpm", "s10": "", "s11": "psia", "s12": "pps/psi",
    "s13": "rpm", "s14": "rpm", "s15": "", "s16": "", "s17": "", "s18": "rpm",
    "s19": "rpm", "s20": "lbm/s", "s21": "lbm/s",
}
_NCOLS = 2 + len(SETTING_NAMES) + len(SENSOR_NAMES)


@dataclass(frozen=True)
class Unit:
    """One engine's trajectory: ``cycles[t]``, ``settings[t, 3]``, ``sensors[t, 21]``."""

    unit: int
    cycles: np.ndarray
    settings: np.ndarray
    sensors: np.ndarray

    def __len__(self) -> int:
        return int(self.cycles.shape[0])

    def signals(self, names: list[str] | tuple[str, ...]) -> np.ndarray:
        """The named sensors or settings (op1..op3) as ``[signals, time]`` (the edge's
        window layout)."""
        cols = np.hstack([self.sensors, self.settings])
        return np.ascontiguousarray(cols[:, [column_index(n) for n in names]].T)


@dataclass(frozen=True)
class CMAPSS:
    subset: str
    train: list[Unit]
    test: list[Unit]
    test_rul: np.ndarray  # true remaining cycles after each test unit's last row
    files: dict[str, Path] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)  # of the decompressed text


def sensor_index(name: str) -> int:
    try:
        return SENSOR_NAMES.index(name)
    except ValueError:
        raise ValueError(f"unknown C-MAPSS sensor {name!r}; expected one of s1..s21") from None


def column_index(name: str) -> int:
    """Index of a sensor (s1..s21) or an operating setting (op1..op3, after the sensors)."""
    if name in SETTING_NAMES:
        return len(SENSOR_NAMES) + SETTING_NAMES.index(name)
    try:
        return SENSOR_NAMES.index(name)
    except ValueError:
        raise ValueError(
            f"unknown C-MAPSS signal {name!r}; expected s1..s21 or op1..op3") from None


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.txt", root / f"{stem}.txt.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{root}: neither {stem}.txt nor {stem}.txt.gz found")


def _read_text(path: Path) -> bytes:
    # Decompressed bytes, so a .txt and its .txt.gz hash (and fingerprint) alike.
    return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()


def _parse_rows(raw: bytes, path: Path) -> np.ndarray:
    rows = np.loadtxt(raw.decode("ascii").splitlines(), dtype=np.float64, ndmin=2)
    if rows.shape[1] != _NCOLS:
        raise ValueError(f"{path}: expected {_NCOLS} columns, found {rows.shape[1]}")
    return rows


def _split_units(rows: np.ndarray, path: Path) -> list[Unit]:
    ids = rows[:, 0].astype(np.int64)
    units = []
    for uid in np.unique(ids):
        r = rows[ids == uid]
        cycles = r[:, 1].astype(np.int64)
        if np.any(np.diff(cycles) != 1):
            raise ValueError(f"{path}: unit {uid} cycles are not consecutive")
        units.append(Unit(int(uid), cycles, r[:, 2:5].copy(), r[:, 5:].copy()))
    return units


def load_cmapss(subset: str = "FD001", root: Path | None = None) -> CMAPSS:
    """Load one C-MAPSS subset from ``root`` (default: the packaged gzip copies)."""
    if subset not in SUBSETS:
        raise ValueError(f"subset={subset!r}: expected one of {', '.join(SUBSETS)}")
    root = Path(root) if root is not None else PACKAGED_ROOT
    files, digests, parsed = {}, {}, {}
    for kind in ("train", "test", "RUL"):
        path = _find(root, f"{kind}_{subset}")
        raw = _read_text(path)
        files[kind], digests[kind] = path, hashlib.sha256(raw).hexdigest()
        parsed[kind] = raw
    train = _split_units(_parse_rows(parsed["train"], files["train"]), files["train"])
    test = _split_units(_parse_rows(parsed["test"], files["test"]), files["test"])
    rul = np.loadtxt(parsed["RUL"].decode("ascii").splitlines(), dtype=np.float64, ndmin=1)
    if rul.shape[0] != len(test):
        raise ValueError(
            f"{files['RUL']}: {rul.shape[0]} RUL values for {len(test)} test units"
        )
    return CMAPSS(subset, train, test, rul, files, digests)


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
    units: list[Unit], signals: list[str], window: int, hop: int, rul_cap: float,
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


def split_units(units: list[Unit], validation_fraction: float, seed: int) -> tuple[
    list[Unit], list[Unit]
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
