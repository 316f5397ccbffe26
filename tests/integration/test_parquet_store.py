"""Parquet history: write-ahead log, compaction into partitions, disk full, retention, export."""

from __future__ import annotations

import argparse
import errno
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edge.core.errors import StorageError
from edge.history import export as export_mod
from edge.history import history_root
from edge.history import wal as wal_mod
from edge.history.history import SCHEMA, read_history
from edge.history.parquet import ParquetStore
from edge.history.retention import enforce, list_partitions
from edge.ingest.readings import Reading, Series

DAY = 86_400.0
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def test_compaction_writes_one_file_per_date_and_asset(tmp_path: Path) -> None:
    st = ParquetStore(tmp_path)
    st.append("pump/1", "temp", [T0, T0 + 3600, T0 + DAY], [1.0, 2.0, 3.0])
    st.append_readings([Reading("fan", "rpm", T0, 10.0),
                        Series("fan", "vib", T0 + 1, 0.5, np.array([7.0, 8.0]))])
    assert st.flush() == 6
    assert not list(tmp_path.rglob("*.parquet"))  # only in the log so far
    st.close()
    assert wal_mod.segments(tmp_path) == []
    files = sorted(p.relative_to(tmp_path).parts[:2] for p in tmp_path.rglob("*.parquet"))
    assert files == [("date=2023-11-14", "asset=fan"), ("date=2023-11-14", "asset=pump%2F1"),
                     ("date=2023-11-15", "asset=pump%2F1")]
    t = st.read(T0 - 1, T0 + 2 * DAY)
    assert t.num_rows == 6
    assert set(t["asset"].to_pylist()) == {"pump/1", "fan"}
    fan = read_history(tmp_path, T0, T0 + 10, ["fan"])
    assert fan["signal"].to_pylist() == ["rpm", "vib", "vib"]
    assert fan["ts"].to_pylist() == [T0, T0 + 1, T0 + 1.5]
    assert st.flush() == 0  # nothing buffered


def test_stray_tmp_removed_and_corrupt_file_reported(tmp_path: Path) -> None:
    st = ParquetStore(tmp_path)
    st.append("a", "s", [T0], [1.0])
    st.close()
    part = next(tmp_path.rglob("*.parquet")).parent
    (part / ".part-x.parquet.tmp").write_bytes(b"half a file")
    st2 = ParquetStore(tmp_path)
    assert st2.removed_tmp == 1 and not list(tmp_path.rglob("*.tmp"))
    (part / "part-9.parquet").write_bytes(b"not parquet")
    with pytest.raises(StorageError, match=r"part-9\.parquet"):
        st2.read(T0 - 1, T0 + 1)


def test_disk_full_pauses_keeps_bounded_buffer_and_resumes(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    st = ParquetStore(tmp_path, max_buffer_rows=100)
    real = wal_mod.write_pieces

    def full(*a: object, **k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(wal_mod, "write_pieces", full)
    st.append("a", "s", T0 + np.arange(60.0), np.arange(60.0))
    with pytest.raises(StorageError, match="No space left"):
        st.flush()
    assert st.paused and st.buffered_rows == 60
    assert not list(tmp_path.rglob("*.tmp"))  # the failed temp file is gone
    st.append("a", "s", T0 + 60 + np.arange(60.0), 60 + np.arange(60.0))
    assert st.buffered_rows == 100 and st.rows_dropped == 20  # oldest dropped, counted
    monkeypatch.setattr(wal_mod, "write_pieces", real)
    assert st.flush() == 100 and not st.paused
    assert st.read(T0, T0 + 200)["value"].to_pylist() == list(np.arange(20.0, 120.0))


def _partition(root: Path, date: str, asset: str, size: int, mtime: float) -> None:
    d = root / f"date={date}" / f"asset={asset}"
    d.mkdir(parents=True)
    f = d / "part-1.parquet"
    f.write_bytes(b"x" * size)
    os.utime(f, (mtime, mtime))


def test_retention_by_age_budget_and_clock_jump(tmp_path: Path) -> None:
    now = T0
    old = now - 40 * DAY
    _partition(tmp_path, "2023-10-01", "a", 100, old)
    _partition(tmp_path, "2023-11-13", "a", 100, now - DAY)
    _partition(tmp_path, "2023-11-14", "a", 100, now - 60)
    _partition(tmp_path, "2023-11-14", "b", 100, now - 60)
    assert enforce(tmp_path, now, 30 * DAY, 10_000) == (1, 100)
    assert not (tmp_path / "date=2023-10-01").exists()
    # over budget: the oldest date goes first
    assert enforce(tmp_path, now, 30 * DAY, 250) == (1, 100)
    assert [p.date for p in list_partitions(tmp_path)] == ["2023-11-14", "2023-11-14"]
    # the wall clock jumps a year ahead: data this process wrote recently is protected
    st = ParquetStore(tmp_path / "h")
    st.append("a", "s", [now], [1.0])
    st.close()
    jumped = time.time() + 365 * DAY
    protect = st.recent_partitions(30 * DAY)
    assert enforce(tmp_path / "h", jumped, 30 * DAY, 10_000, protect) == (0, 0)
    n, freed = enforce(tmp_path / "h", jumped, 30 * DAY, 10_000)  # unprotected: it goes
    assert n == 1 and freed > 0


def test_export_cli_writes_one_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    st = ParquetStore(history_root(state))
    for asset in ("a", "b"):
        st.append(asset, "s", T0 + np.arange(0, 3 * DAY, 3600), np.arange(72.0))
    st.flush()
    parser = argparse.ArgumentParser()
    export_mod.register(parser.add_subparsers())
    out = tmp_path / "x.parquet"
    args = parser.parse_args(["export", "--since", "2023-11-15", "--until", "2023-11-16",
                              "--asset", "a", "--state-dir", str(state), "--out", str(out)])
    assert args.func(args) == 0
    t = pq.read_table(out)
    assert set(t["asset"].to_pylist()) == {"a"}
    assert t.num_rows == 24
    assert min(t["ts"].to_pylist()) >= export_mod.parse_time("2023-11-15")
    assert max(t["ts"].to_pylist()) < export_mod.parse_time("2023-11-16")


def test_one_wal_segment_per_flush_whatever_the_asset_count(tmp_path: Path) -> None:
    st = ParquetStore(tmp_path)
    for flush in range(3):
        for a in range(300):
            st.append(f"m{a}", ["s0", "s1"], [T0 + flush, T0 + flush], [a, -a])
        assert st.flush() == 600
        assert len(wal_mod.segments(tmp_path)) == flush + 1
    assert not list(tmp_path.glob("date=*"))
    assert st.rows_written == 1800


def test_read_sees_rows_still_in_the_wal(tmp_path: Path) -> None:
    st = ParquetStore(tmp_path)
    st.append("a", "s", T0 + np.arange(10.0), np.arange(10.0))
    st.append("b", "s", T0 + np.arange(10.0), -np.arange(10.0))
    st.close()  # compacted: part of the history is in Parquet
    st = ParquetStore(tmp_path)
    st.append("a", "s", T0 + 10 + np.arange(5.0), 10 + np.arange(5.0))
    st.append("a", "s", [T0 + 3], [99.0])  # a redelivered reading: first one wins
    st.flush()
    assert wal_mod.segments(tmp_path)
    t = st.read(T0, T0 + 100, ["a"])
    assert t["value"].to_pylist() == list(np.arange(15.0))
    assert read_history(tmp_path, T0 + 12, T0 + 14)["ts"].to_pylist() == [T0 + 12, T0 + 13]
    assert read_history(tmp_path, T0, T0 + 100).num_rows == 25


def test_crash_before_compaction_is_recovered_once(tmp_path: Path) -> None:
    st = ParquetStore(tmp_path)
    for a in range(20):
        st.append(f"m{a}", "s", T0 + np.arange(0, 2 * DAY, 3600), np.arange(48.0))
    st.flush()
    del st  # "crash": never closed, rows only in the log
    seg = wal_mod.segments(tmp_path)
    assert len(seg) == 1 and not list(tmp_path.rglob("*.parquet"))
    # ... and a crash during a compaction: some rows already in Parquet too, plus a temp file
    dup = tmp_path / "date=2023-11-14" / "asset=m0"
    dup.mkdir(parents=True)
    pq.write_table(wal_mod.read_segment(seg[0], SCHEMA).slice(0, 2),
                   dup / "part-00000000000000000001-x.parquet")
    (tmp_path / "_wal" / ".seg-x.arrow.tmp").write_bytes(b"torn")
    st2 = ParquetStore(tmp_path)
    assert st2.compactions == 1 and st2.removed_tmp == 1
    assert wal_mod.segments(tmp_path) == []
    assert len(list(tmp_path.glob("date=*/asset=*"))) == 60  # 48 h from 22:13 span 3 dates
    t = st2.read(T0 - DAY, T0 + 3 * DAY)
    assert t.num_rows == 20 * 48
    assert sorted(t.filter(pa.compute.equal(t["asset"], "m7"))["value"].to_pylist()) == \
        list(np.arange(48.0))
    assert read_history(tmp_path, T0 - DAY, T0 + 3 * DAY, dedupe=False).num_rows == 20 * 48 + 2


def test_compaction_by_row_count_and_age(tmp_path: Path) -> None:
    st = ParquetStore(tmp_path, wal_max_rows=100, wal_max_age_s=3600)
    st.append("a", "s", T0 + np.arange(60.0), np.arange(60.0))
    st.flush()
    assert st.compactions == 0
    st.append("a", "s", T0 + 60 + np.arange(60.0), np.arange(60.0))
    st.flush()  # 120 rows >= 100
    assert st.compactions == 1 and wal_mod.segments(tmp_path) == []
    st = ParquetStore(tmp_path / "age", wal_max_age_s=0.0)
    st.append("a", "s", [T0], [1.0])
    st.flush()
    assert st.compactions == 1
    assert st.read(T0, T0 + 1)["value"].to_pylist() == [1.0]


def test_retention_ignores_the_wal_and_counts_its_bytes(tmp_path: Path) -> None:
    st = ParquetStore(tmp_path)
    st.append("a", "s", [T0], [1.0])
    st.close()
    st = ParquetStore(tmp_path)
    st.append("a", "s", T0 + 1 + np.arange(1000.0), np.arange(1000.0))
    st.flush()
    assert [p.asset for p in list_partitions(tmp_path)] == ["a"]
    wal_bytes = sum(p.stat().st_size for p in wal_mod.segments(tmp_path))
    part = list_partitions(tmp_path)[0].bytes
    # the partition alone fits; with the log beside it the budget is exceeded
    assert enforce(tmp_path, T0, 30 * DAY, part + wal_bytes) == (0, 0)
    assert enforce(tmp_path, T0, 30 * DAY, part + wal_bytes - 1) == (1, part)
    assert wal_mod.segments(tmp_path)  # the log itself is never deleted by retention


def test_each_segment_names_only_what_its_rows_use_across_a_new_coding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Names are coded once per store, rows hold codes: a segment lists the names its
    rows use, and a flush past the coding's bound starts a fresh coding (rows buffered
    under the old one keep their names)."""
    import edge.history.parquet as parquet_mod
    monkeypatch.setattr(parquet_mod, "MAX_CODED_NAMES", 5)
    st = ParquetStore(tmp_path)
    st.append_readings([Reading("m1", "a", T0, 1.0), Reading("m2", "b", T0, 2.0)])
    st.append("m3", ["a", "c"], [T0 + 1, T0 + 1], [3.0, 4.0])
    st.flush()  # 3 assets + 3 signals coded: the next appends use a new coding
    st.append_readings([Reading("m2", "b", T0 + 2, 5.0),
                        Series("m9", "z", T0 + 3, 1.0, np.array([6.0, 7.0]))])
    st.flush()
    first, second = (wal_mod.read_columns(p) for p in wal_mod.segments(tmp_path))
    assert (first.assets, first.signals) == (["m1", "m2", "m3"], ["a", "b", "c"])
    assert (sorted(second.assets), sorted(second.signals)) == (["m2", "m9"], ["b", "z"])
    t = read_history(tmp_path, T0 - 1, T0 + 10)
    assert sorted(zip(t["asset"].to_pylist(), t["signal"].to_pylist(), t["value"].to_pylist(),
                      strict=True)) == [("m1", "a", 1.0), ("m2", "b", 2.0), ("m2", "b", 5.0),
                                        ("m3", "a", 3.0), ("m3", "c", 4.0), ("m9", "z", 6.0),
                                        ("m9", "z", 7.0)]
    st.close()


def test_a_failed_flush_keeps_rows_of_two_codings_in_one_later_segment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edge.history.parquet as parquet_mod
    monkeypatch.setattr(parquet_mod, "MAX_CODED_NAMES", 1)
    st = ParquetStore(tmp_path)
    st.append_readings([Reading("m1", "a", T0, 1.0)])
    real = st.wal.append

    def full(cols: wal_mod.Columns) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(st.wal, "append", full)
    with pytest.raises(StorageError):
        st.flush()  # the rows go back; the store now codes with a new coding
    st.append_readings([Reading("m2", "a", T0 + 1, 2.0), Reading("m1", "b", T0 + 1, 3.0)])
    monkeypatch.setattr(st.wal, "append", real)
    assert st.flush() == 3
    (seg,) = wal_mod.segments(tmp_path)
    cols = wal_mod.read_columns(seg)
    assert sorted(zip([cols.assets[i] for i in cols.asset], [cols.signals[i] for i in cols.signal],
                      cols.value.tolist(), strict=True)) == [("m1", "a", 1.0), ("m1", "b", 3.0),
                                                              ("m2", "a", 2.0)]
    st.close()


def test_buffer_bound_trims_a_multi_asset_batch_keeping_columns_aligned(tmp_path: Path) -> None:
    st = ParquetStore(tmp_path, max_buffer_rows=4)
    st.append_readings([Reading(f"m{i}", f"s{i}", T0 + i, float(i)) for i in range(6)])
    assert st.buffered_rows == 4 and st.rows_dropped == 2
    st.flush()
    t = st.read(T0, T0 + 10)
    assert list(zip(t["asset"].to_pylist(), t["signal"].to_pylist(), t["value"].to_pylist(),
                    strict=True)) == [(f"m{i}", f"s{i}", float(i)) for i in range(2, 6)]
