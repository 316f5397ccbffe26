"""Property tests: no input makes the decoder raise anything but DecodeError, and
whatever it returns is well formed (finite floats, safe names, positive times)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.core.errors import DecodeError
from edge.ingest.decode import REASONS, DecodeResult, decode_json
from edge.ingest.readings import Reading, Series
from edge.ingest.topics import TopicMatch, is_safe_name

SIG = TopicMatch("s1", "press-4", "temp")
ASSET = TopicMatch("s1", "press-4", None)
NOW = 1_718_000_100.0
MAX = 64 * 1024
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
    st.sampled_from(["NaN", "inf", "-Infinity", "71.3", "1e400", "2024-06-10T06:13:20Z"]),
    st.sampled_from([10**400, -(10**400)]),  # beyond a double; the stdlib writes them
)
json_values = st.recursive(
    scalars | st.floats(),  # the stdlib writes NaN/Infinity literals for these
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(st.text(max_size=8), children, max_size=6),
    max_leaves=40,
)
# Structures close to the real formats, so mutations reach the deep branches.
keys = st.sampled_from(["ts", "timestamp", "t0", "dt", "value", "values", "x"])
near_valid = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=8)
    | st.dictionaries(keys | st.sampled_from(["temp", "a b", "vib_rms"]), children, max_size=5),
    max_leaves=60,
)


def dumps(value: Any) -> bytes:
    # the stdlib, because orjson refuses integers beyond 64 bits
    return json.dumps(value).encode()


def check(res: DecodeResult) -> None:
    assert res.items or res.nonfinite, "an accepted message yields a value or a sensor fault"
    for (asset, signal), (n, ts) in (res.nonfinite or {}).items():
        assert is_safe_name(asset) and is_safe_name(signal) and n > 0 and 0 < ts < math.inf
        assert (res.dropped or {}).get("non_finite", 0) >= n
    for item in res.items:
        if isinstance(item, Reading):
            assert type(item.value) is float and math.isfinite(item.value)
            assert type(item.ts) is float and 0 < item.ts < math.inf
            assert is_safe_name(item.signal)
        else:
            assert isinstance(item, Series)
            assert item.values.dtype == np.float64 and item.values.ndim == 1
            assert len(item.values) > 0 and np.isfinite(item.values).all()
            assert item.dt > 0 and math.isfinite(item.t0)
    assert res.stamped_on_receipt >= 0
    assert all(r in REASONS and n > 0 for r, n in (res.dropped or {}).items())


def run(match: TopicMatch, payload: bytes) -> None:
    try:
        res = decode_json(match, payload, NOW, MAX)
    except DecodeError as exc:
        assert exc.reason in REASONS
        return
    check(res)


@FUZZ
@given(st.binary(max_size=512), st.sampled_from([SIG, ASSET]))
def test_arbitrary_bytes(payload: bytes, match: TopicMatch) -> None:
    run(match, payload)


@FUZZ
@given(json_values, st.sampled_from([SIG, ASSET]))
def test_arbitrary_json(value: Any, match: TopicMatch) -> None:
    run(match, dumps(value))


@FUZZ
@given(near_valid, st.sampled_from([SIG, ASSET]))
def test_near_valid_structures(value: Any, match: TopicMatch) -> None:
    run(match, dumps(value))


@FUZZ
@given(near_valid, st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999"]),
       st.sampled_from([SIG, ASSET]))
def test_non_finite_literals_spliced_in(value: Any, token: bytes, match: TopicMatch) -> None:
    # strict JSON cannot hold NaN; splice the literal where a 0 was encoded
    raw = dumps(value).replace(b"0", token, 1)
    run(match, raw)


@FUZZ
@given(st.lists(st.one_of(st.floats(), st.integers(-(2**63), 2**63), st.booleans(),
                          st.none(), st.text(max_size=5)), min_size=1, max_size=300),
       st.floats(min_value=1e-6, max_value=10.0))
def test_batches_keep_exact_spacing(values: list[Any], dt: float) -> None:
    raw = orjson.dumps({"t0": 1718000000, "dt": dt, "values": values})
    try:
        res = decode_json(SIG, raw.replace(b"null", b"NaN"), NOW, MAX)
    except DecodeError as exc:
        assert exc.reason in REASONS
        return
    check(res)
    # every kept sample sits at t0 + i*dt for its original index i
    kept = sum(len(s.values) for s in res.items if isinstance(s, Series))
    dropped = sum((res.dropped or {}).values())
    assert kept + dropped == len(values)
    for s in res.items:
        assert isinstance(s, Series)
        i = round((s.t0 - 1718000000) / dt)
        assert math.isclose(s.t0, 1718000000 + i * dt, rel_tol=0, abs_tol=1e-6)
        assert float(s.values[0]) == float(values[i])
