"""OPC UA data-change samples -> reading columns: status, timestamp, type, duplicates.

Pure: the asyncua side (edge/ingest/opcua_link.py) hands over plain Python values,
so this is tested without a server. One :class:`SampleMapper` per server; each
configured node is an index into ``keys`` (its client handle on the server).

A sample is **kept** when its StatusCode is Good, its value is a finite number and
it was not delivered before. Otherwise it is counted, by the reasons the JSON
decoder uses (``bad_type``, ``non_finite``) plus ``opcua_bad_status``, and the
pipeline counts them in ``forewarn_decode_errors_total{reason}``. A boolean is
``bad_type``, as in the JSON decoder: it is a state, not a measurement.

Timestamps: the server's SourceTimestamp (when the value was measured); without it
the ServerTimestamp; without both, the receive time (each fallback counted).

>>> m = SampleMapper([("pump-1", "temp")])
>>> m.update(0, 21.5, 0, 1_700_000_000.0, None, 1_700_000_001.0)
>>> m.update(0, 21.5, 0, 1_700_000_000.0, None, 1_700_000_002.0)   # resent
'duplicate'
>>> m.update(0, 0.0, 0x80000000, 1_700_000_001.0, None, 1_700_000_002.0)
'opcua_bad_status'
>>> m.update(0, True, 0, 1_700_000_002.0, None, 1_700_000_002.0)
'bad_type'
>>> b = m.take()
>>> b.ts.tolist(), b.value.tolist(), b.dropped
([1700000000.0], [21.5], {'opcua_bad_status': 1, 'bad_type': 1})
>>> m.duplicates
1
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import numpy as np

from edge.ingest.batch import DecodedBatch

__all__ = ["DedupeWindow", "SampleMapper", "is_good", "overflowed"]

_SEVERITY = 0xC0000000  # the two top bits: 00 Good, 01 Uncertain, 10 Bad
_INFO_DATAVALUE = 0x00000400  # InfoType bits 10-11 = DataValue: the info bits below apply
_INFO_MASK = 0x00000C00
_OVERFLOW = 0x00000080  # the server's queue for this item overflowed (samples discarded)


def is_good(status: int) -> bool:
    """Good severity (info bits, e.g. overflow, do not make a value bad).

    >>> is_good(0), is_good(0x00000480), is_good(0x408F0000), is_good(0x80000000)
    (True, True, False, False)
    """
    return status & _SEVERITY == 0


def overflowed(status: int) -> bool:
    """The server discarded samples of this item before this one (queue overflow).

    >>> overflowed(0x00000480), overflowed(0)
    (True, False)
    """
    return status & _INFO_MASK == _INFO_DATAVALUE and bool(status & _OVERFLOW)


class DedupeWindow:
    """Per node, the timestamps of its last ``per_node`` delivered samples.

    A sample whose (node, timestamp) is among them is a duplicate: after a reconnect
    a server may resend what was already delivered (the current value of a re-created
    monitored item, a republished notification). Timestamps that go backwards but
    were not seen (a PLC clock set back) are new samples, not duplicates.

    >>> w = DedupeWindow(2)
    >>> w.update(0, 1.0), w.update(0, 1.0), w.update(0, 2.0), w.update(0, 3.0)
    (True, False, True, True)
    >>> w.update(0, 1.0)   # fell out of the window: delivered again
    True
    """

    def __init__(self, per_node: int) -> None:
        if per_node < 1:
            raise ValueError(f"per_node must be >= 1, got {per_node}")
        self.per_node = per_node
        self._order: dict[int, deque[float]] = {}
        self._seen: dict[int, set[float]] = {}

    def update(self, node: int, ts: float) -> bool:
        """True (and remembered) when new; False when already delivered."""
        seen = self._seen.get(node)
        if seen is None:
            seen = self._seen[node] = set()
            self._order[node] = deque()
        if ts in seen:
            return False
        order = self._order[node]
        if len(order) >= self.per_node:
            seen.discard(order.popleft())
        order.append(ts)
        seen.add(ts)
        return True


class SampleMapper:
    """Samples of one server's nodes, collected into the next :class:`DecodedBatch`.

    ``keys[i]`` is the (asset, signal) of the node with client handle ``i``.
    Counters (``duplicates``, ``overflows``, ``server_ts``, ``receipt_ts``) only grow;
    the source exports them as metrics.
    """

    def __init__(self, keys: Sequence[tuple[str, str]], dedupe_per_node: int = 64,
                 origin: str = "") -> None:
        self.keys = list(keys)
        self.origin = origin
        self.dedupe = DedupeWindow(dedupe_per_node)
        self.samples = 0  # every sample seen, kept or not
        self.duplicates = 0
        self.overflows = 0
        self.server_ts = 0  # kept with the ServerTimestamp (no SourceTimestamp)
        self.receipt_ts = 0  # kept with the receive time (neither timestamp)
        self.dropped: dict[str, int] = {}  # since the first sample (the batch has its own)
        self._seq = 0
        self._reset()

    def _reset(self) -> None:
        self._idx: list[int] = []
        self._ts: list[float] = []
        self._val: list[float] = []
        self._dropped: dict[str, int] = {}
        self._nonfinite: dict[tuple[str, str], tuple[int, float]] = {}
        self._stamped = 0
        self._notifications = 0

    def _drop(self, reason: str) -> None:
        self._dropped[reason] = self._dropped.get(reason, 0) + 1
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def update(self, idx: int, value: object, status: int, source_ts: float | None,
               server_ts: float | None, received: float) -> str | None:
        """Take one sample; returns why it was not kept (``duplicate``, a drop reason)."""
        self.samples += 1
        if overflowed(status):
            self.overflows += 1
        ts, stamped = source_ts, 0
        if ts is None:
            ts = server_ts
            if ts is None:
                ts, stamped = received, 1
        # A receive time is new by construction: nothing to compare a resend with.
        if not stamped and not self.dedupe.update(idx, ts):
            self.duplicates += 1
            return "duplicate"
        if not is_good(status):
            self._drop("opcua_bad_status")
            return "opcua_bad_status"
        if type(value) is bool or not isinstance(value, int | float):
            self._drop("bad_type")
            return "bad_type"
        v = float(value)
        if not math.isfinite(v):
            self._drop("non_finite")
            key = self.keys[idx]
            prev = self._nonfinite.get(key)
            self._nonfinite[key] = (1, ts) if prev is None else (prev[0] + 1, max(prev[1], ts))
            return "non_finite"
        if stamped:
            self.receipt_ts += 1
            self._stamped += 1
        elif source_ts is None:
            self.server_ts += 1
        self._idx.append(idx)
        self._ts.append(ts)
        self._val.append(v)
        return None

    def notification(self) -> None:
        """One more notification message in the batch (the pipeline's message count)."""
        self._notifications += 1

    def take(self) -> DecodedBatch | None:
        """The batch collected since the last call, or None when nothing is to be said."""
        if not (self._idx or self._dropped or self._nonfinite):
            self._reset()
            return None
        self._seq += 1
        b = DecodedBatch(
            worker=0, seq=self._seq, n_messages=max(1, self._notifications), keys=self.keys,
            key_idx=np.array(self._idx, np.int32), ts=np.array(self._ts, np.float64),
            value=np.array(self._val, np.float64), stamped=self._stamped,
            dropped=self._dropped, nonfinite=self._nonfinite, origin=self.origin)
        self._reset()
        return b
