"""Window warm-up from the write-ahead log (edge/history/warm.py), on real store files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from edge.history import wal
from edge.history.parquet import ParquetStore
from edge.history.warm import load_phases, save_phases, tail_s, warm_windows
from edge.scoring.window import WindowSet

T0 = 1_700_000_000


def grid(hop: int = 1) -> WindowSet:
    return WindowSet(["a", "b"], period=1.0, window=6, hop=hop, max_hold=1, max_lateness=2)


def feed(ws: WindowSet, store: ParquetStore | None, lo: int, hi: int,
         assets: tuple[str, ...] = ("m1", "m2")) -> list[tuple[str, float]]:
    for i in range(lo, hi):
        for asset in assets:
            for sig in ("a", "b"):
                ws.add_point(asset, sig, float(T0 + i), float(i))
                if store is not None:
                    store.append(asset, sig, [float(T0 + i)], [float(i)])
    if store is not None:
        store.flush()
    return [(w.asset, w.end_ts) for w in ws.drain()]


@pytest.mark.parametrize("hop", [1, 4])
def test_a_warmed_window_set_continues_exactly_where_the_stopped_one_was(
        tmp_path: Path, hop: int) -> None:
    whole = grid(hop)
    want = feed(whole, None, 0, 50)
    store = ParquetStore(tmp_path / "history")
    before = grid(hop)
    first = feed(before, store, 0, 23)
    save_phases(tmp_path / "phases.json", before)
    store.close(compact=False)
    after = grid(hop)
    w = warm_windows(tmp_path / "history", after,
                     phases=load_phases(tmp_path / "phases.json", after))
    assert w.assets == 2 and w.segments >= 1 and w.windows_skipped > 0
    assert not after.dropped and not after.skipped  # the replay's counts are not new
    rest = feed(after, None, 23, 50)
    assert sorted(first + rest) == sorted(want)


def test_dead_assets_and_the_state_signal_are_not_warmed(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path / "history")
    store.append("m1", ["a", "b", "mode"], [T0, T0, T0], [1.0, 2.0, 3.0])
    store.append("dead", ["a", "b"], [T0, T0], [1.0, 2.0])
    store.close(compact=False)
    ws = grid()
    w = warm_windows(tmp_path / "history", ws, skip_assets={"dead"}, skip_signals={"mode"})
    assert set(ws.assets) == {"m1"} and w.readings == 2


def test_a_damaged_segment_is_reported_and_the_rest_replayed(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path / "history")
    store.append("m1", ["a", "b"], [T0, T0], [1.0, 2.0])
    store.flush()
    store.append("m2", ["a", "b"], [T0, T0], [1.0, 2.0])
    store.close(compact=False)
    seg = wal.segments(tmp_path / "history")[0]
    seg.write_bytes(seg.read_bytes()[:-3] + b"xyz")
    ws = grid()
    w = warm_windows(tmp_path / "history", ws)
    assert w.unreadable == 1 and len(ws.assets) == 1


def test_compaction_keeps_the_tail_the_warm_up_needs(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path / "history", wal_keep_s=tail_s(grid()) * 2)
    store.append("m1", ["a", "b"], [T0, T0], [1.0, 2.0])
    store.flush()
    (old,) = wal.segments(tmp_path / "history")
    past = time.time() - 3600
    os.utime(old, (past, past))  # written an hour ago (by file age, as after a restart)
    store.close(compact=False)
    # the left-over log is compacted at open: the hour-old segment goes ...
    store = ParquetStore(tmp_path / "history", wal_keep_s=tail_s(grid()) * 2)
    assert wal.segments(tmp_path / "history") == []
    store.append("m1", ["a", "b"], [T0 + 1, T0 + 1], [1.0, 2.0])
    store.flush()
    # ... a young one stays, even when a compaction runs
    assert store.compact() == 0 and len(wal.segments(tmp_path / "history")) == 1
    assert not store.wal.due(1, 0.0, store.wal_keep_s)
    store.close(compact=True)  # a close with compaction takes everything
    assert wal.segments(tmp_path / "history") == []


def test_a_young_segment_left_by_a_crash_stays_for_the_next_warm_up(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path / "history")
    store.append("m1", ["a", "b"], [T0, T0], [1.0, 2.0])
    store.flush()  # no close: as after a SIGKILL
    again = ParquetStore(tmp_path / "history", wal_keep_s=60.0)  # compacts left-overs
    assert len(wal.segments(tmp_path / "history")) == 1  # seconds old: kept
    ws = grid()
    assert warm_windows(tmp_path / "history", ws).readings == 2
    again.close(compact=True)
