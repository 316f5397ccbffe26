"""The one tabular source of every model family: a CSV or Parquet table of a plant's history.

A table has a timestamp column (or none: a plain row index), one column per
signal, perhaps an asset column (one series per asset) and perhaps a label
column. :class:`TableSpec` (``[data.table]`` in a training config) says which
column is which; :func:`read_source` returns one :class:`Series` per asset,
sorted by time. The agent's ``forewarn export`` file (wide Parquet: ``ts``,
``asset``, one column per signal) reads with the defaults.

Bad tables never train on a guess: a missing timestamp, a non-numeric cell, a
label that is not of its kind, or two rows with the same asset and timestamp
but different values is an error naming the file, the line (CSV, the header is
line 1) or row (Parquet, from 1) and the column. Two repairs are safe and are
made, counted and reported: unsorted rows are sorted (stable) and exact
duplicate rows are dropped.

C-MAPSS and SKAB are presets of this source (:mod:`trainer.presets`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from edge.core.errors import ConfigError
from edge.core.strict import Strict
from trainer.loaders import Readings, sha256_path
from trainer.skab import safe_name
from trainer.tablecells import Where, check_labels, numbers, read_csv, read_parquet, timestamps

TS_FORMATS = ("auto", "epoch_s", "epoch_ms", "iso8601", "row_index")
Bound = float | str  # epoch seconds, or an ISO-8601 time


class TableSpec(Strict):
    """Which column of the table is which (``[data.table]``)."""

    path: str = Field("", description="CSV or Parquet file; relative paths are taken from "
                      "--data, else the config file's directory")
    format: Literal["auto", "csv", "parquet"] = Field(
        "auto", description="auto: .parquet/.pq is Parquet, anything else CSV")
    delimiter: str = Field("auto", description='CSV: "auto" (the most frequent of , ; tab | '
                           'in the header line) or the character')
    decimal: Literal["auto", ".", ","] = Field(
        "auto", description='CSV: "auto" ("," when the delimiter is not "," and a cell '
        'reads like 1,5), or the character')
    layout: Literal["auto", "wide", "long"] = Field(
        "auto", description="wide: one column per signal; long: columns ts, asset, signal, "
        "value (the agent's history and `forewarn export` file); auto: long when the table "
        "has signal and value columns")
    timestamp: str = Field("ts", description='timestamp column; "" = none (row index)')
    timestamp_format: str = Field(
        "auto", description="auto (numbers: epoch s; text: ISO-8601; Parquet timestamps as "
        "typed), epoch_s, epoch_ms, iso8601 (no zone = UTC), row_index (row i at i * "
        "sample_period_s), or a strftime pattern such as '%d.%m.%Y %H:%M:%S' (UTC)")
    asset_column: str = Field("", description='one series per value of this column; "" = '
                              'the column "asset" if there is one, else one asset')
    asset_name: str = Field("", description="the single asset's name (default: file stem)")
    label_column: str = Field("", description='"" = no labels')
    label_kind: Literal["anomaly", "rul", "run_to_failure"] = Field(
        "anomaly", description="anomaly: 0 healthy / 1 anomalous; rul: remaining life in "
        "samples; run_to_failure: 1 on the failure row, 0 before it (remaining life derived)")
    train: list[Bound] = Field(default_factory=list, description="[start, end) of the "
                               "training rows (epoch s or ISO-8601); [] = all not below")
    validation: list[Bound] = Field(default_factory=list, description="[start, end) of "
                                    "the validation rows; [] = the family's default split")
    test: list[Bound] = Field(default_factory=list, description="[start, end) of held-out "
                              "test rows; [] = none")
    units: dict[str, str] = Field(default_factory=dict, description="signal -> unit text")

    @field_validator("delimiter")
    @classmethod
    def _delimiter(cls, v: str) -> str:
        if v != "auto" and len(v) != 1:
            raise ValueError(f'{v!r}: "auto" or one character')
        return v

    @field_validator("timestamp_format")
    @classmethod
    def _ts_format(cls, v: str) -> str:
        if v not in TS_FORMATS and "%" not in v:
            raise ValueError(f"{v!r}: one of {', '.join(TS_FORMATS)} or a strftime pattern")
        return v

    @field_validator("train", "validation", "test")
    @classmethod
    def _range(cls, v: list[Bound]) -> list[Bound]:
        if v and len(v) != 2:
            raise ValueError(f"{v!r}: [start, end] or []")
        if v:
            lo, hi = (to_epoch(b) for b in v)
            if not lo < hi:
                raise ValueError(f"{v!r}: start must be before end")
        return v


def to_epoch(b: Bound) -> float:
    if isinstance(b, str):
        try:
            t = datetime.fromisoformat(b.strip())
        except ValueError as exc:
            raise ValueError(f"{b!r} is not an ISO-8601 time") from exc
        return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()
    return float(b)


@dataclass(frozen=True)
class Series:
    """One asset's rows, sorted by time: ``values[signals, t]``, ``label[t]`` or None."""

    asset: str
    ts: np.ndarray
    values: np.ndarray
    label: np.ndarray | None
    rows: np.ndarray  # where each row came from (line or row number, for messages)

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def select(self, lo: float, hi: float) -> Series:
        keep = (self.ts >= lo) & (self.ts < hi)
        return Series(self.asset, self.ts[keep], self.values[:, keep],
                      None if self.label is None else self.label[keep], self.rows[keep])


@dataclass(frozen=True)
class TableData:
    path: Path
    signals: list[str]
    series: list[Series]
    sha256: str
    repairs: list[str] = field(default_factory=list)
    row_word: str = "line"  # Series.rows count CSV lines (header = 1) or Parquet rows

    def where(self, row: int) -> str:
        return f"{self.row_word} {row}"

    @property
    def files(self) -> list[dict[str, str]]:
        return [{"name": self.path.name, "sha256": self.sha256}]

    def readings(self) -> Readings:
        """Long form (the quality report's and the run-to-failure path's input)."""
        a, s, t, v = [], [], [], []
        for ser in self.series:
            for i, name in enumerate(self.signals):
                a.append(np.full(len(ser), ser.asset, dtype=object))
                s.append(np.full(len(ser), name, dtype=object))
                t.append(ser.ts)
                v.append(ser.values[i])
        return Readings(np.concatenate(a), np.concatenate(s), np.concatenate(t),
                        np.concatenate(v), self.files)


def read_source(spec: TableSpec, path: Path, signals: list[str], period: float) -> TableData:
    """Read ``path`` as ``spec`` says; ``signals`` are the columns kept (safe names)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: table not found")
    parquet = spec.format == "parquet" or (
        spec.format == "auto" and path.suffix.lower() in (".parquet", ".pq"))
    # Messages point at a CSV line (header = line 1) or a Parquet row (from 1).
    if parquet:
        table, at = read_parquet(path), Where("row", 1)
        decimal = "."
    else:
        table, decimal = read_csv(path, spec.delimiter, spec.decimal)
        at = Where("line", 2)
    long = spec.layout == "long" or (spec.layout == "auto" and {"signal", "value"} <= set(
        table.column_names))
    if long:
        return _read_long(spec, path, table, signals, decimal, at)
    cols = {safe_name(c): c for c in table.column_names}
    for key, col in (("timestamp", spec.timestamp), ("asset_column", spec.asset_column),
                     ("label_column", spec.label_column)):
        if col and col not in table.column_names:
            raise ConfigError(f"{path}: data.table.{key} → {col!r} → no such column "
                              f"(columns: {table.column_names})")
    missing = [s for s in signals if s not in cols]
    if missing:
        raise ConfigError(f"{path}: data.signals → {missing} → no such column "
                          f"(columns: {table.column_names})")
    n = table.num_rows
    rows = np.arange(n, dtype=np.int64) + at.first
    fmt = spec.timestamp_format
    ts = None if not spec.timestamp or fmt == "row_index" else \
        timestamps(table[spec.timestamp], fmt, path, spec.timestamp, at)
    values = np.stack([numbers(table[cols[s]], decimal, path, cols[s], at) for s in signals])
    label = None
    if spec.label_column:
        label = numbers(table[spec.label_column], decimal, path, spec.label_column, at)
        check_labels(label, spec.label_column, spec.label_kind, path, at)
    a_col = spec.asset_column or ("asset" if "asset" in table.column_names else "")
    if a_col:
        assets = np.asarray(pc.cast(table[a_col], pa.string()).to_pylist(), dtype=object)
        bad = [i for i, a in enumerate(assets) if a is None or not str(a).strip()]
        if bad:
            raise ConfigError(f"{path}: {at(bad[0])}, column {a_col}: empty asset name")
    else:
        assets = np.full(n, spec.asset_name or path.stem, dtype=object)
    repairs: list[str] = []
    out = []
    for a in sorted(set(assets.tolist())):
        mine = np.flatnonzero(assets == a)
        t = np.arange(mine.size, dtype=np.float64) * period if ts is None else ts[mine]
        lab = None if label is None else label[mine]
        out.append(_repair(Series(str(a), t, values[:, mine], lab, rows[mine]), path,
                           spec.timestamp or "row index", at, repairs))
    return TableData(path, list(signals), out, sha256_path(path), repairs, at.word)


def _read_long(spec: TableSpec, path: Path, table: pa.Table, signals: list[str],
               decimal: str, at: Where) -> TableData:
    """Long form (ts, asset, signal, value): one series per asset on the union of its
    timestamps; a signal without a reading at one of them is missing (NaN) there."""
    need = [spec.timestamp or "ts", "signal", "value"]
    missing = [c for c in need if c not in table.column_names]
    if missing or spec.label_column:
        raise ConfigError(f"{path}: long form needs columns {need} and no label column "
                          f"(columns: {table.column_names})")
    ts = timestamps(table[need[0]], spec.timestamp_format, path, need[0], at)
    sig = np.asarray(pc.cast(table["signal"], pa.string()).to_pylist(), dtype=object)
    val = numbers(table["value"], decimal, path, "value", at)
    a_col = spec.asset_column or ("asset" if "asset" in table.column_names else "")
    asset = (np.asarray(pc.cast(table[a_col], pa.string()).to_pylist(), dtype=object)
             if a_col else np.full(table.num_rows, spec.asset_name or path.stem, dtype=object))
    unknown = [x for x in signals if x not in set(sig.tolist())]
    if unknown:
        raise ConfigError(f"{path}: data.signals → {unknown} → no readings of them in column "
                          "signal")
    rows = np.arange(table.num_rows, dtype=np.int64) + at.first
    repairs: list[str] = []
    out = []
    for a in sorted(set(asset.tolist())):
        mine = np.flatnonzero(asset == a)
        uts, inv = np.unique(ts[mine], return_inverse=True)
        values = np.full((len(signals), uts.size), np.nan)
        first_row = np.full(uts.size, np.iinfo(np.int64).max)
        np.minimum.at(first_row, inv, rows[mine])
        dropped = 0
        for k, name in enumerate(signals):
            sel = np.flatnonzero(sig[mine] == name)
            slot, v = inv[sel], val[mine][sel]
            order = np.argsort(slot, kind="stable")
            slot, v, r = slot[order], v[order], rows[mine][sel][order]
            dup = np.flatnonzero(np.diff(slot) == 0) + 1
            clash = dup[(v[dup] != v[dup - 1]) & ~(np.isnan(v[dup]) & np.isnan(v[dup - 1]))]
            if clash.size:
                j = int(clash[0])
                raise ConfigError(
                    f"{path}: {at.of(int(r[j - 1]))} and {at.of(int(r[j]))}, column value: "
                    f"asset {a}, signal {name} has two readings at the same time with "
                    "different values (which one is right cannot be known: remove one)")
            dropped += dup.size
            values[k, slot] = v
        if dropped:
            repairs.append(f"asset {a}: dropped {dropped} exact duplicate readings")
        out.append(Series(str(a), uts, values, None, first_row))
    return TableData(path, list(signals), out, sha256_path(path), repairs, at.word)


def _repair(s: Series, path: Path, ts_name: str, at: Where, repairs: list[str]) -> Series:
    """Sort by time (stable) and drop exact duplicate rows, counted; conflicting
    duplicates are an error."""
    if len(s) > 1 and np.any(np.diff(s.ts) < 0):
        order = np.argsort(s.ts, kind="stable")
        moved = int(np.sum(order != np.arange(len(s))))
        repairs.append(f"asset {s.asset}: sorted {moved} rows out of time order")
        s = Series(s.asset, s.ts[order], s.values[:, order],
                   None if s.label is None else s.label[order], s.rows[order])
    same = np.flatnonzero(np.diff(s.ts) == 0) + 1 if len(s) > 1 else np.zeros(0, np.int64)
    if same.size:
        block = s.values if s.label is None else np.vstack([s.values, s.label])
        a, b = block[:, same - 1], block[:, same]
        equal = np.all((a == b) | (np.isnan(a) & np.isnan(b)), axis=0)
        if not np.all(equal):
            j = int(same[np.flatnonzero(~equal)[0]])
            raise ConfigError(
                f"{path}: {at.of(int(s.rows[j - 1]))} and {at.of(int(s.rows[j]))}, column "
                f"{ts_name}: asset {s.asset} has two rows at the same time with different "
                "values (which one is right cannot be known: remove one)")
        keep = np.ones(len(s), dtype=bool)
        keep[same] = False
        repairs.append(f"asset {s.asset}: dropped {same.size} exact duplicate rows")
        s = Series(s.asset, s.ts[keep], s.values[:, keep],
                   None if s.label is None else s.label[keep], s.rows[keep])
    return s
