"""The one tabular source on real CSV and Parquet files: layouts, detection, labels,
repairs, and every bad-table case named by file, line/row and column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edge.core.errors import ConfigError
from trainer.tabular import TableSpec, read_source

T0 = 1_700_000_000


def _csv(tmp: Path, text: str, name: str = "plant.csv") -> Path:
    p = tmp / name
    p.write_text(text)
    return p


def test_wide_csv_one_asset_epoch_seconds(tmp_path: Path) -> None:
    p = _csv(tmp_path, f"ts,a,b\n{T0},1.5,2\n{T0 + 1},2.5,\n{T0 + 2},3.5,4\n")
    d = read_source(TableSpec(path=str(p)), p, ["a", "b"], 1.0)
    (s,) = d.series
    assert s.asset == "plant" and s.ts.tolist() == [T0, T0 + 1, T0 + 2]
    assert s.values[0].tolist() == [1.5, 2.5, 3.5] and np.isnan(s.values[1, 1])
    assert d.files[0]["name"] == "plant.csv" and d.repairs == []


def test_semicolon_and_decimal_comma_are_detected(tmp_path: Path) -> None:
    p = _csv(tmp_path, "time;temp C;flow\n2024-03-01 10:00:00;20,5;1,25\n"
                       "2024-03-01 10:00:01;21,0;1,5\n")
    d = read_source(TableSpec(timestamp="time"), p, ["temp_C", "flow"], 1.0)
    s = d.series[0]
    assert s.values.tolist() == [[20.5, 21.0], [1.25, 1.5]]
    assert s.ts[0] == 1709287200.0  # naive ISO-8601 is UTC


def test_delimiter_and_decimal_can_be_set(tmp_path: Path) -> None:
    p = _csv(tmp_path, "ts|x\n0|1,5\n1|2,5\n")
    d = read_source(TableSpec(delimiter="|", decimal=","), p, ["x"], 1.0)
    assert d.series[0].values.tolist() == [[1.5, 2.5]]


@pytest.mark.parametrize(("fmt", "cells", "want"), [
    ("epoch_ms", [f"{T0}000", f"{T0}500"], [T0, T0 + 0.5]),
    ("iso8601", ["2024-03-01T10:00:00+01:00", "2024-03-01T10:00:02+01:00"],
     [1709283600.0, 1709283602.0]),
    ("%d.%m.%Y %H:%M:%S", ["01.03.2024 10:00:00", "01.03.2024 10:00:05"],
     [1709287200.0, 1709287205.0]),
])
def test_timestamp_formats(tmp_path: Path, fmt: str, cells: list[str],
                           want: list[float]) -> None:
    p = _csv(tmp_path, "ts,x\n" + "".join(f"{c},{i}\n" for i, c in enumerate(cells)))
    d = read_source(TableSpec(timestamp_format=fmt), p, ["x"], 1.0)
    assert d.series[0].ts.tolist() == want


def test_row_index_uses_the_sample_period_per_asset(tmp_path: Path) -> None:
    p = _csv(tmp_path, "unit,x\nA,1\nB,5\nA,2\nB,6\nA,3\n")
    d = read_source(TableSpec(timestamp="", asset_column="unit"), p, ["x"], 10.0)
    a, b = d.series
    assert (a.asset, a.ts.tolist(), a.values[0].tolist()) == ("A", [0, 10, 20], [1, 2, 3])
    assert (b.asset, b.ts.tolist(), b.values[0].tolist()) == ("B", [0, 10], [5, 6])


def test_parquet_many_assets_and_anomaly_labels(tmp_path: Path) -> None:
    p = tmp_path / "plant.parquet"
    pq.write_table(pa.table({"ts": [3.0, 1.0, 2.0, 1.0], "asset": ["p1", "p1", "p1", "p2"],
                             "x": [3.0, 1.0, 2.0, 9.0], "fault": [1, 0, 0, 0]}), p)
    d = read_source(TableSpec(label_column="fault"), p, ["x"], 1.0)
    p1, p2 = d.series
    assert p1.ts.tolist() == [1, 2, 3] and p1.label is not None
    assert p1.label.tolist() == [0, 0, 1] and p2.values.tolist() == [[9.0]]
    assert d.repairs == ["asset p1: sorted 3 rows out of time order"]


def test_long_form_export_file_pivots_per_asset(tmp_path: Path) -> None:
    p = tmp_path / "export.parquet"
    pq.write_table(pa.table({"asset": ["m", "m", "m", "m"], "signal": ["a", "b", "a", "a"],
                             "ts": [0.0, 0.0, 1.0, 1.0], "value": [1.0, 2.0, 3.0, 3.0]}), p)
    d = read_source(TableSpec(), p, ["a", "b"], 1.0)
    (s,) = d.series
    assert s.ts.tolist() == [0, 1] and s.values[0].tolist() == [1, 3]
    assert s.values[1, 0] == 2 and np.isnan(s.values[1, 1])
    assert d.repairs == ["asset m: dropped 1 exact duplicate readings"]


def test_exact_duplicates_are_dropped_and_counted(tmp_path: Path) -> None:
    p = _csv(tmp_path, "ts,x\n0,1\n1,2\n1,2\n2,3\n")
    d = read_source(TableSpec(), p, ["x"], 1.0)
    assert d.series[0].values.tolist() == [[1, 2, 3]]
    assert d.repairs == ["asset plant: dropped 1 exact duplicate rows"]


@pytest.mark.parametrize(("text", "spec", "match"), [
    ("ts,x\n0,1\n,2\n", {}, r"plant\.csv: line 3, column ts: missing timestamp"),
    ("ts,x\n0,1\n1,2\n1,5\n", {},
     r"plant\.csv: line 3 and line 4, column ts: asset plant has two rows at the same time"),
    ("ts,x\n0,1\n1,abc\n", {}, r"plant\.csv: line 3, column x: 'abc' is not a number"),
    ("ts;x\n0;1.5\n1;2,5\n", {"decimal": "."},
     r"line 3, column x: '2,5' is not a number \(decimal is ','"),
    ("ts,x,y\n0,1,0\n1,2,3\n", {"label_column": "y"},
     r"plant\.csv: line 3, column y: label 3 is not 0 or 1 \(label_kind = 'anomaly'; 1 such"),
    ("ts,x,y\n0,1,5\n1,2,-1\n", {"label_column": "y", "label_kind": "rul"},
     r"line 3, column y: label -1 is not a remaining life >= 0"),
    ("ts,x\n0,1\nyesterday,2\n", {"timestamp_format": "epoch_s"},
     r"line 3, column ts: 'yesterday' is not epoch seconds"),
    ("ts,x\n2024-01-01,1\n2024-13-01,2\n", {},
     r"line 3, column ts: '2024-13-01' is not an ISO-8601 time"),
    ("ts,x\n0,1\n", {"timestamp": "time"}, r"data\.table\.timestamp → 'time' → no such column"),
    ("ts,x\n0,1\n", {"label_column": "fault"},
     r"data\.table\.label_column → 'fault' → no such column"),
])
def test_bad_tables_name_file_line_and_column(tmp_path: Path, text: str,
                                              spec: dict[str, str], match: str) -> None:
    p = _csv(tmp_path, text)
    with pytest.raises(ConfigError, match=match):
        read_source(TableSpec(**spec), p, ["x"], 1.0)  # type: ignore[arg-type]


def test_missing_signal_column_is_named(tmp_path: Path) -> None:
    p = _csv(tmp_path, "ts,x\n0,1\n")
    with pytest.raises(ConfigError, match=r"data\.signals → \['y'\] → no such column"):
        read_source(TableSpec(), p, ["x", "y"], 1.0)


def test_parquet_errors_name_the_row(tmp_path: Path) -> None:
    p = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"ts": [0.0, None, 2.0], "x": [1.0, 2.0, 3.0]}), p)
    with pytest.raises(ConfigError, match=r"bad\.parquet: row 2, column ts: missing timestamp"):
        read_source(TableSpec(), p, ["x"], 1.0)
    pq.write_table(pa.table({"ts": [0.0, 1.0], "x": ["1", "n/a"]}), p)
    with pytest.raises(ConfigError, match=r"bad\.parquet: row 2, column x: 'n/a' is not a"):
        read_source(TableSpec(), p, ["x"], 1.0)


def test_spec_refuses_bad_keys() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="strftime"):
        TableSpec(timestamp_format="seconds")
    with pytest.raises(ValidationError, match="start must be before end"):
        TableSpec(train=["2024-02-01", "2024-01-01"])
    with pytest.raises(ValidationError, match="one character"):
        TableSpec(delimiter=";;")
