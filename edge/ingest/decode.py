"""JSON payloads → readings. Pure functions; anything wrong raises ``DecodeError(reason)``.

Payload formats (topics as in the default templates; see :mod:`edge.ingest.topics`)
-----------------------------------------------------------------------------------

1. One reading, on a signal topic ``forewarn/<site>/<asset>/<signal>``::

       {"ts": 1718000000.25, "value": 71.3}

2. Several signals at one instant, on an asset topic ``forewarn/<site>/<asset>``::

       {"ts": "2024-06-10T06:13:20.250Z", "values": {"temp": 71.3, "vib_rms": 0.42}}

3. A batch of evenly spaced samples of one signal (high-rate vibration), on a
   signal topic; sample ``i`` is at ``t0 + i * dt`` seconds. It stays a numpy
   array end to end (:class:`~edge.ingest.readings.Series`)::

       {"t0": 1718000000000, "dt": 0.0005, "values": [0.012, -0.004, 0.009, ...]}

4. A list of readings, on a signal topic, or a list of instants on an asset topic::

       [{"ts": 1718000000.0, "value": 71.3}, {"ts": 1718000001.0, "value": 71.4}]
       [{"ts": 1718000000.0, "values": {"temp": 71.3}}, {"ts": 1718000001.0, "values": {...}}]

5. A bare number, on a signal topic; it gets the receive time::

       71.3

Timestamps (``ts``; ``timestamp`` is accepted too; ``t0`` for batches)
    - a number: epoch seconds; larger magnitudes are read as finer units, because
      no plausible epoch-seconds value is that large: ``>= 1e11`` is milliseconds
      (1e11 s is the year 5138, 1e11 ms is 1973), ``>= 1e14`` microseconds,
      ``>= 1e17`` nanoseconds. A numeric string is read the same way.
    - an ISO-8601 string; without a UTC offset it is taken as **UTC**
      (gateways rarely know the plant's zone; send an offset to be explicit).
    - missing or ``null``: the receive time ``now`` is used and counted in
      :attr:`DecodeResult.stamped_on_receipt` (per value). A batch without
      ``t0`` is placed so that its *last* sample is at the receive time.
    - zero, negative, non-finite or unparsable: ``bad_timestamp``.

Values
    - JSON numbers; a string holding a decimal number is accepted too (some PLC
      gateways quote numbers). Booleans, ``null``, objects and other strings are
      ``bad_type``: a boolean is not a measurement.
    - NaN and ±Infinity (as literals, which strict JSON forbids, as overflowing
      numbers like ``1e400``, or as strings ``"NaN"``) are ``non_finite``. They
      are dropped and counted like any bad value, but their asset and signal are
      kept in :attr:`DecodeResult.nonfinite`: a sensor that sends no number is a
      sensor fault a person must see (the pipeline raises the alert), and a
      message whose only values are non-finite is returned, not rejected, so the
      pipeline can say which sensor sent them.
    - **A bad value is dropped, not the whole message**: the other values of a
      multi-signal object, a list or a batch are kept, and the dropped ones are
      counted in :attr:`DecodeResult.dropped` by reason. A batch with dropped
      samples is returned as several :class:`Series`, one per unbroken run, so
      sample spacing stays exact. If nothing usable remains, the message is
      rejected with the most frequent reason.
    - signal names inside ``values`` must match the name rule (edge/core/names.py),
      else ``bad_name``. Unknown keys next to ``ts``/``value`` (quality, unit...)
      are ignored.

Whole-message reasons: ``oversized`` (more than ``max_bytes``), ``malformed_json``
(including an empty payload), ``bad_shape`` (valid JSON that is none of the formats
above, or a format on the wrong kind of topic), plus the value reasons above when
nothing usable remains.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from itertools import pairwise
from typing import Any

import numpy as np
import orjson

from edge.core.errors import DecodeError
from edge.ingest.readings import Reading, Series
from edge.ingest.topics import TopicMatch, is_safe_name

# Bounded label vocabulary for forewarn_decode_errors_total{reason} (JSON, Sparkplug and
# OPC UA: a sample whose StatusCode is not Good is ``opcua_bad_status``).
REASONS = frozenset({
    "oversized", "malformed_json", "bad_shape", "bad_type", "non_finite", "bad_timestamp",
    "bad_name", "unknown_topic", "bad_topic", "bad_protobuf", "unknown_alias", "seq_gap",
    "after_death", "opcua_bad_status",
})
_NONFINITE_TOKENS = frozenset({b"nan", b"-nan", b"inf", b"-inf", b"+inf", b"infinity",
                               b"-infinity", b"+infinity"})
_MAX_TEXT = 64  # longest numeric or ISO-8601 string worth parsing
_MAX_DT = 86_400.0  # same bound as a manifest's sample period
_name_ok = lru_cache(maxsize=4096)(is_safe_name)


@dataclass(slots=True)
class DecodeResult:
    """What one message yielded, plus what the caller must count.

    ``dropped`` is ``None`` in the common case (no allocation); otherwise it maps
    a reason from :data:`REASONS` to the number of values dropped for it.
    ``skipped`` counts values ignored on purpose (e.g. Sparkplug boolean/string
    metrics) — not errors. ``nonfinite`` is ``None`` unless values were NaN or
    infinite: then it maps (asset, signal) to how many and the timestamp of the
    last one (they are also in ``dropped["non_finite"]``). ``lettered`` says the
    message was already dead-lettered for them (by an ingest worker process).
    """

    items: list[Reading | Series]
    stamped_on_receipt: int = 0
    dropped: dict[str, int] | None = None
    skipped: int = 0
    nonfinite: dict[tuple[str, str], tuple[int, float]] | None = None
    lettered: bool = False

    def drop(self, reason: str, n: int = 1) -> None:
        if self.dropped is None:
            self.dropped = {}
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def non_finite(self, asset: str, signal: str, ts: float, n: int = 1,
                   counted: bool = False) -> None:
        """Record ``n`` non-finite values of one signal, the last at ``ts``
        (``counted``: already in ``dropped``)."""
        if not counted:
            self.drop("non_finite", n)
        if self.nonfinite is None:
            self.nonfinite = {}
        prev = self.nonfinite.get((asset, signal))
        self.nonfinite[(asset, signal)] = (n if prev is None else prev[0] + n,
                                           ts if prev is None else max(prev[1], ts))

    def nonfinite_detail(self) -> str:
        """The dead letter's detail: which sensors sent no number, and how often."""
        parts = [f"{a}/{s} = NaN/Inf x{n}" for (a, s), (n, _) in (self.nonfinite or {}).items()]
        return "no finite number from " + ", ".join(parts[:5]) + (
            f" and {len(parts) - 5} more" if len(parts) > 5 else "")

    @property
    def n_values(self) -> int:
        return sum(len(x.values) if isinstance(x, Series) else 1 for x in self.items)


def decode_json(match: TopicMatch, payload: bytes, now: float, max_bytes: int) -> DecodeResult:
    """Decode one JSON payload received on a topic that ``match`` describes."""
    if len(payload) > max_bytes:
        raise DecodeError("oversized", f"{len(payload)} bytes > limit {max_bytes}")
    try:
        obj = _parse(payload if type(payload) is bytes else bytes(payload))
    except DecodeError as exc:  # a bare ``NaN`` token on a signal topic
        return _lone_non_finite(match, exc, now)
    t = type(obj)
    if t is dict:
        res = _object(match, obj, now)
    elif t is list:
        res = _list(match, obj, now)
    elif t is float or t is int:
        if match.signal is None:
            raise DecodeError("bad_shape", "a bare number needs a signal topic")
        try:
            return DecodeResult([Reading(match.asset, match.signal, now, _scalar(obj))], 1)
        except DecodeError as exc:
            return _lone_non_finite(match, exc, now)
    else:
        raise DecodeError("bad_type", f"payload is a JSON {_jtype(obj)}")
    if not res.items and not res.nonfinite:
        reason = max(res.dropped.items(), key=lambda kv: kv[1])[0] if res.dropped else "bad_shape"
        raise DecodeError(reason, "no usable value in the message")
    return res


def _lone_non_finite(match: TopicMatch, exc: DecodeError, ts: float) -> DecodeResult:
    """A message that is one non-finite value of a known signal: reported, not rejected."""
    if exc.reason != "non_finite" or match.signal is None:
        raise exc
    res = DecodeResult([])
    res.non_finite(match.asset, match.signal, ts)
    return res


def _parse(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        err = str(exc)
    if not payload.strip():
        raise DecodeError("malformed_json", "empty payload")
    # orjson refuses NaN/Infinity literals and numbers overflowing a double. The
    # stdlib parses those (slow path, bad messages only) so the message's finite
    # values survive and the bad ones are counted as non_finite.
    if b"NaN" in payload or b"Infinity" in payload or "infinity" in err:
        try:
            return json.loads(payload)
        except (ValueError, RecursionError) as exc:
            raise DecodeError("malformed_json", _short(str(exc))) from None
    if payload.strip().lower() in _NONFINITE_TOKENS:
        raise DecodeError("non_finite", "payload is not a finite number")
    raise DecodeError("malformed_json", _short(err))


def _object(match: TopicMatch, obj: dict[str, Any], now: float) -> DecodeResult:
    if "value" in obj:
        if match.signal is None:
            raise DecodeError("bad_shape", "'value' needs a signal topic; use 'values' here")
        if "values" in obj:
            raise DecodeError("bad_shape", "both 'value' and 'values'")
        try:
            v = _scalar(obj["value"])
        except DecodeError as exc:
            return _lone_non_finite(match, exc, _get_ts(obj) or now)
        ts = _get_ts(obj)
        if ts is None:
            return DecodeResult([Reading(match.asset, match.signal, now, v)], 1)
        return DecodeResult([Reading(match.asset, match.signal, ts, v)])
    values = obj.get("values")
    if type(values) is dict:
        if match.signal is not None:
            raise DecodeError("bad_shape", "a 'values' object needs an asset topic")
        res = DecodeResult([])
        _multi(match.asset, values, _get_ts(obj), now, res)
        return res
    if type(values) is list:
        return _batch(match, obj, values, now)
    raise DecodeError("bad_shape", "object has no 'value' and no 'values' object or array")


def _get_ts(obj: dict[str, Any]) -> float | None:
    raw = obj.get("ts")
    if raw is None:
        raw = obj.get("timestamp")
        if raw is None:
            return None
    return _ts(raw)


def _multi(asset: str, values: dict[str, Any], ts: float | None, now: float,
           res: DecodeResult) -> None:
    items = res.items
    append = items.append
    before = len(items)
    t = now if ts is None else ts
    new = tuple.__new__  # Reading(...) goes through a Python-level __new__; 3x slower
    for name, x in values.items():
        if not _name_ok(name):
            res.drop("bad_name")
            continue
        if type(x) is float and x - x == 0.0:  # the common case, inlined
            append(new(Reading, (asset, name, t, x)))
            continue
        try:
            append(new(Reading, (asset, name, t, _scalar(x))))
        except DecodeError as exc:
            if exc.reason == "non_finite":
                res.non_finite(asset, name, t)
            else:
                res.drop(exc.reason)
    if ts is None:
        res.stamped_on_receipt += len(items) - before


def _list(match: TopicMatch, rows: list[Any], now: float) -> DecodeResult:
    res = DecodeResult([])
    if not rows:
        raise DecodeError("bad_shape", "empty list")
    asset, signal = match.asset, match.signal
    for row in rows:
        if type(row) is not dict:
            res.drop("bad_shape")
            continue
        try:
            if signal is not None:
                if "value" not in row:
                    res.drop("bad_shape")
                    continue
                ts = _get_ts(row)
                try:
                    v = _scalar(row["value"])
                except DecodeError as exc:
                    if exc.reason != "non_finite":
                        raise
                    res.non_finite(asset, signal, now if ts is None else ts)
                    continue
                if ts is None:
                    ts = now
                    res.stamped_on_receipt += 1
                res.items.append(Reading(asset, signal, ts, v))
            else:
                values = row.get("values")
                if type(values) is not dict:
                    res.drop("bad_shape")
                    continue
                _multi(asset, values, _get_ts(row), now, res)
        except DecodeError as exc:
            res.drop(exc.reason)
    return res


def _batch(match: TopicMatch, obj: dict[str, Any], values: list[Any], now: float) -> DecodeResult:
    if match.signal is None:
        raise DecodeError("bad_shape", "a batch ('values' array) needs a signal topic")
    n = len(values)
    if n == 0:
        raise DecodeError("bad_shape", "empty batch")
    dt = obj.get("dt")
    if (type(dt) is not float and type(dt) is not int) or not 0 < dt <= _MAX_DT:
        raise DecodeError("bad_shape", f"batch 'dt' must be a number in (0, {_MAX_DT}] s, "
                          f"got {_jtype(dt)}")
    dt = float(dt)
    res = DecodeResult([])
    raw_t0 = obj.get("t0", obj.get("ts"))
    t0 = now - (n - 1) * dt if raw_t0 is None else _ts(raw_t0)
    arr, last_nf = _array(values, res)
    ok = np.isfinite(arr)
    n_ok = int(np.count_nonzero(ok))
    if raw_t0 is None:
        res.stamped_on_receipt = n_ok
    if n_ok == n:
        res.items.append(Series(match.asset, match.signal, t0, dt, arr))
        return res
    if res.dropped is None:  # fast path let NaN/inf through (stdlib fallback parse)
        last = int(np.flatnonzero(~ok)[-1])
        res.non_finite(match.asset, match.signal, t0 + last * dt, n - n_ok)
    elif last_nf >= 0:  # slow path: each bad value was counted by its reason
        res.non_finite(match.asset, match.signal, t0 + last_nf * dt,
                       res.dropped.get("non_finite", 0), counted=True)
    if n_ok:
        # One Series per unbroken run of good samples keeps t0 + i*dt exact.
        edges = np.flatnonzero(np.diff(ok.view(np.int8))) + 1
        bounds = [0, *edges.tolist(), n]
        for a, b in pairwise(bounds):
            if ok[a]:
                res.items.append(Series(match.asset, match.signal, t0 + a * dt, dt, arr[a:b]))
    return res


def _array(values: list[Any], res: DecodeResult) -> tuple[np.ndarray, int]:
    """The samples as float64 (bad ones NaN) and the index of the last non-finite one
    found by the slow path (-1: none, or the fast path ran)."""
    # np.asarray alone would turn True into 1.0 and "x" into a str array; the
    # type set is one C-level pass and keeps the common case vectorised.
    if set(map(type, values)) <= {float, int}:
        try:
            return np.asarray(values, dtype=np.float64), -1
        except OverflowError:  # an int beyond a double, from the stdlib fallback
            pass
    out = np.empty(len(values), dtype=np.float64)
    last_nf = -1
    for i, x in enumerate(values):
        try:
            out[i] = _scalar(x)
        except DecodeError as exc:
            out[i] = math.nan
            res.drop(exc.reason)
            if exc.reason == "non_finite":
                last_nf = i
    return out, last_nf


def _scalar(x: Any) -> float:
    t = type(x)
    if t is float:
        if x - x == 0.0:  # false for NaN and ±inf; cheaper than math.isfinite
            return x  # type: ignore[no-any-return]
        raise DecodeError("non_finite", repr(x))
    if t is int:
        try:
            return float(x)
        except OverflowError:
            raise DecodeError("non_finite", "integer beyond the float range") from None
    if t is str and len(x) <= _MAX_TEXT:
        try:
            v = float(x)
        except ValueError:
            raise DecodeError("bad_type", f"string {x[:20]!r} is not a number") from None
        if math.isfinite(v):
            return v
        raise DecodeError("non_finite", repr(x))
    raise DecodeError("bad_type", f"{_jtype(x)} is not a number")


def _ts(x: Any) -> float:
    t = type(x)
    if t is str:
        if len(x) > _MAX_TEXT:
            raise DecodeError("bad_timestamp", "timestamp string too long")
        try:
            v = float(x)
        except ValueError:
            return _iso(x)
    elif t is float or t is int:
        try:
            v = float(x)
        except OverflowError:
            raise DecodeError("bad_timestamp", "timestamp out of range") from None
    else:
        raise DecodeError("bad_timestamp", f"timestamp is a {_jtype(x)}")
    if not 0 < v < math.inf:
        raise DecodeError("bad_timestamp", f"{v!r} is not a positive epoch time")
    if v < 1e11:
        return v
    if v < 1e14:
        return v / 1e3
    if v < 1e17:
        return v / 1e6
    return v / 1e9


def _iso(s: str) -> float:
    try:
        d = datetime.fromisoformat(s)
        if d.tzinfo is None:
            d = d.replace(tzinfo=UTC)
        v = d.timestamp()
    except (ValueError, OverflowError):
        raise DecodeError("bad_timestamp", f"{s[:40]!r} is not ISO-8601 or epoch") from None
    if v <= 0:
        raise DecodeError("bad_timestamp", f"{s[:40]!r} is before 1970")
    return v


def _jtype(x: Any) -> str:
    if x is None:
        return "null"
    return {bool: "boolean", str: "string", dict: "object", list: "array",
            int: "number", float: "number"}.get(type(x), type(x).__name__)


def _short(msg: str) -> str:
    return msg if len(msg) <= 120 else msg[:117] + "..."
