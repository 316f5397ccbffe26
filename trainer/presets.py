"""C-MAPSS and SKAB as presets of the one tabular source.

A preset fills :class:`trainer.tablespec.TableSpec` for a public data set whose
layout is known, so ``dataset = "skab"`` in a config means "this table, read
so". C-MAPSS's preset (space-separated text files without a header: unit,
cycle, three settings, 21 sensors; a training file run to failure, a test file
and its RUL file) is :mod:`trainer.cmapss`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge.core.errors import ConfigError
from trainer.skab import UNITS as SKAB_UNITS
from trainer.skab import find_root
from trainer.tablespec import TableSpec

SKAB_FILE = "anomaly-free/anomaly-free.csv"


@dataclass(frozen=True)
class Source:
    """Where a config's table is and how to read it."""

    spec: TableSpec
    path: Path
    dataset: str       # lineage: "skab", "table"
    lineage_name: str  # lineage file name


def skab(data_root: Path | None) -> Source:
    """SKAB's healthy run: ``;``-separated, ``datetime`` in ISO-8601 (UTC), 8 sensors."""
    if data_root is None:
        raise ConfigError('dataset = "skab" needs --data (a copy of the SKAB data)')
    path = find_root(data_root) / SKAB_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: SKAB anomaly-free run not found")
    spec = TableSpec(path=SKAB_FILE, format="csv", layout="wide", delimiter=";", decimal=".",
                     timestamp="datetime", timestamp_format="iso8601",
                     asset_name="anomaly-free-anomaly-free", units=SKAB_UNITS)
    return Source(spec, path, "skab", "anomaly-free/anomaly-free")


def table(spec: TableSpec, config_dir: Path | None, data_root: Path | None) -> Source:
    """A plant's own table; a relative path is taken from --data, else the config's
    directory."""
    path = Path(spec.path)
    if not path.is_absolute():
        path = (data_root or config_dir or Path.cwd()) / path
    return Source(spec, path, "table", path.name)
