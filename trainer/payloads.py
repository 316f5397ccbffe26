"""A table's rows as MQTT messages in the agent's documented payload formats.

Each asset is a :class:`Stream` (its timestamps and ``[signals, t]`` values).
The messages of all assets come in time order (ties in asset order), as a
plant's gateways would send them, each with the data time it is due at:

``single``
    one message per row on the asset topic ``forewarn/<site>/<asset>``::

        {"ts": 1718000000.0, "values": {"temp": 71.3, "flow": 12.0}}
``signal``
    one reading per message on the signal topic ``forewarn/<site>/<asset>/<signal>``::

        {"ts": 1718000000.0, "value": 71.3}
``batched``
    evenly spaced samples of one signal per message, on the signal topic::

        {"t0": 1718000000.0, "dt": 1.0, "values": [71.3, 71.4, 71.2]}

    a batch ends at a missing value, at a step other than ``dt`` (0.1 % tolerance)
    or after ``batch`` samples, and is due when its last sample is.
``sparkplug``
    Sparkplug B as one edge node ``<node>`` of group ``<group>``
    (``spBv1.0/<group>/<kind>/<node>[/<asset>]``): NBIRTH (``bdSeq``), a DBIRTH per
    asset naming its signals as Double metrics with aliases, one DDATA per row
    (values by alias, the row's time in ms), NDEATH at the end; ``seq`` counts
    0..255 over the node's messages. The agent names such an asset
    ``<node>.<asset>``. A host's Rebirth command (NCMD) is answered with the BIRTHs
    again (:class:`SparkplugNode`).

A missing value (NaN, an empty cell) is not sent; :func:`missing` counts them.
:func:`name_problems` says which names the agent would refuse, before anything
is sent.

>>> s = Stream("p1", np.array([10.0, 11.0]), np.array([[1.5, np.nan], [2.0, 3.0]]))
>>> for m in messages("single", [s], ["a", "b"], site="s1"):
...     print(m.topic, m.payload.decode(), m.readings)
forewarn/s1/p1 {"ts":10.0,"values":{"a":1.5,"b":2.0}} 2
forewarn/s1/p1 {"ts":11.0,"values":{"b":3.0}} 1
>>> [m.payload for m in messages("batched", [s], ["a", "b"], site="s1", period=1.0)]
[b'{"t0":10.0,"dt":1.0,"values":[1.5]}', b'{"t0":10.0,"dt":1.0,"values":[2.0,3.0]}']
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import orjson
from google.protobuf.message import DecodeError as ProtoDecodeError

from edge.core.names import name_problem
from edge.ingest.proto.sparkplug_b_pb2 import Payload
from edge.ingest.sparkplug import NAMESPACE, REBIRTH_METRIC, device_asset

FORMATS = ("single", "signal", "batched", "sparkplug")
DOUBLE, BOOLEAN, UINT64 = 10, 11, 8  # Sparkplug B datatypes
BD_SEQ = 0
# The agent's own output topics (edge.core.config MQTTConfig alerts_topic, events_topic):
# readings of an asset of that name would never reach it.
RESERVED_ASSETS = ("alerts", "events")


@dataclass(frozen=True)
class Stream:
    """One asset's rows in time order: ``values[signals, t]`` at ``ts`` (epoch s)."""

    asset: str
    ts: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    readings: int  # values carried (protocol messages: 0)
    due: float     # data time it is sent at
    asset: str     # "" for the node's own messages
    last: bool = False  # the asset's last message


def missing(streams: list[Stream]) -> int:
    """Values that are not numbers (empty cells): never sent."""
    return sum(int(np.sum(~np.isfinite(s.values))) for s in streams)


def name_problems(fmt: str, streams: list[Stream], signals: list[str], *, site: str,
                  group: str = "", node: str = "") -> list[str]:
    """What the agent would refuse (its name rule, edge.core.names), one line each."""
    out = []
    ids = [("site", site)] if fmt != "sparkplug" else [("group", group), ("node", node)]
    for what, name in [*ids, *(("signal", s) for s in signals),
                       *(("asset", s.asset) for s in streams)]:
        problem = name_problem(name)
        if problem is not None:
            out.append(f"{what} {name!r} {problem}")
    for s in streams:
        if fmt == "sparkplug":
            full = device_asset(node, s.asset)
            if name_problem(full) is not None:
                out.append(f"asset {full!r} (node.asset, as the agent names it) "
                           f"{name_problem(full)}")
        elif s.asset in RESERVED_ASSETS:
            out.append(f"asset {s.asset!r}: forewarn/<site>/{s.asset}/... are the agent's "
                       "own output topics")
    if fmt == "sparkplug" and "." in node:
        out.append(f"node {node!r} contains '.' (it separates node and asset in asset ids)")
    return out


def _timeline(streams: list[Stream]) -> Iterator[tuple[int, int]]:
    """(stream, row) in time order across streams, ties in stream order."""
    if not streams:
        return
    k = np.concatenate([np.full(len(s.ts), i) for i, s in enumerate(streams)])
    j = np.concatenate([np.arange(len(s.ts)) for s in streams])
    t = np.concatenate([s.ts for s in streams])
    order = np.lexsort((k, t))
    yield from zip(k[order].tolist(), j[order].tolist(), strict=True)


def _last_rows(streams: list[Stream]) -> list[int]:
    """Each stream's last row with a value (-1: none)."""
    out = []
    for s in streams:
        hit = np.flatnonzero(np.isfinite(s.values).any(axis=0))
        out.append(int(hit[-1]) if hit.size else -1)
    return out


def _rows(fmt: str, streams: list[Stream], signals: list[str], site: str
          ) -> Iterator[Message]:
    """``single`` and ``signal``: row by row in time order."""
    cols = [s.values.T.tolist() for s in streams]
    stamps = [s.ts.tolist() for s in streams]
    last = _last_rows(streams)
    for k, j in _timeline(streams):
        asset, ts = streams[k].asset, stamps[k][j]
        vals = {n: v for n, v in zip(signals, cols[k][j], strict=True) if math.isfinite(v)}
        if not vals:
            continue
        if fmt == "single":
            yield Message(f"forewarn/{site}/{asset}",
                          orjson.dumps({"ts": ts, "values": vals}), len(vals), ts, asset,
                          j == last[k])
            continue
        names = list(vals)
        for n in names:
            yield Message(f"forewarn/{site}/{asset}/{n}",
                          orjson.dumps({"ts": ts, "value": vals[n]}), 1, ts, asset,
                          j == last[k] and n == names[-1])


def _batches(streams: list[Stream], signals: list[str], site: str, period: float,
             size: int) -> Iterator[Message]:
    plan: list[tuple[float, int, int, int, int]] = []  # due, stream, signal, lo, hi
    for k, s in enumerate(streams):
        step_ok = np.abs(np.diff(s.ts) - period) <= 1e-3 * period
        for i in range(len(signals)):
            ok = np.isfinite(s.values[i])
            # a batch continues from row r-1 to r when both hold values one dt apart
            joined = np.r_[False, step_ok & ok[1:] & ok[:-1]]
            starts = np.flatnonzero(ok & ~joined).tolist()
            ends = (np.flatnonzero(ok & ~np.r_[joined[1:], False]) + 1).tolist()
            for lo, hi in zip(starts, ends, strict=True):
                for a in range(lo, hi, size):
                    b = min(a + size, hi)
                    plan.append((float(s.ts[b - 1]), k, i, a, b))
    plan.sort()
    last = {k: n for n, (_, k, _, _, _) in enumerate(plan)}
    for n, (due, k, i, a, b) in enumerate(plan):
        s = streams[k]
        body = {"t0": float(s.ts[a]), "dt": period, "values": s.values[i, a:b].tolist()}
        yield Message(f"forewarn/{site}/{s.asset}/{signals[i]}", orjson.dumps(body), b - a,
                      due, s.asset, last[k] == n)


class _Node:
    """One Sparkplug edge node's topics and sequence numbers."""

    def __init__(self, group: str, node: str) -> None:
        self.group, self.node, self.seq = group, node, 0

    def topic(self, kind: str, device: str = "") -> str:
        return f"{NAMESPACE}/{self.group}/{kind}/{self.node}" + (f"/{device}" if device else "")

    def payload(self, ts: float, seq: bool = True) -> Payload:
        p = Payload(timestamp=round(ts * 1000))
        if seq:
            p.seq, self.seq = self.seq, (self.seq + 1) % 256
        return p


def death(group: str, node: str) -> tuple[str, bytes]:
    """The NDEATH of the replay's edge node (also its MQTT will)."""
    p = Payload()
    p.metrics.add(name="bdSeq", datatype=UINT64, long_value=BD_SEQ)
    return _Node(group, node).topic("NDEATH"), p.SerializeToString()


class SparkplugNode:
    """The replay as one Sparkplug B edge node: its messages in send order, and its
    BIRTHs again when a host application asks (NCMD ``Node Control/Rebirth``).

    A host that starts after the NBIRTH, restarts, or sees a ``seq`` gap asks for a
    Rebirth and scores nothing of the node until it has one; a real edge node answers
    with NBIRTH (``seq`` 0, the same ``bdSeq``) and every DBIRTH, and so does this.
    """

    def __init__(self, streams: list[Stream], signals: list[str], group: str,
                 node: str) -> None:
        self.streams, self.signals, self.group, self.node = streams, signals, group, node
        self._n = _Node(group, node)
        starts = [float(s.ts[0]) for s in streams if len(s.ts)]
        self._t = min(starts) if starts else 0.0  # data time of the last message made

    @property
    def command_topic(self) -> str:
        """Where a host sends this node its commands (NCMD)."""
        return self._n.topic("NCMD")

    @staticmethod
    def wants_rebirth(payload: bytes) -> bool:
        """Whether an NCMD payload asks for a Rebirth (anything else is ignored)."""
        try:
            p = Payload.FromString(payload)
        except ProtoDecodeError:  # a malformed command asks for nothing
            return False
        return any(m.name == REBIRTH_METRIC and m.boolean_value for m in p.metrics)

    def births(self) -> list[Message]:
        """NBIRTH (``seq`` restarts at 0) and a DBIRTH per asset, stamped with the
        data time reached, so the host's cache and sequence start again."""
        n, t = self._n, self._t
        n.seq = 0
        p = n.payload(t)
        p.metrics.add(name="bdSeq", datatype=UINT64, long_value=BD_SEQ)
        p.metrics.add(name=REBIRTH_METRIC, datatype=BOOLEAN, boolean_value=False)
        out = [Message(n.topic("NBIRTH"), p.SerializeToString(), 0, t, "")]
        for s in self.streams:
            p = n.payload(t)
            for i, name in enumerate(self.signals):  # aliases and types; values as DDATA
                p.metrics.add(name=name, alias=i + 1, datatype=DOUBLE, is_null=True)
            out.append(Message(n.topic("DBIRTH", s.asset), p.SerializeToString(), 0, t, ""))
        return out

    def __iter__(self) -> Iterator[Message]:
        streams, n = self.streams, self._n
        yield from self.births()
        cols = [s.values.T.tolist() for s in streams]
        last = _last_rows(streams)
        for k, j in _timeline(streams):
            s, row = streams[k], cols[k][j]
            good = [(i, v) for i, v in enumerate(row) if math.isfinite(v)]
            if not good:
                continue
            ts = self._t = float(s.ts[j])
            p = n.payload(ts)
            for i, v in good:
                p.metrics.add(alias=i + 1, double_value=v)
            yield Message(n.topic("DDATA", s.asset), p.SerializeToString(), len(good), ts,
                          s.asset, j == last[k])
        end = max((float(s.ts[-1]) for s in streams if len(s.ts)), default=self._t)
        yield Message(*death(self.group, self.node), 0, end, "")


def messages(fmt: str, streams: list[Stream], signals: list[str], *, site: str = "",
             period: float = 1.0, batch: int = 100, group: str = "plant",
             node: str = "replay") -> Iterator[Message]:
    """Every message of a replay in ``fmt`` (one of :data:`FORMATS`), in send order."""
    if fmt in ("single", "signal"):
        return _rows(fmt, streams, signals, site)
    if fmt == "batched":
        return _batches(streams, signals, site, period, batch)
    if fmt == "sparkplug":
        return iter(SparkplugNode(streams, signals, group, node))
    raise ValueError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
