"""Watermark merge: the readings of several ingest workers, released in timestamp order.

Each worker's own stream arrives in publish order, and every batch it sends
carries its *watermark*: the highest reading timestamp it has passed so far. A
reading is released to the pipeline once its timestamp is at or below the
minimum watermark of the workers that still *bind*; released readings go out
sorted by timestamp. A worker binds while

* its process is alive (a closed pipe unbinds it at once), and
* it is connected to the broker and has sent a batch (or had one waiting in its
  pipe) within ``idle_s`` — an idle worker stops holding the others back, which
  bounds the added latency by ``idle_s`` — or
* it is not connected (still starting, or lost the broker) since less than
  ``connect_wait_s``: its persistent session may hold a backlog that starts
  below everybody's watermark, which is exactly the restart case.

With no binding worker everything held is released. The hold buffer is bounded
by ``hold_max`` readings; above it the oldest readings are released ahead of the
watermark (down to 3/4 of the bound) and counted in ``forced`` — they are never
dropped here, though a straggler behind them may then be dropped as ``late`` by
the window stage. Readings more than ``max_future_skew_s`` ahead of the wall
clock bypass the hold (the pipeline refuses and counts them anyway), so one bad
clock cannot pin a batch, and its acknowledgement, in the buffer.

Acknowledgement: a worker batch may be released in several portions. Each
released batch lists the worker batches it holds portions of (``parts``); the
worker's QoS 1 messages are acknowledged only when the last portion has been
released *and* every portion has been acknowledged by the pipeline (after the
store flush). Readings still held when the agent stops are never acknowledged:
the broker redelivers them, so a partly released batch may be stored twice
(at-least-once, reads deduplicate).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from edge.ingest.batch import DecodedBatch, merge_nonfinite
from edge.ingest.readings import Series


@dataclass
class _Source:
    since: float  # monotonic: process start or last broker disconnect
    connected: bool = False
    alive: bool = True
    last: float = -math.inf  # monotonic: last batch, note or pending pipe data
    watermark: float = -math.inf


@dataclass
class _Held:
    """What is left of one worker batch until the merge releases it."""

    key: tuple[int, int]  # (worker, seq)
    needs_ack: bool
    key_idx: np.ndarray  # indices into the merge's key table
    ts: np.ndarray
    value: np.ndarray
    series: list[Series] = field(default_factory=list)
    min_ts: float = math.inf
    now: bool = False  # release at the next step whatever the watermark (future readings)

    def size(self) -> int:
        return len(self.ts) + sum(len(s.values) for s in self.series)

    def update_min(self) -> None:
        m = float(self.ts.min()) if len(self.ts) else math.inf
        self.min_ts = min([m, *(s.t0 for s in self.series)])


class WatermarkMerge:
    """Holds worker batches and releases their readings in timestamp order (thread-safe)."""

    def __init__(self, n: int, *, idle_s: float, connect_wait_s: float, hold_max: int,
                 max_future_skew_s: float, now: float | None = None) -> None:
        start = time.monotonic() if now is None else now
        self.sources = [_Source(since=start) for _ in range(n)]
        self.idle_s, self.connect_wait_s = idle_s, connect_wait_s
        self.hold_max, self.max_future_skew_s = hold_max, max_future_skew_s
        self.keys: list[tuple[str, str]] = []  # append-only: released batches share it
        self._key_index: dict[tuple[str, str], int] = {}
        self.held: list[_Held] = []
        self.held_n = 0  # readings held (series samples included)
        self.forced = 0  # readings released ahead of the watermark (hold buffer full)
        self._lock = threading.Lock()
        # (worker, seq) -> [released portions not yet acknowledged, chunks still held]
        self._refs: dict[tuple[int, int], list[int]] = {}
        self._parts: list[tuple[int, int]] = []  # portions for the next release
        self._msgs = self._stamped = self._shed = 0
        self._dropped: dict[str, int] = {}
        self._rejects: list[tuple[str, str, str, bytes, float]] = []
        self._nonfinite: dict[tuple[str, str], tuple[int, float]] = {}
        self._letters: list[tuple[str, str, str, bytes, float]] = []

    # -- worker events -------------------------------------------------------------
    def connected(self, worker: int, now: float) -> None:
        with self._lock:
            s = self.sources[worker]
            s.connected, s.last = True, now

    def disconnected(self, worker: int, now: float) -> None:
        with self._lock:
            s = self.sources[worker]
            s.connected, s.since = False, now

    def gone(self, worker: int) -> None:
        with self._lock:
            self.sources[worker].alive = False

    def pending(self, worker: int, now: float) -> None:
        """The worker has data waiting in its pipe: it is not idle."""
        s = self.sources[worker]
        if s.connected:
            s.last = now

    def add(self, b: DecodedBatch, now: float) -> None:
        with self._lock:
            s = self.sources[b.worker]
            s.connected, s.last = True, now
            s.watermark = max(s.watermark, b.watermark)
            self._msgs += b.n_messages
            self._stamped += b.stamped
            self._shed += b.shed
            for r, n in b.dropped.items():
                self._dropped[r] = self._dropped.get(r, 0) + n
            self._rejects.extend(b.rejects)
            merge_nonfinite(self._nonfinite, b.nonfinite)
            self._letters.extend(b.letters)
            key = (b.worker, b.seq)
            if not len(b.ts) and not b.series:
                if b.needs_ack:
                    self._refs[key] = [1, 0]
                    self._parts.append(key)
                return
            lut = np.fromiter((self._key(k) for k in b.keys), np.int32, len(b.keys))
            idx = lut[b.key_idx] if len(b.key_idx) else b.key_idx
            if b.needs_ack:
                self._refs[key] = [0, 0]
            horizon = time.time() + self.max_future_skew_s
            future = b.ts > horizon
            series: list[Series] = []
            ahead_series: list[Series] = []
            for x in b.series:
                ahead = x.t0 + x.dt * (len(x.values) - 1) > horizon
                (ahead_series if ahead else series).append(x)
            if future.any() or ahead_series:
                self._hold(_Held(key, b.needs_ack, idx[future], b.ts[future], b.value[future],
                                 ahead_series, now=True))
                keep = ~future
                idx, ts, value = idx[keep], b.ts[keep], b.value[keep]
            else:
                ts, value = b.ts, b.value
            if len(ts) or series:
                self._hold(_Held(key, b.needs_ack, idx, ts, value, series))

    def _key(self, k: tuple[str, str]) -> int:
        i = self._key_index.get(k)
        if i is None:
            i = self._key_index[k] = len(self.keys)
            self.keys.append(k)
        return i

    def _hold(self, h: _Held) -> None:
        if h.needs_ack:
            self._refs[h.key][1] += 1
        h.update_min()
        self.held.append(h)
        self.held_n += h.size()

    # -- release -------------------------------------------------------------------
    def bound(self, now: float) -> float:
        """The timestamp up to which readings may be released now."""
        lo = math.inf
        for s in self.sources:
            if not s.alive:
                continue
            if s.connected:
                binding = now - s.last < self.idle_s
            else:
                binding = now - s.since < self.connect_wait_s
            if binding and s.watermark < lo:
                lo = s.watermark
        return lo

    def release(self, now: float) -> DecodedBatch | None:
        """Everything releasable now, as one batch for the pipeline (None: nothing)."""
        with self._lock:
            out: _Out = _Out()
            if self.held:
                self._take(self.bound(now), out)
            if self.held_n > self.hold_max:
                before = out.n
                self._take(self._overflow_cutoff(), out)
                self.forced += out.n - before
            if not (out.n or self._parts or self._msgs or self._shed or self._rejects
                    or self._dropped or self._stamped):
                return None
            return self._batch(out)

    def _take(self, bound: float, out: _Out) -> None:
        keep: list[_Held] = []
        for h in self.held:
            if h.min_ts > bound and not h.now:
                keep.append(h)
                continue
            n0 = out.n
            if h.now or float(h.ts.max(initial=-math.inf)) <= bound:
                if len(h.ts):
                    out.add(h.key_idx, h.ts, h.value)
                h.key_idx, h.ts, h.value = h.key_idx[:0], h.ts[:0], h.value[:0]
            elif len(h.ts):
                m = h.ts <= bound
                if m.any():
                    out.add(h.key_idx[m], h.ts[m], h.value[m])
                    rest = ~m
                    h.key_idx, h.ts, h.value = h.key_idx[rest], h.ts[rest], h.value[rest]
            left: list[Series] = []
            for x in h.series:
                k = len(x.values) if h.now or x.dt <= 0 else max(
                    0, min(len(x.values), math.floor((bound - x.t0) / x.dt) + 1))
                if k:
                    out.series.append(Series(x.asset, x.signal, x.t0, x.dt, x.values[:k]))
                    out.n += k
                if k < len(x.values):
                    left.append(Series(x.asset, x.signal, x.t0 + k * x.dt, x.dt, x.values[k:]))
            h.series = left
            released = out.n - n0
            self.held_n -= released
            if h.needs_ack and released:
                self._refs[h.key][0] += 1
                self._parts.append(h.key)
            if len(h.ts) or h.series:
                h.update_min()
                keep.append(h)
            elif h.needs_ack:
                self._refs[h.key][1] -= 1
        self.held = keep

    def _overflow_cutoff(self) -> float:
        """The timestamp at or below which releasing brings the buffer to 3/4 of its bound."""
        parts = [h.ts for h in self.held]
        parts += [x.t0 + x.dt * np.arange(len(x.values)) for h in self.held for x in h.series]
        all_ts = np.concatenate(parts)
        k = min(len(all_ts), self.held_n - self.hold_max * 3 // 4)
        return float(np.partition(all_ts, k - 1)[k - 1])

    def _batch(self, out: _Out) -> DecodedBatch:
        if out.ts:
            ts = np.concatenate(out.ts)
            order = np.argsort(ts, kind="stable")  # the window stage sees time order
            key_idx = np.concatenate(out.key_idx)[order]
            ts, value = ts[order], np.concatenate(out.value)[order]
        else:
            key_idx, ts, value = np.empty(0, np.int32), np.empty(0), np.empty(0)
        out.series.sort(key=lambda x: x.t0)
        parts, self._parts = self._parts, []
        b = DecodedBatch(-1, -1, self._msgs, self.keys, key_idx, ts, value, out.series,
                         self._stamped, self._dropped, self._rejects, self._shed,
                         bool(parts), parts=parts, nonfinite=self._nonfinite,
                         letters=self._letters)
        self._msgs = self._stamped = self._shed = 0
        self._dropped, self._rejects = {}, []
        self._nonfinite, self._letters = {}, []
        return b

    # -- acknowledgement -------------------------------------------------------------
    def acked(self, parts: list[tuple[int, int]]) -> dict[int, list[int]]:
        """Portions now durable; returns the worker batches that may be acked, per worker."""
        tokens: dict[int, list[int]] = {}
        with self._lock:
            for key in parts:
                r = self._refs.get(key)
                if r is None:
                    continue
                r[0] -= 1
                if r[0] <= 0 and not r[1]:
                    del self._refs[key]
                    tokens.setdefault(key[0], []).append(key[1])
        return tokens


class _Out:
    __slots__ = ("key_idx", "n", "series", "ts", "value")

    def __init__(self) -> None:
        self.key_idx: list[np.ndarray] = []
        self.ts: list[np.ndarray] = []
        self.value: list[np.ndarray] = []
        self.series: list[Series] = []
        self.n = 0

    def add(self, key_idx: np.ndarray, ts: np.ndarray, value: np.ndarray) -> None:
        self.key_idx.append(key_idx)
        self.ts.append(ts)
        self.value.append(value)
        self.n += len(ts)
