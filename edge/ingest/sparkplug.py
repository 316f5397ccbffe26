"""Sparkplug B (spBv1.0) as a host application: BIRTH cache, aliases, sequence, DEATH.

Topic ``spBv1.0/<group>/<type>/<edge_node>[/<device>]``. The asset is the edge
node id for N* messages (node-level metrics) and ``<edge_node>.<device>`` for D*
messages: a device belongs to the edge node that publishes it, so an edge node
(one broker account, ``deploy/mosquitto/acl``) can never speak for another
node's asset, whatever it calls its devices. Group, edge node and device ids
must follow the name rule of :mod:`edge.core.names`, an edge node id may not contain
``.`` (it separates node and device in asset ids) and the asset id must fit the
64-character limit; else ``bad_name``, counted and dead-lettered. The signal is
the metric name with ``/`` turned into ``.`` and other characters outside
``[A-Za-z0-9_.-]`` into ``_`` ("Sensors/Motor Temp" → "Sensors.Motor_Temp"); a
metric name with a control character or a wildcard is dropped as ``bad_name``.

What a host must get right, and how this module does:

- **BIRTH cache**: NBIRTH/DBIRTH define alias → (name, datatype) per edge node
  and device. The cache is written to ``cache_path`` as JSON (tmp + fsync +
  rename) and reloaded at start, so DATA after an agent restart still resolves.
  Writes are coalesced to one per ``persist_interval_s``; call :meth:`flush` on
  a periodic tick and at shutdown. A BIRTH lost to a crash costs one Rebirth.
- **No guessing**: an alias missing from the cache, or a gap in ``seq`` (0..255
  per edge node, wrapping, across NBIRTH/DBIRTH/NDATA/DDATA/DDEATH), calls
  ``send_rebirth(group, edge_node)`` — rate-limited per node — and rejects the
  message with ``unknown_alias`` / ``seq_gap``. After a gap the sequence resyncs
  on the message that revealed it. The first message after an agent restart
  sets the baseline (sequence numbers are not persisted).
- **Integer types**: Int8/16/32/64 are two's complement of the datatype's width
  (Int32 −12 arrives as ``int_value`` 4294967284 and decodes to −12); UInt*
  are taken as they are. Float/Double must be finite (else ``non_finite``,
  reported with asset and signal in :attr:`DecodeResult.nonfinite`).
- Boolean, String, Text, DateTime, UUID, DataSet, Bytes, File and Template
  metrics, null metrics, and protocol metrics (``bdSeq``, ``Node Control/*``,
  ``Device Control/*``, ``Properties/*``) are skipped and counted in
  :attr:`DecodeResult.skipped`.
- **DEATH**: NDEATH marks the node and all its devices stale, DDEATH the device;
  a later BIRTH clears it (NBIRTH the node, each DBIRTH its device). DATA for a
  stale asset is not turned into readings: its values are dropped and counted
  as ``after_death`` and a Rebirth is requested, so nothing is scored until the
  BIRTH. :meth:`is_stale` and the ``on_stale(asset, stale)`` callback let the
  window stage forget buffered values and the alert manager show the asset as
  stale. An
  NDEATH whose ``bdSeq`` differs from the current NBIRTH's is a late Will of an
  older session and is ignored.
- Timestamps: the metric's (ms) if present, else the payload's, else the receive
  time (counted in ``stamped_on_receipt``). BIRTH values are readings too.
- NCMD/DCMD (including our own Rebirth commands) and STATE are ignored.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
from google.protobuf.message import DecodeError as ProtobufDecodeError

from edge.core.durable import fsync_path
from edge.core.errors import DecodeError
from edge.core.names import is_safe_name, name_problem
from edge.ingest.decode import DecodeResult
from edge.ingest.proto.sparkplug_b_pb2 import Payload
from edge.ingest.ratelog import RateLimitedLog
from edge.ingest.readings import Reading
from edge.ingest.topics import SPARKPLUG_NAMESPACE

NAMESPACE = SPARKPLUG_NAMESPACE
REBIRTH_METRIC = "Node Control/Rebirth"
BOOLEAN = 11
_SIGNED_BITS = {1: 8, 2: 16, 3: 32, 4: 64}  # Int8, Int16, Int32, Int64
_UNSIGNED = frozenset({5, 6, 7, 8})  # UInt8 .. UInt64
_FLOATS = frozenset({9, 10})  # Float, Double
_INT_FIELDS = ("int_value", "long_value")
_FLOAT_FIELDS = ("float_value", "double_value")
_PROTOCOL_PREFIXES = ("Node Control/", "Device Control/", "Properties/")
_DATA_KINDS = frozenset({"NBIRTH", "DBIRTH", "NDATA", "DDATA", "NDEATH", "DDEATH"})
_CACHE_VERSION = 1
_REFUSED_IN_METRIC = re.compile(r"[\x00-\x1f\x7f-\x9f+#]")
log = logging.getLogger(__name__)


@dataclass
class _Table:
    """Aliases and datatypes announced by one BIRTH (an edge node's or a device's)."""

    aliases: dict[int, tuple[str, int]] = field(default_factory=dict)
    types: dict[str, int] = field(default_factory=dict)


@dataclass
class _Node:
    bd_seq: int | None = None
    tables: dict[str, _Table] = field(default_factory=dict)  # "" = the node itself
    seq: int | None = None  # not persisted: a restart re-baselines


def rebirth_command(group: str, edge_node: str, now_ms: int | None = None) -> tuple[str, bytes]:
    """Topic and payload of the NCMD asking an edge node to re-send its BIRTHs."""
    p = Payload(timestamp=now_ms if now_ms is not None else int(time.time() * 1000))
    p.metrics.add(name=REBIRTH_METRIC, datatype=BOOLEAN, boolean_value=True)
    return f"{NAMESPACE}/{group}/NCMD/{edge_node}", p.SerializeToString()


def device_asset(node_id: str, device: str) -> str:
    """The asset id of a Sparkplug device: its edge node's id, '.', its own id."""
    return f"{node_id}.{device}"


def _checked_asset(group: str, node_id: str, device: str) -> str:
    """The message's asset id, or ``bad_name`` naming the id at fault."""
    for what, value in (("group id", group), ("edge node id", node_id),
                        ("device id", device)):
        if what == "device id" and not device:
            break
        problem = name_problem(value)
        if problem is not None:
            raise DecodeError("bad_name", f"{what} {value[:40]!r} {problem}")
    if "." in node_id:
        raise DecodeError("bad_name", f"edge node id {node_id[:40]!r} contains '.' (it "
                                      "separates node and device in asset ids)")
    if not device:
        return node_id
    asset = device_asset(node_id, device)
    if not is_safe_name(asset):
        raise DecodeError("bad_name", f"asset id {asset[:80]!r} {name_problem(asset)}")
    return asset


@lru_cache(maxsize=8192)
def signal_name(metric: str) -> str | None:
    """The signal name for a metric name, or None when it cannot be made safe.

    Spaces and punctuation are common in Sparkplug metric names and are mapped;
    a control character or an MQTT wildcard is not a spelling, so it is refused.
    """
    if _REFUSED_IN_METRIC.search(metric):
        return None
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", metric.replace("/", "."))
    return name if is_safe_name(name) else None


class SparkplugDecoder:
    def __init__(self, cache_path: Path, send_rebirth: Callable[[str, str], None], *,
                 on_stale: Callable[[str, bool], None] | None = None,
                 max_bytes: int = 1_048_576, rebirth_interval_s: float = 10.0,
                 persist_interval_s: float = 1.0, max_nodes: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cache_path = Path(cache_path)
        self._send_rebirth = send_rebirth
        self._on_stale = on_stale
        self.max_bytes = max_bytes
        self.rebirth_interval_s = rebirth_interval_s
        self.persist_interval_s = persist_interval_s
        self.max_nodes = max_nodes
        self._clock = clock
        self._nodes: dict[tuple[str, str], _Node] = {}
        self._stale: set[str] = set()
        self._last_rebirth: dict[tuple[str, str], float] = {}
        self._dirty = False
        self._last_persist = -float("inf")
        self._log = RateLimitedLog(log, 60.0, clock=clock)
        self.rebirths_requested = 0
        self.persist_errors = 0
        self._load()

    # -- public -----------------------------------------------------------------------------

    def is_stale(self, asset: str) -> bool:
        return asset in self._stale

    @property
    def stale_assets(self) -> frozenset[str]:
        return frozenset(self._stale)

    def decode(self, topic: str, payload: bytes, now: float) -> DecodeResult:
        """Readings from one Sparkplug message; raises only :class:`DecodeError`."""
        parts = topic.split("/")
        if len(parts) < 4 or parts[0] != NAMESPACE or len(parts) > 5:
            if len(parts) == 3 and parts[0] == NAMESPACE and parts[1] == "STATE":
                return DecodeResult([])
            raise DecodeError("bad_topic", f"not spBv1.0/<group>/<type>/<node>[/<device>]: "
                                           f"{topic[:80]!r}")
        group, kind, node_id = parts[1], parts[2], parts[3]
        device = parts[4] if len(parts) == 5 else ""
        if kind in ("NCMD", "DCMD"):
            return DecodeResult([])
        if kind not in _DATA_KINDS or (kind[0] == "D") != bool(device):
            raise DecodeError("bad_topic", f"{kind} on {topic[:80]!r}")
        asset = _checked_asset(group, node_id, device)
        if len(payload) > self.max_bytes:
            raise DecodeError("oversized", f"{len(payload)} bytes > limit {self.max_bytes}")
        try:
            pb = Payload.FromString(payload)
        except (ProtobufDecodeError, ValueError, RecursionError) as exc:
            raise DecodeError("bad_protobuf", str(exc)[:120]) from None
        key = (group, node_id)
        node = self._nodes.get(key)
        if node is None:
            if len(self._nodes) >= self.max_nodes:
                raise DecodeError("bad_topic", f"more than {self.max_nodes} edge nodes")
            node = self._nodes[key] = _Node()
        try:
            if kind == "NBIRTH":
                return self._birth(node, key, "", asset, pb, now, new_session=True)
            if kind == "NDEATH":
                return self._node_death(node, node_id, pb)
            if kind == "DBIRTH":
                # The BIRTH is authoritative even after a gap: keep its aliases.
                res = self._birth(node, key, device, asset, pb, now, new_session=False)
                self._check_seq(node, key, pb)
                return res
            if kind == "DDEATH":
                self._set_stale(asset, True)
                self._mark_dirty()
                self._check_seq(node, key, pb)
                return DecodeResult([])
            self._check_seq(node, key, pb)
            return self._data(node, key, device, asset, pb, now)
        finally:
            self._maybe_persist()

    def flush(self) -> None:
        """Write the cache now if it changed (call on a periodic tick and at shutdown)."""
        if self._dirty:
            self._persist()

    close = flush

    # -- message kinds ------------------------------------------------------------------------

    def _birth(self, node: _Node, key: tuple[str, str], device: str, asset: str, pb: Any,
               now: float, new_session: bool) -> DecodeResult:
        table = _Table()
        for m in pb.metrics:
            if m.name and m.HasField("datatype"):
                table.types[m.name] = m.datatype
                if m.HasField("alias"):
                    table.aliases[m.alias] = (m.name, m.datatype)
        if new_session:
            # A new session invalidates every device's aliases; its DBIRTHs follow.
            node.tables = {"": table}
            node.seq = pb.seq if pb.HasField("seq") else None
            bd = _find(pb, "bdSeq")
            node.bd_seq = _int_of(bd) if bd is not None else None
        else:
            node.tables[device] = table
        self._set_stale(asset, False)
        self._mark_dirty()
        return self._readings(table, key, asset, pb, now, birth=True)

    def _node_death(self, node: _Node, node_id: str, pb: Any) -> DecodeResult:
        bd = _find(pb, "bdSeq")
        if bd is not None and node.bd_seq is not None and _int_of(bd) != node.bd_seq:
            return DecodeResult([])  # the Will of an older session, delivered late
        node.seq = None
        for dev in [node_id, *(device_asset(node_id, d) for d in node.tables if d)]:
            self._set_stale(dev, True)
        self._mark_dirty()
        return DecodeResult([])

    def _data(self, node: _Node, key: tuple[str, str], device: str, asset: str, pb: Any,
              now: float) -> DecodeResult:
        table = node.tables.get(device)
        if table is None:
            self._request_rebirth(key)
            raise DecodeError("unknown_alias", f"DATA before any BIRTH for {asset!r}")
        res = self._readings(table, key, asset, pb, now, birth=False)
        if asset in self._stale:
            # Alive after a DEATH without a BIRTH we saw (e.g. it was born while the
            # agent was down): its values are not trusted until a new BIRTH.
            self._request_rebirth(key)
            n = res.n_values
            res.items = []
            if n:
                res.drop("after_death", n)
        return res

    def _readings(self, table: _Table, key: tuple[str, str], asset: str, pb: Any, now: float,
                  birth: bool) -> DecodeResult:
        res = DecodeResult([])
        p_ts = pb.timestamp if pb.HasField("timestamp") else None
        for m in pb.metrics:
            if m.HasField("alias") and not birth:
                hit = table.aliases.get(m.alias)
                if hit is None:
                    self._request_rebirth(key)
                    raise DecodeError("unknown_alias", f"alias {m.alias} of {asset!r} not in "
                                                       "the BIRTH cache")
                name, dt = hit
            elif m.name:
                name = m.name
                dt = m.datatype if m.HasField("datatype") else table.types.get(name, 0)
            else:
                res.drop("unknown_alias")
                continue
            if name == "bdSeq" or name.startswith(_PROTOCOL_PREFIXES) or m.is_null:
                res.skipped += 1
                continue
            try:
                value = _value(m, dt)
            except DecodeError as exc:
                if exc.reason != "non_finite":
                    res.drop(exc.reason)
                    continue
                value = math.nan  # reported below with its signal and time
            if value is None:
                res.skipped += 1
                continue
            signal = signal_name(name)
            if signal is None:
                res.drop("bad_name")
                continue
            ms = m.timestamp if m.HasField("timestamp") else p_ts
            if ms is None:
                ts = now
            elif ms > 0:
                ts = ms / 1000.0
            else:
                res.drop("bad_timestamp")
                continue
            if value != value:
                res.non_finite(asset, signal, ts)
                continue
            if ms is None:
                res.stamped_on_receipt += 1
            res.items.append(Reading(asset, signal, ts, value))
        return res

    # -- sequence, rebirth, staleness ---------------------------------------------------------

    def _check_seq(self, node: _Node, key: tuple[str, str], pb: Any) -> None:
        if not pb.HasField("seq"):
            return
        seq, prev = pb.seq, node.seq
        node.seq = seq
        if prev is not None and seq != (prev + 1) % 256:
            self._request_rebirth(key)
            raise DecodeError("seq_gap", f"{key[0]}/{key[1]}: expected seq "
                                         f"{(prev + 1) % 256}, got {seq}")

    def _request_rebirth(self, key: tuple[str, str]) -> None:
        t = self._clock()
        last = self._last_rebirth.get(key)
        if last is not None and t - last < self.rebirth_interval_s:
            return
        if len(self._last_rebirth) >= self.max_nodes:
            self._last_rebirth.clear()
        self._last_rebirth[key] = t
        self.rebirths_requested += 1
        try:
            self._send_rebirth(*key)
        except Exception as exc:  # the publisher's failure must not escape the decoder
            self._log.warning("rebirth", "Sparkplug: cannot send Rebirth to %s/%s: %r",
                              key[0], key[1], exc)

    def _set_stale(self, asset: str, stale: bool) -> None:
        if stale == (asset in self._stale):
            return
        (self._stale.add if stale else self._stale.discard)(asset)
        if self._on_stale is not None:
            try:
                self._on_stale(asset, stale)
            except Exception as exc:  # a consumer's bug must not escape the decoder
                self._log.warning("on_stale", "Sparkplug: on_stale(%r) failed: %r", asset, exc)

    # -- persistence ---------------------------------------------------------------------------

    def _mark_dirty(self) -> None:
        self._dirty = True

    def _maybe_persist(self) -> None:
        if self._dirty and self._clock() - self._last_persist >= self.persist_interval_s:
            self._persist()

    def _persist(self) -> None:
        doc = {"version": _CACHE_VERSION, "stale": sorted(self._stale), "nodes": [
            {"group": g, "node": n, "bd_seq": node.bd_seq,
             "tables": {dev: {"aliases": [[a, nm, dt] for a, (nm, dt) in t.aliases.items()],
                              "types": t.types} for dev, t in node.tables.items()}}
            for (g, n), node in self._nodes.items() if node.tables]}
        tmp = self.cache_path.with_name(self.cache_path.name + ".tmp")
        self._last_persist = self._clock()
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(orjson.dumps(doc))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.cache_path)
            with contextlib.suppress(OSError):  # the cache is a hint: a Rebirth rebuilds it
                fsync_path(self.cache_path.parent)
            self._dirty = False
        except OSError as exc:
            self.persist_errors += 1
            self._log.warning("persist", "Sparkplug BIRTH cache %s: cannot write (%s)",
                              self.cache_path, exc)

    def _load(self) -> None:
        try:
            raw = self.cache_path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("Sparkplug BIRTH cache %s: cannot read (%s); starting empty",
                        self.cache_path, exc)
            return
        try:
            doc = orjson.loads(raw)
            if doc.get("version") != _CACHE_VERSION:
                raise ValueError(f"version {doc.get('version')!r}, expected {_CACHE_VERSION}")
            for n in doc["nodes"]:
                tables = {str(dev): _Table(
                    aliases={int(a): (str(nm), int(dt)) for a, nm, dt in t["aliases"]},
                    types={str(k): int(v) for k, v in t["types"].items()})
                    for dev, t in n["tables"].items()}
                bd = n.get("bd_seq")
                node = _Node(bd_seq=None if bd is None else int(bd), tables=tables)
                self._nodes[(str(n["group"]), str(n["node"]))] = node
            self._stale = {str(a) for a in doc.get("stale", [])}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # Unknown aliases will ask for Rebirths, which rebuild the cache.
            log.warning("Sparkplug BIRTH cache %s is unreadable (%s); starting empty",
                        self.cache_path, exc)
            self._nodes.clear()
            self._stale.clear()


def _value(m: Any, dt: int) -> float | None:
    """The metric's numeric value by datatype; None for types that are not measurements."""
    which = m.WhichOneof("value")
    if which is None:
        return None
    bits = _SIGNED_BITS.get(dt)
    if bits is not None or dt in _UNSIGNED:
        if which not in _INT_FIELDS:
            raise DecodeError("bad_type", f"integer datatype {dt} carried in {which}")
        raw = getattr(m, which)
        if bits is not None:
            raw &= (1 << bits) - 1
            if raw >= 1 << (bits - 1):
                raw -= 1 << bits
        return float(raw)
    if dt in _FLOATS or (dt == 0 and which in _FLOAT_FIELDS):
        if which not in _FLOAT_FIELDS:
            raise DecodeError("bad_type", f"float datatype {dt} carried in {which}")
        v = float(getattr(m, which))
        if v - v != 0.0:
            raise DecodeError("non_finite", repr(v))
        return v
    if dt == 0:
        # An integer without a datatype: its sign cannot be known, so no guess.
        raise DecodeError("bad_type", "integer metric without a datatype")
    return None


def _find(pb: Any, name: str) -> Any:
    for m in pb.metrics:
        if m.name == name:
            return m
    return None


def _int_of(m: Any) -> int | None:
    which = m.WhichOneof("value")
    return int(getattr(m, which)) if which in _INT_FIELDS else None
