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


@pytest.mark.parametrize(("text", "spec", "match"), [
    ("ts,x,f\n0,1,0\n1,2,2\n", {"label_column": "f", "label_kind": "run_to_failure"},
     r"plant\.csv: line 3, column f: label 2 is not 0 or 1 \(1 = the failure row\)"),
    ("ts,asset,x\n0,,1\n", {}, r"plant\.csv: line 2, column asset: empty asset name"),
    ("ts,asset,signal,value\n0,m,x,1\n1,,x,2\n", {},
     r"plant\.csv: line 3, column asset: empty asset name"),
    ("ts,x\n01/03/2024,1\n", {"timestamp_format": "%d.%m.%Y"},
     r"line 2, column ts: '01/03/2024' is not a time like '%d\.%m\.%Y'"),
    ("ts x\n0 1\n", {}, r"plant\.csv: line 1: no delimiter .* set data\.table\.delimiter"),
    ("\n0,1\n", {}, r"plant\.csv: line 1: empty header"),
    ("ts x\n0 1\n1 2 3\n", {"delimiter": "whitespace"},
     r"plant\.csv: line 3: 3 cells, expected 2 \(the header: ts x\)"),
    ("0,1,2\n", {"columns": ["ts", "x"]},
     r"plant\.csv: line 1: 3 cells, but data\.table\.columns names 2"),
    ("ts,asset,signal,value,f\n0,m,x,1,0\n", {"label_column": "f"},
     r"long form needs columns \['ts', 'signal', 'value'\] and no label column"),
    ("ts,asset,signal,value\n0,m,x,1\n0,m,x,2\n", {},
     r"plant\.csv: line 2 and line 3, column value: asset m, signal x has two readings at "
     r"the same time with different values"),
])
def test_more_bad_tables_name_file_line_and_column(tmp_path: Path, text: str,
                                                   spec: dict[str, object], match: str) -> None:
    p = _csv(tmp_path, text)
    with pytest.raises(ConfigError, match=match):
        read_source(TableSpec(**spec), p, ["x"], 1.0)  # type: ignore[arg-type]


def test_missing_and_unreadable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.csv: table not found"):
        read_source(TableSpec(), tmp_path / "nope.csv", ["x"], 1.0)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ConfigError, match=r"junk\.parquet: cannot read Parquet table"):
        read_source(TableSpec(), tmp_path / "junk.parquet", ["x"], 1.0)
    (tmp_path / "junk.csv.gz").write_bytes(b"not gzip")
    with pytest.raises(ConfigError, match=r"junk\.csv\.gz: cannot read CSV table"):
        read_source(TableSpec(), tmp_path / "junk.csv.gz", ["x"], 1.0)


def test_headerless_whitespace_gzip_table_reads_as_its_text(tmp_path: Path) -> None:
    import gzip
    import hashlib

    text = "2 1  0.5 \n10 1 7\n2 2  1.5\n10 2 8 \n1 1 -1\n"
    p = tmp_path / "units.txt.gz"
    p.write_bytes(gzip.compress(text.encode()))
    spec = TableSpec(delimiter="whitespace", columns=["unit", "n", "x"], timestamp="",
                     asset_column="unit")
    d = read_source(spec, p, ["x"], 5.0)
    # integer asset names in numeric order; rows numbered from line 1 (no header)
    assert [s.asset for s in d.series] == ["1", "2", "10"]
    assert [s.values[0].tolist() for s in d.series] == [[-1.0], [0.5, 1.5], [7.0, 8.0]]
    assert d.series[1].ts.tolist() == [0.0, 5.0] and d.series[1].rows.tolist() == [1, 3]
    assert d.files == [{"name": "units.txt",
                        "sha256": hashlib.sha256(text.encode()).hexdigest()}]


def test_run_to_failure_without_a_label_column_ends_each_run_at_its_last_row(
        tmp_path: Path) -> None:
    from trainer.sources import failure_times

    p = _csv(tmp_path, "ts,asset,x\n2,a,1\n0,a,1\n1,a,1\n0,b,1\n5,b,2\n")
    spec = TableSpec(label_kind="run_to_failure")
    d = read_source(spec, p, ["x"], 1.0)
    assert [s.label.tolist() for s in d.series if s.label is not None] == [[0, 0, 1], [0, 1]]
    assert failure_times(d, spec, 1.0) == {"a": 2.0, "b": 5.0}


def test_label_kind_errors_of_the_rul_families(tmp_path: Path) -> None:
    from trainer.sources import failure_times

    p = _csv(tmp_path, "ts,asset,x,f\n0,e1,1,0\n1,e1,2,0\n")
    spec = TableSpec(label_column="f", label_kind="run_to_failure")
    with pytest.raises(ConfigError, match=r"column f: asset e1 has no failure row \(label 1\)"):
        failure_times(read_source(spec, p, ["x"], 1.0), spec, 1.0)
    spec = TableSpec(label_column="f")
    with pytest.raises(ConfigError, match=r"label_kind → 'anomaly' → a RUL or failure model "
                                          r'needs label_kind = "rul" or "run_to_failure"'):
        failure_times(read_source(spec, p, ["x"], 1.0), spec, 1.0)


def test_without_signals_every_other_column_is_one(tmp_path: Path) -> None:
    p = _csv(tmp_path, "ts,asset,temp C,flow,fault\n0,m,1,2,0\n")
    d = read_source(TableSpec(label_column="fault"), p, None, 1.0)
    assert d.signals == ["temp_C", "flow"]
    q = tmp_path / "long.parquet"
    pq.write_table(pa.table({"ts": [0.0, 0.0], "asset": ["m", "m"], "signal": ["v", "u"],
                             "value": [1.0, 2.0]}), q)
    assert read_source(TableSpec(), q, None, 1.0).signals == ["v", "u"]
