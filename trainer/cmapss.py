"""NASA C-MAPSS as a preset of the one tabular source (:mod:`trainer.tabular`).

A C-MAPSS subset is three text files without a header, cells separated by
spaces: ``train_<subset>.txt`` (every engine run to failure), ``test_<subset>.txt``
(each engine's record stops some cycles before its failure) and
``RUL_<subset>.txt`` (the true remaining cycles after each test engine's last
row, one line per engine). A row is unit, cycle, three operating settings and
21 sensors. The preset is the :class:`~trainer.tablespec.TableSpec` that reads
them: asset column ``unit`` (engine ``n`` is asset ``engine-00n``), no
timestamp (an engine's row ``i`` is at ``i * sample_period_s``), the training
file ``label_kind = "run_to_failure"`` without a label column (each engine's
last row is its failure, from which remaining life is derived), the RUL file a
one-column table. The preset adds one check: an engine's cycles are
consecutive.

The project ships gzip copies of FD001 and FD002 under ``trainer/data/cmapss``
(public domain, see its SOURCE.md); ``--data`` a folder with the original
``.txt`` files (or ``.txt.gz``) gives FD003 and FD004.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from edge.core.errors import ConfigError
from trainer.loaders import Run
from trainer.tablecells import Where, check_labels
from trainer.tablespec import TableSpec
from trainer.tabular import Series, TableData, read_source

PACKAGED_ROOT = Path(__file__).resolve().parent / "data" / "cmapss"
SUBSETS = ("FD001", "FD002", "FD003", "FD004")
SENSOR_NAMES = tuple(f"s{i}" for i in range(1, 22))
SETTING_NAMES = ("op1", "op2", "op3")
COLUMNS = ("unit", "cycle", *SETTING_NAMES, *SENSOR_NAMES)
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
Kind = Literal["train", "test"]


def spec(kind: Kind) -> TableSpec:
    """How a train_ or test_ file reads; the training file's engines run to failure."""
    return TableSpec(format="csv", delimiter="whitespace", decimal=".", columns=list(COLUMNS),
                     timestamp="", asset_column="unit",
                     label_kind="run_to_failure" if kind == "train" else "anomaly",
                     units={s: SENSOR_UNITS.get(s, "") for s in COLUMNS[2:]})


RUL_SPEC = TableSpec(format="csv", delimiter="whitespace", decimal=".", columns=["rul"],
                     timestamp="", asset_name="RUL")


def asset_name(unit: int) -> str:
    return f"engine-{unit:03d}"


def column_index(name: str) -> int:
    """Index of a sensor (s1..s21) or an operating setting (op1..op3, after the sensors)."""
    if name in SETTING_NAMES:
        return len(SENSOR_NAMES) + SETTING_NAMES.index(name)
    try:
        return SENSOR_NAMES.index(name)
    except ValueError:
        raise ValueError(
            f"unknown C-MAPSS signal {name!r}; expected s1..s21 or op1..op3") from None


def find(root: Path | None, subset: str) -> dict[str, Path]:
    """The train, test and RUL file of ``subset`` in ``root`` (default: the shipped copies)."""
    if subset not in SUBSETS:
        raise ValueError(f"subset={subset!r}: expected one of {', '.join(SUBSETS)}")
    root = Path(root) if root is not None else PACKAGED_ROOT
    out = {}
    for kind in ("train", "test", "RUL"):
        stem = f"{kind}_{subset}"
        hit = [p for p in (root / f"{stem}.txt", root / f"{stem}.txt.gz") if p.is_file()]
        if not hit:
            raise FileNotFoundError(f"{root}: neither {stem}.txt nor {stem}.txt.gz found")
        out[kind] = hit[0]
    return out


def read(path: Path, kind: Kind, signals: list[str], period: float
         ) -> tuple[TableData, dict[str, np.ndarray]]:
    """One train_/test_ file through the table source: the named signals of each
    engine (``engine-NNN``), and each engine's cycle numbers."""
    data = read_source(spec(kind), path, ["cycle", *signals], period)
    series, cycles = [], {}
    for s in data.series:
        c = s.values[0]
        jump = np.flatnonzero(np.diff(c) != 1)
        if jump.size:
            j = int(jump[0]) + 1
            raise ConfigError(f"{path}: {data.where(int(s.rows[j]))}, column cycle: unit "
                              f"{s.asset} goes from cycle {c[j - 1]:g} to {c[j]:g} (an "
                              "engine's cycles are consecutive)")
        name = asset_name(int(s.asset))
        series.append(Series(name, s.ts, s.values[1:], s.label, s.rows))
        cycles[name] = c.astype(np.int64)
    return TableData(path, list(signals), series, data.sha256, data.repairs,
                     data.row_word), cycles


def read_rul(path: Path, engines: int) -> tuple[np.ndarray, TableData]:
    """The true remaining cycles of each test engine, in engine order."""
    data = read_source(RUL_SPEC, path, ["rul"], 1.0)
    rul = data.series[0].values[0] if data.series else np.zeros(0)
    check_labels(rul, "rul", "rul", path, Where("line", 1))
    if rul.shape[0] != engines:
        raise ConfigError(f"{path}: {rul.shape[0]} RUL values for {engines} test units")
    return rul, data


def runs(data: TableData) -> list[Run]:
    """Each engine as a run (``.unit``, ``len()``, ``.signals(names)``)."""
    return [Run(s.asset, s.ts, dict(zip(data.signals, s.values, strict=True)))
            for s in data.series]


@dataclass(frozen=True)
class Unit:
    """One engine's record: ``cycles[t]``, ``settings[t, 3]``, ``sensors[t, 21]``."""

    unit: int
    cycles: np.ndarray
    settings: np.ndarray
    sensors: np.ndarray

    def __len__(self) -> int:
        return int(self.cycles.shape[0])

    @property
    def asset(self) -> str:
        return asset_name(self.unit)

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


def _units(data: TableData, cycles: dict[str, np.ndarray]) -> list[Unit]:
    n = len(SETTING_NAMES)
    return [Unit(int(s.asset.removeprefix("engine-")), cycles[s.asset],
                 np.ascontiguousarray(s.values[:n].T), np.ascontiguousarray(s.values[n:].T))
            for s in data.series]


def load_cmapss(subset: str = "FD001", root: Path | None = None) -> CMAPSS:
    """Every engine of one subset from ``root`` (default: the packaged gzip copies)."""
    files = find(root, subset)
    every = [*SETTING_NAMES, *SENSOR_NAMES]
    train = read(files["train"], "train", every, 1.0)
    test = read(files["test"], "test", every, 1.0)
    rul, rul_data = read_rul(files["RUL"], len(test[0].series))
    digests = {"train": train[0].sha256, "test": test[0].sha256, "RUL": rul_data.sha256}
    return CMAPSS(subset, _units(*train), _units(*test), rul, files, digests)
