"""Loader for the Skoltech Anomaly Benchmark (SKAB) files, any copy of the public set.

A SKAB file is ``;``-separated with a header ``datetime;<8 sensors>;anomaly;changepoint``
(one experiment on a water-circulation test bench, ~1 Hz). Folders ``valve1/``,
``valve2/`` and ``other/`` hold labelled experiments; ``anomaly-free/`` holds one long
healthy run. The benchmark's outlier protocol trains on the first
:data:`TRAIN_ROWS` rows of each labelled file and tests on the rest.

Numpy only; column names are taken from the header, so a copy with a different
sensor order still loads. Signal names are made safe for the bundle contract
(``Volume Flow RateRMS`` -> ``Volume_Flow_RateRMS``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

TRAIN_ROWS = 400
LABEL_COLUMNS = ("anomaly", "changepoint")
LABELLED_FOLDERS = ("valve1", "valve2", "other")
UNITS = {
    "Accelerometer1RMS": "g", "Accelerometer2RMS": "g", "Current": "A", "Pressure": "bar",
    "Temperature": "degC", "Thermocouple": "degC", "Voltage": "V",
    "Volume_Flow_RateRMS": "l/min",
}


def safe_name(column: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", column.strip())


@dataclass(frozen=True)
class SkabFile:
    """One experiment: ``ts[t]`` (epoch s), ``values[signals, t]``, labels ``[t]``."""

    name: str  # "<folder>/<stem>", also used as the asset name (with / -> -)
    path: Path
    signals: list[str]
    ts: np.ndarray
    values: np.ndarray
    anomaly: np.ndarray  # int8, 1 inside a labelled anomaly
    changepoint: np.ndarray  # int8
    sha256: str

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    @property
    def asset(self) -> str:
        return self.name.replace("/", "-")

    def select(self, signals: list[str]) -> np.ndarray:
        """The named signals as ``[signals, t]`` float64 (the window layout)."""
        idx = []
        for s in signals:
            if s not in self.signals:
                raise ValueError(f"{self.path}: no signal {s!r}; has {', '.join(self.signals)}")
            idx.append(self.signals.index(s))
        return np.ascontiguousarray(self.values[idx])


def _epoch(text: str, path: Path, line: int) -> float:
    try:
        return datetime.fromisoformat(text.strip()).replace(tzinfo=UTC).timestamp()
    except ValueError as exc:
        raise ValueError(f"{path}:{line}: datetime {text!r} is not 'YYYY-MM-DD hh:mm:ss'") \
            from exc


def load_file(path: Path, name: str | None = None) -> SkabFile:
    """Read one SKAB CSV; errors name the file, line and column at fault."""
    path = Path(path)
    raw = path.read_bytes()
    lines = raw.decode("utf-8-sig").splitlines()
    if not lines:
        raise ValueError(f"{path}: empty file")
    header = [c.strip() for c in lines[0].split(";")]
    if header[0] != "datetime":
        raise ValueError(f"{path}:1: first column is {header[0]!r}, want 'datetime'")
    missing = [c for c in LABEL_COLUMNS if c not in header]
    sensors = [c for c in header[1:] if c not in LABEL_COLUMNS]
    ts, rows = [], []
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split(";")
        if len(cells) != len(header):
            raise ValueError(f"{path}:{i}: {len(cells)} cells, header has {len(header)}")
        ts.append(_epoch(cells[0], path, i))
        try:
            rows.append([float(c) if c.strip() else np.nan for c in cells[1:]])
        except ValueError as exc:
            raise ValueError(f"{path}:{i}: not a number ({exc})") from exc
    table = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(header) - 1)
    col = {c: j for j, c in enumerate(header[1:])}
    zeros = np.zeros(len(rows), dtype=np.int8)

    def label(c: str) -> np.ndarray:
        return zeros if c in missing else np.nan_to_num(table[:, col[c]]).astype(np.int8)

    return SkabFile(
        name=name or path.stem,
        path=path,
        signals=[safe_name(c) for c in sensors],
        ts=np.asarray(ts, dtype=np.float64),
        values=np.ascontiguousarray(table[:, [col[c] for c in sensors]].T),
        anomaly=label("anomaly"),
        changepoint=label("changepoint"),
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def _sort_key(p: Path) -> tuple[str, int, str]:
    stem = p.stem
    return (p.parent.name, int(stem) if stem.isdigit() else 10**9, stem)


def find_root(root: Path) -> Path:
    """Accept the SKAB repository root or its ``data/`` folder."""
    root = Path(root)
    if (root / "data").is_dir() and not any((root / f).is_dir() for f in LABELLED_FOLDERS):
        root = root / "data"
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: SKAB data folder not found")
    return root


def load_labelled(root: Path, folders: tuple[str, ...] = LABELLED_FOLDERS) -> list[SkabFile]:
    """Every labelled experiment under ``root`` (folders that are absent are skipped)."""
    base = find_root(root)
    paths = sorted((p for f in folders if (base / f).is_dir() for p in (base / f).glob("*.csv")),
                   key=_sort_key)
    if not paths:
        raise FileNotFoundError(f"{base}: no labelled SKAB files in {', '.join(folders)}/")
    return [load_file(p, f"{p.parent.name}/{p.stem}") for p in paths]


def load_anomaly_free(root: Path) -> SkabFile:
    base = find_root(root)
    path = base / "anomaly-free" / "anomaly-free.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: SKAB anomaly-free run not found")
    return load_file(path, "anomaly-free/anomaly-free")
