"""The one tabular source of every model family: a CSV or Parquet table of a plant's history.

A table has a timestamp column (or none: a plain row index), one column per
signal, perhaps an asset column (one series per asset) and perhaps a label
column. :class:`~trainer.tablespec.TableSpec` (``[data.table]`` in a training
config) says which column is which; :func:`read_source` returns one
:class:`Series` per asset, sorted by time, assets in order (numerically when
every asset name is an integer, as C-MAPSS unit numbers are). The agent's ``forewarn export`` file
(long Parquet: ``ts``, ``asset``, ``signal``, ``value``) reads with the
defaults. A text table may be gzip-compressed; it reads, is named (without
``.gz``) and hashed as the text it compresses.

Bad tables never train on a guess: a missing timestamp, a non-numeric cell, a
label that is not of its kind, or two rows with the same asset and timestamp
but different values is an error naming the file, the line (CSV, the header is
line 1) or row (Parquet, from 1) and the column. Two repairs are safe and are
made, counted and reported: unsorted rows are sorted (stable) and exact
duplicate rows are dropped.

C-MAPSS and SKAB are presets of this source (:mod:`trainer.presets`).
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from edge.core.errors import ConfigError
from trainer.loaders import Readings
from trainer.skab import safe_name
from trainer.tablecells import Where, check_labels, numbers, read_csv, read_parquet, timestamps
from trainer.tablespec import TableSpec


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
        return [{"name": lineage_name(self.path), "sha256": self.sha256}]

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


def lineage_name(path: Path) -> str:
    """A table's name in the lineage: a ``.gz`` file is named as the text it holds."""
    return path.name[:-3] if path.suffix.lower() == ".gz" else path.name


def digest(path: Path) -> str:
    """sha256 of a table file; of the decompressed text for ``.gz``, so a file and its
    gzip copy fingerprint alike."""
    h = hashlib.sha256()
    with (gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _groups(assets: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(asset, its row indices) in asset order: numerically when every name is an
    integer (unit 2 before unit 10), else as text; rows keep their order."""
    names = set(assets.tolist())
    numeric = bool(names) and all(str(n).strip().lstrip("-").isdigit() for n in names)
    order = sorted(names, key=lambda n: (int(n), n)) if numeric else sorted(names)
    code = {a: k for k, a in enumerate(order)}
    codes = np.fromiter((code[a] for a in assets.tolist()), np.int64, len(assets))
    rows = np.argsort(codes, kind="stable")
    cuts = np.searchsorted(codes[rows], np.arange(len(order) + 1))
    return [(str(a), rows[cuts[k]:cuts[k + 1]]) for k, a in enumerate(order)]


def read_source(spec: TableSpec, path: Path, signals: list[str] | None, period: float
                ) -> TableData:
    """Read ``path`` as ``spec`` says; ``signals`` are the columns kept (safe names),
    None = every column but the timestamp, asset and label (long form: every signal)."""
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
        table, decimal = read_csv(path, spec.delimiter, spec.decimal, spec.columns)
        at = Where("line", 1 if spec.columns else 2)
    long = spec.layout == "long" or (spec.layout == "auto" and {"signal", "value"} <= set(
        table.column_names))
    if long:
        return _ends_at_failure(spec, _read_long(spec, path, table, signals, decimal, at))
    cols = {safe_name(c): c for c in table.column_names}
    if signals is None:
        skip = {spec.timestamp, spec.asset_column or "asset", spec.label_column}
        signals = [s for s, c in cols.items() if c not in skip]
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
    assets = _assets(spec, path, table, at)
    repairs: list[str] = []
    out = []
    for a, mine in _groups(assets):
        t = np.arange(mine.size, dtype=np.float64) * period if ts is None else ts[mine]
        lab = None if label is None else label[mine]
        out.append(_repair(Series(str(a), t, values[:, mine], lab, rows[mine]), path,
                           spec.timestamp or "row index", at, repairs))
    return _ends_at_failure(spec, TableData(path, list(signals), out, digest(path), repairs,
                                            at.word))


def _assets(spec: TableSpec, path: Path, table: pa.Table, at: Where) -> np.ndarray:
    """Each row's asset: the asset column (default: "asset", if there is one), else the
    one asset's name; an empty name is an error naming its line or row."""
    a_col = spec.asset_column or ("asset" if "asset" in table.column_names else "")
    if not a_col:
        return np.full(table.num_rows, spec.asset_name or path.stem, dtype=object)
    assets = np.asarray(pc.cast(table[a_col], pa.string()).to_pylist(), dtype=object)
    bad = [i for i, a in enumerate(assets) if a is None or not str(a).strip()]
    if bad:
        raise ConfigError(f"{path}: {at(bad[0])}, column {a_col}: empty asset name")
    return assets


def _ends_at_failure(spec: TableSpec, data: TableData) -> TableData:
    """``run_to_failure`` without a label column: each run's last row (in time) is its
    failure, labelled 1, as a label column would say."""
    if spec.label_kind != "run_to_failure" or spec.label_column:
        return data
    series = [Series(s.asset, s.ts, s.values, (np.arange(len(s)) == len(s) - 1) * 1.0,
                     s.rows) for s in data.series]
    return TableData(data.path, data.signals, series, data.sha256, data.repairs,
                     data.row_word)


def _read_long(spec: TableSpec, path: Path, table: pa.Table, signals: list[str] | None,
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
    asset = _assets(spec, path, table, at)
    if signals is None:
        signals = list(dict.fromkeys(sig.tolist()))
    unknown = [x for x in signals if x not in set(sig.tolist())]
    if unknown:
        raise ConfigError(f"{path}: data.signals → {unknown} → no readings of them in column "
                          "signal")
    rows = np.arange(table.num_rows, dtype=np.int64) + at.first
    repairs: list[str] = []
    out = []
    for a, mine in _groups(asset):
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
    return TableData(path, list(signals), out, digest(path), repairs, at.word)


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
