"""Cells of a CSV or Parquet table as numbers and times, each bad one named.

The parsing half of :mod:`trainer.tabular`: a message names the file, the CSV
line (the header is line 1, if there is one) or Parquet row (from 1), and the
column. A text table may be gzip-compressed (``.gz``); it reads as the text it
compresses.
"""

from __future__ import annotations

import gzip
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from edge.core.errors import ConfigError

DELIMITERS = (",", ";", "\t", "|")
WHITESPACE = "whitespace"  # runs of spaces and tabs, as in NASA's C-MAPSS text files


@dataclass(frozen=True)
class Where:
    word: str   # "line" (CSV) or "row" (Parquet)
    first: int  # the number of the first data row

    def __call__(self, i: int) -> str:
        return f"{self.word} {i + self.first}"

    def of(self, row: int) -> str:
        return f"{self.word} {row}"


def read_parquet(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise ConfigError(f"{path}: cannot read Parquet table ({exc})") from exc


def _text(path: Path) -> TextIO:
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig")
    return open(path, encoding="utf-8-sig")


def _lines(path: Path, n: int | None = None) -> list[str]:
    """The first ``n`` lines (all: None) of a text table, decompressed if ``.gz``."""
    try:
        with _text(path) as f:
            return [f.readline() for _ in range(n)] if n else f.read().splitlines()
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise ConfigError(f"{path}: cannot read CSV table ({exc})") from exc


def _sniff(path: Path, delim: str, decimal: str) -> tuple[str, str, list[str]]:
    """(delimiter, decimal, first line's cells) of a CSV file, each detected where it
    is "auto"."""
    head = _lines(path, 50)
    if not head[0].strip():
        raise ConfigError(f"{path}: line 1: empty header")
    if delim == "auto":
        delim = max(DELIMITERS, key=head[0].count)
        if head[0].count(delim) == 0:
            raise ConfigError(f"{path}: line 1: no delimiter ({', '.join(map(repr, DELIMITERS))}"
                              ") in the header; set data.table.delimiter")
    if decimal == "auto":
        comma = re.compile(r"(^|[" + re.escape(delim) + r"])\s*-?\d+,\d+\s*($|["
                           + re.escape(delim) + r"])")
        decimal = "," if delim != "," and any(comma.search(x) for x in head[1:]) else "."
    header = [c.strip() for c in head[0].rstrip("\r\n").split(delim)]
    return delim, decimal, header


def _read_whitespace(path: Path, decimal: str, columns: list[str]) -> tuple[pa.Table, str]:
    """A table whose cells are separated by runs of spaces or tabs (leading and
    trailing ones ignored); every row must have one cell per column."""
    lines = _lines(path)
    while lines and not lines[-1].strip():
        lines.pop()
    first = 0 if columns else 1
    names = columns or (lines[0].split() if lines else [])
    if not names:
        raise ConfigError(f"{path}: line 1: empty header")
    text = []
    for i, line in enumerate(lines[first:], start=first + 1):
        cells = line.split()
        if len(cells) != len(names):
            raise ConfigError(f"{path}: line {i}: {len(cells)} cells, expected {len(names)} "
                              f"({'data.table.columns' if columns else 'the header'}: "
                              f"{' '.join(names)})")
        text.append(" ".join(cells))
    if not text:
        table = pa.table({n: pa.array([], pa.string()) for n in names})
    else:  # one space between cells now: Arrow's CSV reader parses it (no per-cell Python)
        table = _parse(path, "\n".join(text).encode(), " ", names)
    return table, "." if decimal == "auto" else decimal


def read_csv(path: Path, delimiter: str, decimal: str, columns: list[str] | None = None
             ) -> tuple[pa.Table, str]:
    """Every cell as text, and the decimal character its numbers use. ``columns``
    names the columns of a file without a header line."""
    columns = list(columns or [])
    if delimiter == WHITESPACE:
        return _read_whitespace(path, decimal, columns)
    delim, decimal, header = _sniff(path, delimiter, decimal)
    if columns and len(header) != len(columns):
        raise ConfigError(f"{path}: line 1: {len(header)} cells, but data.table.columns "
                          f"names {len(columns)}")
    return _parse(path, path, delim, columns or header, skip=0 if columns else 1), decimal


def _parse(path: Path, source: Path | bytes, delim: str, names: list[str], skip: int = 0
           ) -> pa.Table:
    try:
        # Every column as text: numbers are parsed here, so a bad cell is named.
        return pacsv.read_csv(source if isinstance(source, Path) else pa.BufferReader(source),
                              parse_options=pacsv.ParseOptions(delimiter=delim),
                              read_options=pacsv.ReadOptions(column_names=names,
                                                             skip_rows=skip),
                              convert_options=pacsv.ConvertOptions(
                                  column_types={c: pa.string() for c in names},
                                  strings_can_be_null=True))
    except (OSError, pa.ArrowException) as exc:
        raise ConfigError(f"{path}: cannot read CSV table ({exc})") from exc


def numbers(col: pa.ChunkedArray, decimal: str, path: Path, name: str, at: Where
             ) -> np.ndarray:
    """Float64 cells (empty = NaN); a cell that is not a number names its line/row."""
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        try:
            return np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False),
                              dtype=np.float64)
        except pa.ArrowException as exc:
            raise ConfigError(f"{path}: column {name}: not numeric ({exc})") from exc
    if decimal == ".":
        try:  # the common case at C speed (bit-identical to float()); else cell by cell
            return np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False),
                              dtype=np.float64)
        except pa.ArrowInvalid:
            pass
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


def timestamps(col: pa.ChunkedArray, fmt: str, path: Path, name: str, at: Where
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


def check_labels(label: np.ndarray, name: str, kind: str, path: Path, at: Where) -> None:
    """Every label of its kind, or an error naming the first row that is not."""
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
