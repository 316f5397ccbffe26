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

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from edge.errors import ConfigError
from edge.strict import Strict
from trainer.loaders import Readings, sha256_path

TS_FORMATS = ("auto", "epoch_s", "epoch_ms", "iso8601", "row_index")
DELIMITERS = (",", ";", "\t", "|")
Bound = float | str  # epoch seconds, or an ISO-8601 time


def safe_name(column: str) -> str:
    """A column's name as a signal name (the bundle contract's alphabet)."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", column.strip())


class TableSpec(Strict):
    """Which column of the table is which (``[data.table]``)."""

    path: str = Field("", description="CSV or Parquet file; relative paths are taken from "
                      "--data-root, else the config file's directory")
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
        table, at = _read_parquet(path), _Where("row", 1)
        decimal = "."
    else:
        table, decimal = _read_csv(spec, path)
        at = _Where("line", 2)
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
        _timestamps(table[spec.timestamp], fmt, path, spec.timestamp, at)
    values = np.stack([_numbers(table[cols[s]], decimal, path, cols[s], at) for s in signals])
    label = None
    if spec.label_column:
        label = _numbers(table[spec.label_column], decimal, path, spec.label_column, at)
        _check_labels(label, spec, path, at)
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
               decimal: str, at: _Where) -> TableData:
    """Long form (ts, asset, signal, value): one series per asset on the union of its
    timestamps; a signal without a reading at one of them is missing (NaN) there."""
    need = [spec.timestamp or "ts", "signal", "value"]
    missing = [c for c in need if c not in table.column_names]
    if missing or spec.label_column:
        raise ConfigError(f"{path}: long form needs columns {need} and no label column "
                          f"(columns: {table.column_names})")
    ts = _timestamps(table[need[0]], spec.timestamp_format, path, need[0], at)
    sig = np.asarray(pc.cast(table["signal"], pa.string()).to_pylist(), dtype=object)
    val = _numbers(table["value"], decimal, path, "value", at)
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


@dataclass(frozen=True)
class _Where:
    word: str   # "line" (CSV) or "row" (Parquet)
    first: int  # the number of the first data row

    def __call__(self, i: int) -> str:
        return f"{self.word} {i + self.first}"

    def of(self, row: int) -> str:
        return f"{self.word} {row}"


def _read_parquet(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise ConfigError(f"{path}: cannot read Parquet table ({exc})") from exc


def _sniff(path: Path, spec: TableSpec) -> tuple[str, str, list[str]]:
    """(delimiter, decimal, header) of a CSV file, detected where ``spec`` says auto."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            head = [f.readline() for _ in range(50)]
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read CSV table ({exc})") from exc
    if not head[0].strip():
        raise ConfigError(f"{path}: line 1: empty header")
    delim = spec.delimiter
    if delim == "auto":
        delim = max(DELIMITERS, key=head[0].count)
        if head[0].count(delim) == 0:
            raise ConfigError(f"{path}: line 1: no delimiter ({', '.join(map(repr, DELIMITERS))}"
                              ") in the header; set data.table.delimiter")
    decimal = spec.decimal
    if decimal == "auto":
        comma = re.compile(r"(^|[" + re.escape(delim) + r"])\s*-?\d+,\d+\s*($|["
                           + re.escape(delim) + r"])")
        decimal = "," if delim != "," and any(comma.search(x) for x in head[1:]) else "."
    header = [c.strip() for c in head[0].rstrip("\r\n").split(delim)]
    return delim, decimal, header


def _read_csv(spec: TableSpec, path: Path) -> tuple[pa.Table, str]:
    delim, decimal, header = _sniff(path, spec)
    try:
        # Every column as text: numbers are parsed here, so a bad cell is named.
        t = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=delim),
                           read_options=pacsv.ReadOptions(column_names=header, skip_rows=1),
                           convert_options=pacsv.ConvertOptions(
                               column_types={c: pa.string() for c in header},
                               strings_can_be_null=True))
    except (OSError, pa.ArrowException) as exc:
        raise ConfigError(f"{path}: cannot read CSV table ({exc})") from exc
    return t, decimal


def _numbers(col: pa.ChunkedArray, decimal: str, path: Path, name: str, at: _Where
             ) -> np.ndarray:
    """Float64 cells (empty = NaN); a cell that is not a number names its line/row."""
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        try:
            return np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False),
                              dtype=np.float64)
        except pa.ArrowException as exc:
            raise ConfigError(f"{path}: column {name}: not numeric ({exc})") from exc
    cells = col.to_pylist()
    out = np.empty(len(cells), dtype=np.float64)
    for i, c in enumerate(cells):
        text = "" if c is None else c.strip()
        if not text:
            out[i] = math.nan
            continue
        try:
            out[i] = float(text.replace(",", ".") if decimal == "," else text)
        except ValueError:
            raise ConfigError(f"{path}: {at(i)}, column {name}: {c!r} is not a number"
                              + (" (decimal is ',': set data.table.decimal)"
                                 if decimal == "." and "," in text else "")) from None
    return out


def _timestamps(col: pa.ChunkedArray, fmt: str, path: Path, name: str, at: _Where
                ) -> np.ndarray:
    if col.null_count:
        i = int(np.flatnonzero(np.asarray(col.is_null().to_numpy(zero_copy_only=False)))[0])
        raise ConfigError(f"{path}: {at(i)}, column {name}: missing timestamp")
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        ty = pa.timestamp("us", tz="UTC") if pa.types.is_timestamp(col.type) else \
            pa.timestamp("us")
        us = pc.cast(pc.cast(col, ty), pa.int64())
        return np.asarray(us.to_numpy(zero_copy_only=False), dtype=np.float64) / 1e6
    text = pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
    cells = col.to_pylist()
    out = np.empty(len(cells), dtype=np.float64)
    if fmt == "auto":
        fmt = "epoch_s"
        if text and cells:
            try:
                float(cells[0])
            except ValueError:
                fmt = "iso8601"
    for i, c in enumerate(cells):
        v = c.strip() if isinstance(c, str) else c
        if v == "":
            raise ConfigError(f"{path}: {at(i)}, column {name}: missing timestamp")
        try:
            if fmt in ("epoch_s", "epoch_ms"):
                out[i] = float(v) / (1000.0 if fmt == "epoch_ms" else 1.0)
            elif fmt == "iso8601":
                t = datetime.fromisoformat(str(v))
                out[i] = (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()
            else:
                t = datetime.strptime(str(v), fmt)
                out[i] = (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()
        except ValueError:
            want = {"epoch_s": "epoch seconds", "epoch_ms": "epoch milliseconds",
                    "iso8601": "an ISO-8601 time"}.get(fmt, f"a time like {fmt!r}")
            raise ConfigError(f"{path}: {at(i)}, column {name}: {c!r} is not {want} "
                              "(data.table.timestamp_format)") from None
        if not math.isfinite(out[i]):
            raise ConfigError(f"{path}: {at(i)}, column {name}: {c!r} is not a time")
    return out


def _check_labels(label: np.ndarray, spec: TableSpec, path: Path, at: _Where) -> None:
    name, kind = spec.label_column, spec.label_kind
    if kind == "rul":
        bad = np.flatnonzero(~np.isfinite(label) | (label < 0))
        want = "a remaining life >= 0"
    else:
        bad = np.flatnonzero(~np.isin(label, (0.0, 1.0)))
        want = "0 or 1" + (" (1 = the failure row)" if kind == "run_to_failure" else "")
    if bad.size:
        i = int(bad[0])
        v = "empty" if math.isnan(label[i]) else f"{label[i]:g}"
        raise ConfigError(f"{path}: {at(i)}, column {name}: label {v} is not {want} "
                          f"(label_kind = {kind!r}; {bad.size} such rows)")


def _repair(s: Series, path: Path, ts_name: str, at: _Where, repairs: list[str]) -> Series:
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
