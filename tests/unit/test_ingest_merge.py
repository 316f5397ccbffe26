"""The watermark merge of several ingest workers: order, idle rule, hold bound, acks."""

from __future__ import annotations

import time

import numpy as np

from edge.ingest.batch import DecodedBatch
from edge.ingest.merge import WatermarkMerge
from edge.ingest.readings import Series

T0 = 1_700_000_000.0


def batch(worker: int, seq: int, ts: list[float], asset: str = "m1",
          series: list[Series] | None = None, ack: bool = True) -> DecodedBatch:
    arr = np.asarray(ts, dtype=float)
    wm = max([*arr.tolist(), *(s.t0 + s.dt * (len(s.values) - 1) for s in series or [])],
             default=float("-inf"))
    return DecodedBatch(worker, seq, max(1, len(ts)), [(asset, f"w{worker}")],
                        np.zeros(len(ts), np.int32), arr, arr - T0, list(series or []),
                        needs_ack=ack, watermark=wm)


def merge(n: int = 2, **kw: float) -> WatermarkMerge:
    args = {"idle_s": 1.0, "connect_wait_s": 10.0, "hold_max": 1_000_000,
            "max_future_skew_s": 300.0, "now": 0.0} | kw
    return WatermarkMerge(n, **args)  # type: ignore[arg-type]


def released_ts(b: DecodedBatch | None) -> list[float]:
    return [] if b is None else [t - T0 for t in b.ts.tolist()]


def test_readings_wait_for_the_slowest_binding_worker_and_leave_in_time_order() -> None:
    m = merge()
    m.connected(0, 0.0)
    m.connected(1, 0.0)
    m.add(batch(0, 0, [T0 + t for t in range(10)]), 0.1)
    assert released_ts(m.release(0.1)) == []  # worker 1 may still hold slot 0
    m.add(batch(1, 0, [T0 + t for t in range(5)]), 0.2)
    out = m.release(0.2)
    assert released_ts(out) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert m.held_n == 5


def test_an_idle_worker_stops_holding_the_others_back() -> None:
    m = merge(idle_s=1.0)
    m.connected(0, 0.0)
    m.connected(1, 0.0)
    m.add(batch(0, 0, [T0, T0 + 1]), 0.5)
    assert released_ts(m.release(0.9)) == []
    assert released_ts(m.release(1.1)) == [0, 1]  # worker 1 silent for 1.1 s > idle_s


def test_a_worker_not_yet_connected_binds_until_the_connect_wait_and_a_dead_one_not_at_all(
        ) -> None:
    m = merge(n=3, connect_wait_s=5.0)
    m.add(batch(0, 0, [T0]), 0.1)
    m.gone(2)
    assert released_ts(m.release(4.0)) == []  # worker 1 is still starting: its backlog
    m.add(batch(0, 1, [T0 + 1]), 4.5)
    assert released_ts(m.release(5.5)) == [0, 1]


def test_a_full_hold_buffer_releases_the_oldest_and_counts_them_never_drops() -> None:
    m = merge(hold_max=100)
    m.connected(0, 0.0)
    m.connected(1, 0.0)
    m.add(batch(0, 0, [T0 + t for t in range(120)]), 0.0)
    out = m.release(0.0)
    got = released_ts(out)
    assert got == list(range(len(got))) and len(got) >= 120 - 75  # oldest first
    assert m.forced == len(got)
    assert m.held_n + len(got) == 120


def test_a_batch_is_acknowledged_once_every_portion_is_released_and_durable() -> None:
    m = merge()
    m.connected(0, 0.0)
    m.connected(1, 0.0)
    m.add(batch(0, 7, [T0, T0 + 5]), 0.0)
    m.add(batch(1, 3, [T0 + 1]), 0.0)
    first = m.release(0.0)
    assert first is not None and released_ts(first) == [0, 1]
    assert sorted(first.parts) == [(0, 7), (1, 3)]
    assert m.acked(first.parts) == {1: [3]}  # worker 0's batch is still half held
    m.add(batch(1, 4, [T0 + 6]), 0.1)
    second = m.release(0.1)
    assert released_ts(second) == [5]
    assert second is not None and m.acked(second.parts) == {0: [7]}


def test_series_are_split_at_the_watermark() -> None:
    m = merge()
    m.connected(0, 0.0)
    m.connected(1, 0.0)
    s = Series("m1", "v", T0, 0.5, np.arange(10.0))  # T0 .. T0 + 4.5
    m.add(batch(0, 0, [], series=[s]), 0.0)
    m.add(batch(1, 0, [T0 + 2]), 0.0)
    out = m.release(0.0)
    assert out is not None and [x.values.tolist() for x in out.series] == [[0, 1, 2, 3, 4]]
    assert m.held_n == 5 + 0  # the rest of the series; worker 1's reading went out
    assert m.held[0].series[0].t0 == T0 + 2.5


def test_readings_from_a_clock_far_ahead_do_not_wait() -> None:
    m = merge(max_future_skew_s=60.0)
    m.connected(0, 0.0)
    m.connected(1, 0.0)
    ahead = time.time() + 3600
    m.add(batch(0, 0, [ahead]), 0.0)
    out = m.release(0.0)
    assert out is not None and out.ts.tolist() == [ahead]  # the pipeline refuses, counts it


def test_messages_are_counted_once_across_batches_that_carry_none() -> None:
    m = merge()
    m.connected(0, 0.0)
    m.connected(1, 0.0)
    counted = 0
    for i in range(5):  # each release the pipeline counts as max(1, n_messages)
        m.add(batch(i % 2, i, [T0 + i, T0 + i + 0.5]), float(i))
        out = m.release(float(i))
        if out is not None:
            counted += max(1, out.n_messages)
    out = m.release(100.0)
    counted += 0 if out is None else max(1, out.n_messages)
    assert counted == 10


def test_non_finite_reports_and_their_dead_letters_survive_the_merge() -> None:
    m = merge()
    m.connected(0, 0.0)
    m.connected(1, 0.0)
    letter = ("forewarn/s1/m1/temp", "non_finite", "no finite number", b"NaN", 5.0)
    for w, n, ts in ((0, 2, T0 + 3), (1, 1, T0 + 7)):
        b = batch(w, 0, [T0 + 1])
        b.nonfinite, b.letters, b.dropped = {("m1", "temp"): (n, ts)}, [letter], {"non_finite": n}
        m.add(b, 0.1)
    out = m.release(0.1)
    assert out is not None
    assert out.nonfinite == {("m1", "temp"): (3, T0 + 7)} and out.letters == [letter, letter]
    res = out.to_result()
    # Counted once (in dropped) and already dead-lettered: the pipeline only raises the alert.
    assert res.nonfinite == {("m1", "temp"): (3, T0 + 7)} and res.lettered
    assert res.dropped == {"non_finite": 3}
    nxt = m.release(0.2)
    assert nxt is None or (not nxt.nonfinite and not nxt.letters)  # not reported twice
