"""Cells of a CSV or Parquet table as numbers and times, each bad one named.

The parsing half of :mod:`trainer.tabular`: a message names the file, the CSV
line (the header is line 1) or Parquet row (from 1), and the column.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from edge.core.errors import ConfigError

DELIMITERS = (",", ";", "\t", "|")


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


def _sniff(path: Path, delim: str, decimal: str) -> tuple[str, str, list[str]]:
    """(delimiter, decimal, header) of a CSV file, each detected where it is "auto"."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            head = [f.readline() for _ in range(50)]
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read CSV table ({exc})") from exc
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


def read_csv(path: Path, delimiter: str, decimal: str) -> tuple[pa.Table, str]:
    """Every cell as text, and the decimal character its numbers use."""
    delim, decimal, header = _sniff(path, delimiter, decimal)
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


def numbers(col: pa.ChunkedArray, decimal: str, path: Path, name: str, at: Where
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
