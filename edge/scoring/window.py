"""Per-asset alignment of readings on the model's sample grid, and ready windows.

Every asset has a linear numpy buffer ``[signals, capacity]``; position ``p``
holds absolute grid slot ``base + p`` where slot ``k`` covers time
``k * sample_period``. A slot is *closed* (final) when all signals have a value
for it and every earlier slot is closed, or when it is more than
``max_lateness_slots`` behind the newest slot seen. Closing applies the gap rule:
a missing value is held from the last reading for at most ``max_hold_samples``
slots, otherwise the slot stays NaN and no window containing it is scored.

Windows end on slots ``first + window - 1 + j * hop`` and are emitted once, when
their last slot closes, so a window can never be scored twice; a reading for an
already closed slot is dropped and counted as ``late``.

>>> a = WindowSet(["x", "y"], period=1.0, window=3, hop=1, max_hold=0, max_lateness=2)
>>> for t in range(4):
...     a.add_point("m1", "x", float(t), float(t))
...     a.add_point("m1", "y", float(t), 10.0 + t)
>>> for w in a.drain():
...     print(w.asset, w.end_ts, w.values.tolist())
m1 2.0 [[0.0, 1.0, 2.0], [10.0, 11.0, 12.0]]
m1 3.0 [[1.0, 2.0, 3.0], [11.0, 12.0, 13.0]]
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class ReadyWindow:
    asset: str
    end_ts: float
    values: np.ndarray  # [signals, window] float32


class _AssetBuffer:
    __slots__ = ("base", "closed", "cnt", "head", "last_slot", "last_val", "next_end", "vals")

    def __init__(self, n_signals: int, capacity: int) -> None:
        # float32: windows go to the model as float32 anyway, and with 1,000 assets x
        # 10 signals the buffers are the agent's largest state (9.6 MB as float64).
        self.vals = np.full((n_signals, capacity), np.nan, dtype=np.float32)
        self.cnt = np.zeros(capacity, dtype=np.int32)
        self.base = 0  # absolute slot of position 0
        self.closed = 0  # positions < closed are final
        self.head = 0  # positions < head have been touched
        self.next_end = -1  # absolute slot of the next window end; -1 until anchored
        self.last_val = np.full(n_signals, np.nan)  # value carried for the hold rule
        self.last_slot = np.full(n_signals, np.iinfo(np.int64).min // 2, dtype=np.int64)


class WindowSet:
    """Window buffers of all assets for one model's grid (signals, period, window, hop)."""

    def __init__(
        self,
        signals: list[str],
        *,
        period: float,
        window: int,
        hop: int,
        max_hold: int,
        max_lateness: int,
        capacity: int | None = None,
    ) -> None:
        self.signals = list(signals)
        self.index = {s: i for i, s in enumerate(self.signals)}
        self.period = float(period)
        self.window = int(window)
        self.hop = int(hop)
        self.max_hold = int(max_hold)
        self.max_lateness = int(max_lateness)
        self.capacity = capacity or max(4 * window, window + 4 * max_lateness + 64)
        self.assets: dict[str, _AssetBuffer] = {}
        self.dropped: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self._ready: list[ReadyWindow] = []

    # -- input ---------------------------------------------------------------
    def add_point(self, asset: str, signal: str, ts: float, value: float) -> None:
        si = self.index.get(signal)
        if si is None:
            self.dropped["unknown_signal"] += 1
            return
        slot = round(ts / self.period)
        buf = self.assets.get(asset)
        if buf is None:
            buf = self.assets[asset] = self._new_buffer(slot)
        pos = slot - buf.base
        if not buf.closed <= pos < self.capacity:
            pos = self._position(asset, buf, slot)
            if pos < 0:
                return
        # .item() and Python ints: numpy scalar indexing costs several times more here.
        vals, cnt = buf.vals, buf.cnt
        if vals.item(si, pos) != vals.item(si, pos):  # NaN: first value for this cell
            n = cnt.item(pos) + 1
            cnt[pos] = n
        else:
            n = cnt.item(pos)
        vals[si, pos] = value
        if pos >= buf.head:
            buf.head = pos + 1
        if pos == buf.closed and n == len(self.signals):
            # Usually the newest slot just completed: nothing after it to scan.
            upto = pos + 1 if buf.head == pos + 1 else self._complete_prefix(buf)
            self._close(asset, buf, upto)
        elif buf.head - buf.closed > self.max_lateness + 1:
            self._close_late(asset, buf, buf.head - self.max_lateness - 1)

    def add_series(self, asset: str, signal: str, t0: float, dt: float,
                   values: np.ndarray) -> None:
        """Evenly spaced samples; written vectorised, in chunks that fit the buffer."""
        si = self.index.get(signal)
        if si is None:
            self.dropped["unknown_signal"] += len(values)
            return
        slots = np.rint((t0 + dt * np.arange(len(values))) / self.period).astype(np.int64)
        values = np.asarray(values, dtype=np.float64)
        have = ~np.isnan(values)
        if not have.all():  # a NaN is a reading that never came, as in the live decoder
            slots, values = slots[have], values[have]
        for lo, hi in self._chunks(slots):
            self._write_chunk(asset, si, slots[lo:hi], values[lo:hi])

    def add_rows(self, asset: str, t0: float, dt: float, values: np.ndarray) -> None:
        """Evenly spaced rows of every signal: ``values[signals, n]`` in ``signals`` order.

        The same windows as one ``add_series`` per signal, written in one pass (the
        offline replay's bulk path; about a third of the per-signal cost for 14
        signals). Steps shorter than a slot fall back to ``add_series``, whose
        per-signal write handles two rows landing in one slot. A NaN is a reading that
        never came (the live decoder drops non-finite values): it fills nothing, and the
        windows and skips are those of ``add_point`` fed every other value in time order.
        """
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[0] != len(self.signals):
            raise ValueError(f"add_rows: values of shape {values.shape}, want "
                             f"[{len(self.signals)} signals, rows]")
        slots = np.rint((t0 + dt * np.arange(values.shape[1])) / self.period).astype(np.int64)
        if len(slots) > 1 and not bool(np.all(np.diff(slots) > 0)):
            for si, sig in enumerate(self.signals):
                self.add_series(asset, sig, t0, dt, values[si])
            return
        nan = np.isnan(values)
        holes = bool(nan.any())
        if holes:
            # A row without a single reading is no reading at all: it must neither start
            # the buffer (the hop phase) nor advance the newest slot (the lateness bound).
            some = ~nan.all(axis=0)
            slots, values = slots[some], values[:, some]
        for lo, hi in self._chunks(slots):
            self._write_chunk(asset, None, slots[lo:hi], values[:, lo:hi], holes)

    def phases(self) -> dict[str, int]:
        """Each asset's window phase: the slot its windows end on, modulo ``hop``."""
        return {a: b.next_end % self.hop for a, b in list(self.assets.items())}

    def anchor(self, asset: str, first_slot: int, phase: int) -> None:
        """Start an asset's buffer at ``first_slot`` with its windows ending on slots
        of ``phase`` (mod ``hop``), as they did before a restart (edge/history/warm.py)."""
        buf = self.assets[asset] = self._new_buffer(first_slot)
        buf.next_end += (phase - buf.next_end) % self.hop

    def reset(self, asset: str) -> None:
        """Forget an asset's buffered data (its source died: never score stale values)."""
        if self.assets.pop(asset, None) is not None:
            self.skipped["reset"] += 1

    # -- output --------------------------------------------------------------
    def drain(self) -> list[ReadyWindow]:
        out, self._ready = self._ready, []
        return out

    def flush_idle(self) -> None:
        """Close what can be closed for every asset (used at shutdown and on idle ticks)."""
        for asset, buf in self.assets.items():
            if buf.head - buf.closed > self.max_lateness + 1:
                self._close_late(asset, buf, buf.head - self.max_lateness - 1)

    # -- internals -----------------------------------------------------------
    def _new_buffer(self, first_slot: int) -> _AssetBuffer:
        buf = _AssetBuffer(len(self.signals), self.capacity)
        buf.base = first_slot
        buf.next_end = first_slot + self.window - 1
        return buf

    def _position(self, asset: str, buf: _AssetBuffer, slot: int) -> int:
        """Buffer position of a slot, compacting or restarting the buffer; -1 if late."""
        pos = slot - buf.base
        if pos < buf.closed:
            self.dropped["late"] += 1
            return -1
        if pos < self.capacity:
            return pos
        if pos - buf.head >= self.capacity - self.window:
            # A jump far ahead (outage or clock step): everything between is a gap.
            self._restart(buf, slot)
            self.skipped["gap_restart"] += 1
            return 0
        # The new slot makes everything older than the lateness bound final.
        upto = min(pos - self.max_lateness, self.capacity)
        if upto > buf.closed:
            buf.head = max(buf.head, upto)
            self._close_late(asset, buf, upto)
        shift = buf.closed - (self.window - 1)  # keep history for the next windows
        if shift < pos - self.capacity + 1:
            self._restart(buf, slot)
            self.skipped["gap_restart"] += 1
            return 0
        self._shift(buf, shift)
        return slot - buf.base

    def _restart(self, buf: _AssetBuffer, slot: int) -> None:
        buf.vals.fill(np.nan)
        buf.cnt.fill(0)
        buf.base, buf.closed, buf.head = slot, 0, 0
        buf.next_end = slot + self.window - 1

    def _shift(self, buf: _AssetBuffer, shift: int) -> None:
        keep = buf.head - shift
        buf.vals[:, :keep] = buf.vals[:, shift:buf.head]
        buf.vals[:, keep:] = np.nan
        buf.cnt[:keep] = buf.cnt[shift:buf.head]
        buf.cnt[keep:] = 0
        buf.base += shift
        buf.closed -= shift
        buf.head = keep

    def _chunks(self, slots: np.ndarray) -> list[tuple[int, int]]:
        """Index ranges of non-decreasing ``slots``, each spanning fewer than half the
        buffer's free slots, so a chunk fits beside the history and the open slots
        (counting by rows instead overflowed the buffer when steps exceed a slot)."""
        n = len(slots)
        if n == 0:
            return []
        span = max(1, (self.capacity - self.window - self.max_lateness) // 2)
        if int(slots[-1] - slots[0]) < span:
            return [(0, n)]
        out, lo = [], 0
        while lo < n:
            hi = int(np.searchsorted(slots, slots[lo] + span, side="left"))
            out.append((lo, hi))
            lo = hi
        return out

    def _complete_prefix(self, buf: _AssetBuffer, lo: int | None = None) -> int:
        lo = buf.closed if lo is None else lo
        seg = buf.cnt[lo:buf.head] < len(self.signals)
        return buf.head if not seg.any() else lo + int(np.argmax(seg))

    def _close_late(self, asset: str, buf: _AssetBuffer, upto: int) -> None:
        """Close [closed, upto) (the lateness bound), and the complete slots right after
        it: they are final, and left open they waited a lateness bound for nothing, or
        were thrown away with the buffer by a gap restart before being scored."""
        self._close(asset, buf, self._complete_prefix(buf, max(upto, buf.closed)))

    def _write_chunk(self, asset: str, si: int | None, slots: np.ndarray,
                     values: np.ndarray, holes: bool = False) -> None:
        """Write one signal's chunk (``si``, no NaN), or every signal's (``si`` None, 2-D
        values, strictly increasing slots; ``holes``: some cells are NaN)."""
        buf = self.assets.get(asset)
        if buf is None:
            buf = self.assets[asset] = self._new_buffer(int(slots[0]))
        late = (slots - buf.base) < buf.closed
        if late.any():
            # Count readings, not rows: a NaN cell of a row is no reading.
            self.dropped["late"] += int((~np.isnan(values[..., late])).sum()) if holes \
                else int(late.sum()) * (1 if si is not None else len(values))
            slots, values = slots[~late], values[..., ~late]
            if len(slots) == 0:
                return
        # Room for the whole chunk: close what its last reading makes final (as reading
        # by reading would), never the slots this very chunk is about to fill, then shift
        # out old history (a chunk spans less than half the buffer).
        self._position(asset, buf, int(slots[0]))
        if slots[-1] - buf.base >= self.capacity:
            upto = min(int(slots[0]), int(slots[-1]) - self.max_lateness) - buf.base
            if upto > buf.closed:
                buf.head = max(buf.head, upto)
                self._close(asset, buf, upto)
            shift = buf.closed - (self.window - 1)
            if shift > 0:
                self._shift(buf, shift)
            if slots[-1] - buf.base >= self.capacity:
                self._restart(buf, int(slots[0]))
                self.skipped["gap_restart"] += 1
        pos = slots - buf.base
        if pos[0] < buf.closed:  # the buffer restarted at the last slot
            keep = pos >= buf.closed
            self.dropped["late"] += int((~np.isnan(values[..., ~keep])).sum()) if holes \
                else int((~keep).sum()) * (1 if si is not None else len(values))
            pos, values = pos[keep], values[..., keep]
        if si is None:
            # Positions are distinct: a plain fancy-index add counts each fresh cell. A NaN
            # cell is no reading: it neither counts nor overwrites one that came.
            old = buf.vals[:, pos]
            if not holes:
                buf.cnt[pos] += np.isnan(old).sum(axis=0, dtype=np.int32)
                buf.vals[:, pos] = values
            else:
                have = ~np.isnan(values)
                buf.cnt[pos] += (np.isnan(old) & have).sum(axis=0, dtype=np.int32)
                buf.vals[:, pos] = np.where(have, values, old)
        else:
            fresh = np.isnan(buf.vals[si, pos])
            buf.vals[si, pos] = values
            np.add.at(buf.cnt, np.unique(pos[fresh]), 1)
        buf.head = max(buf.head, int(pos.max()) + 1)
        self._close_late(asset, buf, buf.head - self.max_lateness - 1)

    def _close(self, asset: str, buf: _AssetBuffer, upto: int) -> None:
        """Finalise positions [closed, upto): apply the hold rule, emit ended windows."""
        lo = buf.closed
        if upto <= lo:
            return
        if upto - lo == 1 and buf.cnt[lo] == len(self.signals) \
                and not np.isnan(buf.vals[:, lo]).any():
            # The common live case: one complete slot closes. No fill needed (a NaN
            # written as a value takes the gap rule below, as it does in a longer close).
            buf.last_slot[:] = buf.base + lo
            buf.last_val[:] = buf.vals[:, lo]
            buf.closed = upto
            self._emit(asset, buf)
            return
        seg = buf.vals[:, lo:upto]
        slots = np.arange(buf.base + lo, buf.base + upto, dtype=np.int64)
        have = ~np.isnan(seg)
        if not have.all():
            # Forward fill with a bounded hold, carrying the last value across calls.
            idx = np.where(have, slots[None, :], np.iinfo(np.int64).min // 2)
            idx = np.maximum(np.maximum.accumulate(idx, axis=1), buf.last_slot[:, None])
            src_val = np.where(have, seg, np.nan)
            pos_of = idx - buf.base
            from_carry = pos_of < lo
            within = (slots[None, :] - idx) <= self.max_hold
            gathered = np.take_along_axis(buf.vals, np.clip(pos_of, 0, None), axis=1)
            filled = np.where(from_carry, buf.last_val[:, None], gathered)
            seg[:] = np.where(have, src_val, np.where(within, filled, np.nan))
        # Carry state for the next close: last real reading per signal.
        any_have = have.any(axis=1)
        if any_have.any():
            last_pos = have.shape[1] - 1 - np.argmax(have[:, ::-1], axis=1)
            rows = np.nonzero(any_have)[0]
            buf.last_slot[rows] = slots[last_pos[rows]]
            buf.last_val[rows] = seg[rows, last_pos[rows]]
        buf.closed = upto
        self._emit(asset, buf)

    def _emit(self, asset: str, buf: _AssetBuffer) -> None:
        last_closed = buf.base + buf.closed - 1
        if buf.next_end > last_closed:
            return
        if buf.next_end == last_closed:  # exactly one window ends: a plain slice
            start = last_closed - buf.base - self.window + 1
            buf.next_end += self.hop
            if start < 0:
                self.skipped["truncated"] += 1
                return
            w = buf.vals[:, start:start + self.window]
            if np.isnan(w).any():
                self.skipped["gap"] += 1
            else:
                self._ready.append(ReadyWindow(asset, last_closed * self.period,
                                               w.astype(np.float32)))
            return
        ends = np.arange(buf.next_end, last_closed + 1, self.hop, dtype=np.int64)
        buf.next_end = int(ends[-1]) + self.hop
        starts = ends - buf.base - self.window + 1
        ok = starts >= 0
        if not ok.all():  # history already shifted out: cannot happen by construction
            self.skipped["truncated"] += int((~ok).sum())
            ends, starts = ends[ok], starts[ok]
        if len(ends) == 0:
            return
        idx = starts[:, None] + np.arange(self.window)[None, :]
        wins = np.transpose(buf.vals[:, idx], (1, 0, 2))  # [n, signals, window]
        bad = np.asarray(np.isnan(wins).any(axis=(1, 2)))
        if bad.any():
            self.skipped["gap"] += int(bad.sum())
        for end, w, b in zip(ends.tolist(), wins.astype(np.float32), bad.tolist(), strict=True):
            if not b:
                self._ready.append(ReadyWindow(asset, end * self.period, w))
