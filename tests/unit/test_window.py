from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, note, settings
from hypothesis import strategies as st

from edge.scoring.window import WindowSet


def make(window: int = 4, hop: int = 1, max_hold: int = 0, lateness: int = 2,
         signals: tuple[str, ...] = ("a", "b"), period: float = 1.0) -> WindowSet:
    return WindowSet(list(signals), period=period, window=window, hop=hop, max_hold=max_hold,
                     max_lateness=lateness)


def feed_in_order(ws: WindowSet, data: np.ndarray, asset: str = "m", t0: int = 100) -> None:
    for t in range(data.shape[1]):
        for i, s in enumerate(ws.signals):
            ws.add_point(asset, s, float(t0 + t), float(data[i, t]))


@given(st.integers(2, 12), st.integers(1, 6), st.integers(0, 60), st.integers(0, 2**31))
@settings(max_examples=60, deadline=None)
def test_in_order_stream_gives_exactly_the_sliding_windows(window: int, hop: int, n: int,
                                                            seed: int) -> None:
    hop = min(hop, window)
    data = np.random.default_rng(seed).normal(size=(2, n)).astype(np.float32)
    ws = make(window=window, hop=hop)
    feed_in_order(ws, data)
    got = ws.drain()
    ends = list(range(window - 1, n, hop))
    assert [w.end_ts for w in got] == [100.0 + e for e in ends]
    for w, e in zip(got, ends, strict=True):
        np.testing.assert_array_equal(w.values, data[:, e - window + 1:e + 1])


def test_long_stream_compacts_buffer_without_losing_windows() -> None:
    data = np.arange(2 * 5000, dtype=np.float32).reshape(2, 5000)
    ws = make(window=8, hop=3)
    feed_in_order(ws, data)
    got = ws.drain()
    assert len(got) == len(range(7, 5000, 3))
    for w in got:
        e = int(w.end_ts) - 100
        np.testing.assert_array_equal(w.values, data[:, e - 7:e + 1])


def test_out_of_order_within_lateness_is_placed_correctly() -> None:
    ws = make(window=3, lateness=3, signals=("a",))
    for t in [0, 2, 1, 3, 4]:
        ws.add_point("m", "a", float(t), float(t) * 10)
    got = ws.drain()
    # slots close once complete and contiguous, so 1 arriving after 2 still lands in place
    assert [w.values.tolist() for w in got] == [[[0, 10, 20]], [[10, 20, 30]], [[20, 30, 40]]]
    assert ws.dropped["late"] == 0


def test_reading_for_a_closed_slot_is_dropped_and_counted() -> None:
    ws = make(window=2, lateness=1, signals=("a",))
    for t in range(5):
        ws.add_point("m", "a", float(t), 1.0)
    n = len(ws.drain())
    ws.add_point("m", "a", 1.0, 99.0)  # clock jumped backwards
    assert ws.dropped["late"] == 1
    assert ws.drain() == []  # nothing is scored twice
    assert n == 4


def test_hold_rule_fills_short_gaps_and_refuses_long_ones() -> None:
    ws = make(window=3, max_hold=1, lateness=0, signals=("a", "b"))
    for t in range(8):
        ws.add_point("m", "a", float(t), float(t))
        if t not in (3, 5, 6):  # b misses one slot (held), then two in a row (gap)
            ws.add_point("m", "b", float(t), -float(t))
    ws.flush_idle()
    got = {w.end_ts: w.values for w in ws.drain()}
    assert got[4.0][1].tolist() == [-2.0, -2.0, -4.0]  # slot 3 held from slot 2
    assert 6.0 not in got and 7.0 not in got  # slot 6 is two slots after b's last value
    assert ws.skipped["gap"] >= 2


def test_complete_slots_behind_a_gap_close_with_it() -> None:
    # b never sends slot 2 (a NaN the decoder took out): once the lateness bound closes
    # slot 2, the complete slots 3.. after it are final too and must not wait one new
    # slot each (they used to lag `lateness` slots behind for as long as the stream ran).
    ws = make(window=2, max_hold=1, lateness=3)
    for t in range(10):
        ws.add_point("m", "a", float(t), float(t))
        if t != 2:
            ws.add_point("m", "b", float(t), -float(t))
    got = {w.end_ts: w.values for w in ws.drain()}
    assert sorted(got) == [float(t) for t in range(1, 10)]  # every window, to the newest
    assert got[3.0][1].tolist() == [-1.0, -3.0]  # slot 2 held from slot 1


def test_jump_far_ahead_restarts_the_buffer_instead_of_bridging() -> None:
    ws = make(window=3, signals=("a",))
    for t in range(5):
        ws.add_point("m", "a", float(t), 1.0)
    ws.drain()
    for t in range(10_000, 10_003):
        ws.add_point("m", "a", float(t), 2.0)
    got = ws.drain()
    assert [w.end_ts for w in got] == [10_002.0]
    assert got[0].values.tolist() == [[2.0, 2.0, 2.0]]
    assert ws.skipped["gap_restart"] == 1


@pytest.mark.parametrize("chunk", [1, 7, 100, 1000])
def test_series_equals_point_by_point(chunk: int) -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(size=3000)
    a = make(window=64, hop=32, signals=("v",), period=0.5)
    b = make(window=64, hop=32, signals=("v",), period=0.5)
    for i, v in enumerate(values):
        a.add_point("m", "v", 50.0 + i * 0.5, float(v))
    for lo in range(0, len(values), chunk):
        b.add_series("m", "v", 50.0 + lo * 0.5, 0.5, values[lo:lo + chunk])
    wa, wb = a.drain(), b.drain()
    assert len(wa) == len(wb) == len(range(63, 3000, 32))
    for x, y in zip(wa, wb, strict=True):
        assert x.end_ts == y.end_ts
        np.testing.assert_array_equal(x.values, y.values)


def test_unknown_signal_is_counted_not_buffered() -> None:
    ws = make()
    ws.add_point("m", "nope", 1.0, 1.0)
    assert ws.dropped["unknown_signal"] == 1
    assert "m" not in ws.assets


def test_reset_discards_stale_data() -> None:
    ws = make(window=3, signals=("a",))
    for t in range(2):
        ws.add_point("m", "a", float(t), 1.0)
    ws.reset("m")
    ws.add_point("m", "a", 2.0, 1.0)
    assert ws.drain() == []  # the window needs three fresh slots after a reset


@settings(max_examples=60, deadline=None)
@given(window=st.integers(2, 8), hop=st.integers(1, 3), hold=st.integers(0, 3),
       lateness=st.integers(1, 40), block=st.integers(1, 50), nan_rate=st.floats(0, 0.3),
       seed=st.integers(0, 2**16))
# Shrunk by hypothesis: the first row (t=17) has no reading at all, so the live path
# starts the buffer at t=18 and add_rows used to start it at t=17 (hop phase, one 'gap').
@example(window=2, hop=2, hold=0, lateness=1, block=1, nan_rate=0.25, seed=55)
@example(window=2, hop=1, hold=0, lateness=1, block=1, nan_rate=0.25, seed=55)
def test_rows_equal_reading_by_reading(window: int, hop: int, hold: int, lateness: int,
                                        block: int, nan_rate: float, seed: int) -> None:
    """add_rows writes all signals at once; windows and skips equal those of the agent's
    live path, every reading through add_point in time order. A NaN in the rows is a
    reading that never came (the live decoder drops non-finite values)."""
    # Spelled out: some pytest/hypothesis combinations print the arguments blank.
    note(f"window={window} hop={hop} hold={hold} lateness={lateness} block={block} "
         f"nan_rate={nan_rate!r} seed={seed}")
    rng = np.random.default_rng(seed)
    n, sigs = 300, ["a", "b", "c"]
    data = rng.normal(size=(len(sigs), n))
    data[rng.random(data.shape) < nan_rate] = np.nan
    empty = np.flatnonzero(np.isnan(data).all(axis=0))
    note(f"rows without any reading: {empty.tolist()}")
    t0 = 17.0
    sets = [WindowSet(sigs, period=1.0, window=window, hop=hop, max_hold=hold,
                      max_lateness=lateness) for _ in range(2)]
    got: list[list[tuple[float, list[list[float]]]]] = [[], []]
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        for i in range(lo, hi):
            for si, s in enumerate(sigs):
                if not np.isnan(data[si, i]):
                    sets[0].add_point("m", s, t0 + i, float(data[si, i]))
        sets[1].add_rows("m", t0 + lo, 1.0, data[:, lo:hi])
        for k in range(2):
            got[k] += [(w.end_ts, w.values.tolist()) for w in sets[k].drain()]
    # A reading of each signal far enough ahead closes the tail the same way for both.
    for k in range(2):
        for s in sigs:
            sets[k].add_point("m", s, t0 + n + lateness + 1, 0.0)
        got[k] += [(w.end_ts, w.values.tolist()) for w in sets[k].drain()]
    assert got[1] == got[0]
    assert sets[1].skipped == sets[0].skipped
    assert not sets[0].dropped and not sets[1].dropped
    assert len(got[0]) > 0 or nan_rate > 0


def test_rows_with_the_wrong_signal_count_are_refused() -> None:
    ws = WindowSet(["a", "b"], period=1.0, window=2, hop=1, max_hold=0, max_lateness=2)
    with pytest.raises(ValueError, match=r"want \[2 signals"):
        ws.add_rows("m", 0.0, 1.0, np.zeros((3, 4)))


def _ends(ws: WindowSet) -> list[float]:
    return [w.end_ts for w in ws.drain()]


def test_rows_start_the_buffer_at_the_first_reading_not_the_first_row() -> None:
    """A leading row with no reading is no reading: the hop phase and the first window
    are those of the live agent, whose buffer starts at its first reading."""
    data = np.array([[np.nan, 1.0, 2.0, 3.0, 4.0, 5.0]])
    rows = WindowSet(["a"], period=1.0, window=2, hop=2, max_hold=0, max_lateness=1)
    live = WindowSet(["a"], period=1.0, window=2, hop=2, max_hold=0, max_lateness=1)
    rows.add_rows("m", 0.0, 1.0, data)
    for t in range(1, 6):
        live.add_point("m", "a", float(t), float(t))
    assert _ends(rows) == _ends(live) == [2.0, 4.0]
    assert rows.skipped == live.skipped == {}
    assert rows.phases() == live.phases() == {"m": 0}


def test_series_nan_is_no_reading_and_never_erases_one() -> None:
    ws = WindowSet(["a", "b"], period=1.0, window=2, hop=1, max_hold=0, max_lateness=5)
    ws.add_point("m", "a", 0.0, 7.0)
    ws.add_point("m", "b", 0.0, 8.0)
    ws.add_series("m", "a", 1.0, 1.0, np.array([np.nan, np.nan]))
    assert ws.assets["m"].head == 1  # trailing NaN does not advance the newest slot
    ws.add_rows("m", 1.0, 1.0, np.array([[1.0, 2.0], [np.nan, 3.0]]))
    ws.add_rows("m", 1.0, 1.0, np.array([[np.nan, np.nan], [5.0, np.nan]]))
    ws.flush_idle()
    ws.add_point("m", "a", 9.0, 0.0)
    ws.add_point("m", "b", 9.0, 0.0)
    got = {w.end_ts: w.values.tolist() for w in ws.drain()}
    assert got[1.0] == [[7.0, 1.0], [8.0, 5.0]]
    assert got[2.0] == [[1.0, 2.0], [5.0, 3.0]]  # the later NaN kept a's 2.0
    assert not ws.dropped


@pytest.mark.parametrize("dt", [2.0, 3.0, 7.0])
@pytest.mark.parametrize("bulk", ["rows", "series"])
def test_steps_longer_than_a_slot_equal_reading_by_reading(dt: float, bulk: str) -> None:
    """Many rows a few slots apart span more than the buffer (this used to raise
    IndexError); same windows and skips as reading by reading."""
    n, sigs = 400, ["a", "b"] if bulk == "rows" else ["a"]
    vals = np.random.default_rng(3).normal(size=(len(sigs), n))
    sets = [WindowSet(sigs, period=1.0, window=4, hop=1, max_hold=3, max_lateness=2)
            for _ in range(2)]
    if bulk == "rows":
        sets[0].add_rows("m", 0.0, dt, vals)
    else:
        sets[0].add_series("m", "a", 0.0, dt, vals[0])
    for i in range(n):
        for si, s in enumerate(sigs):
            sets[1].add_point("m", s, i * dt, float(vals[si, i]))
    got = [[(w.end_ts, w.values.tolist()) for w in ws.drain()] for ws in sets]
    assert got[0] == got[1]
    assert len(got[1]) > n // 2  # the hold of 3 slots bridges the steps in some windows
    assert sets[0].skipped == sets[1].skipped


def test_complete_slots_after_a_late_close_are_scored_before_a_gap_restart() -> None:
    """Found with rows interrupted by a long outage: the lateness bound closed an
    incomplete slot, the complete slots after it stayed open, and the gap restart
    threw them away unscored (add_rows scored them)."""
    ws = WindowSet(["a", "b"], period=1.0, window=2, hop=1, max_hold=0, max_lateness=1)
    for t, sigs in [(0, "ab"), (1, "a"), (2, "ab"), (3, "ab")]:
        for s in sigs:
            ws.add_point("m", s, float(t), float(t))
    assert _ends(ws) == [3.0]  # now, not one reading later
    for t in (1000, 1001):
        for s in "ab":
            ws.add_point("m", s, float(t), float(t))
    assert _ends(ws) == [1001.0]
    assert ws.skipped == {"gap": 2, "gap_restart": 1}  # windows ending on slots 1 and 2
