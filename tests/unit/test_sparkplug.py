"""Sparkplug B host decoding: BIRTH cache, aliases, seq, integer types, DEATH."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.core.errors import DecodeError
from edge.ingest.proto.sparkplug_b_pb2 import Payload
from edge.ingest.readings import Reading
from edge.ingest.sparkplug import REBIRTH_METRIC, SparkplugDecoder, rebirth_command, signal_name

NOW = 1_718_000_100.0
TS_MS = 1_718_000_000_000
T = 1_718_000_000.0
INT8, INT16, INT32, INT64, UINT8, UINT16, UINT32, UINT64 = range(1, 9)
FLOAT, DOUBLE, BOOLEAN, STRING = 9, 10, 11, 12


# -- test-only encoder ---------------------------------------------------------------------------

def metric(name: str | None = None, alias: int | None = None, dt: int | None = None,
           value: Any = None, ts: int | None = None, field: str | None = None) -> dict[str, Any]:
    return {"name": name, "alias": alias, "dt": dt, "value": value, "ts": ts, "field": field}


def encode_payload(metrics: list[dict[str, Any]], seq: int | None = None,
                   ts: int | None = TS_MS) -> bytes:
    p = Payload()
    if ts is not None:
        p.timestamp = ts
    if seq is not None:
        p.seq = seq
    for m in metrics:
        pm = p.metrics.add()
        if m["name"] is not None:
            pm.name = m["name"]
        if m["alias"] is not None:
            pm.alias = m["alias"]
        if m["dt"] is not None:
            pm.datatype = m["dt"]
        if m["ts"] is not None:
            pm.timestamp = m["ts"]
        if m["value"] is None:
            continue
        field = m["field"] or _field_for(m["dt"])
        value = m["value"]
        if m["dt"] in (INT8, INT16, INT32) and field == "int_value" and value < 0:
            value &= 0xFFFFFFFF  # how Tahu puts a negative Int8/16/32 on the wire
        if m["dt"] == INT64 and value < 0:
            value &= 0xFFFFFFFFFFFFFFFF
        setattr(pm, field, value)
    return p.SerializeToString()


def _field_for(dt: int | None) -> str:
    if dt in (INT8, INT16, INT32, UINT8, UINT16, UINT32):
        return "int_value"
    if dt in (INT64, UINT64):
        return "long_value"
    return {FLOAT: "float_value", DOUBLE: "double_value", BOOLEAN: "boolean_value",
            STRING: "string_value"}[dt]  # type: ignore[index]


BIRTH_METRICS = [
    metric("bdSeq", dt=INT64, value=3),
    metric("Node Control/Rebirth", dt=BOOLEAN, value=False),
    metric("Sensors/Temp", alias=1, dt=DOUBLE, value=70.5),
    metric("Offset", alias=2, dt=INT32, value=-12),
    metric("Running", alias=3, dt=BOOLEAN, value=True),
    metric("Label", alias=4, dt=STRING, value="A"),
    metric("Counter", alias=5, dt=UINT32, value=4294967284),
]


class Harness:
    def __init__(self, tmp: Path, **kw: Any) -> None:
        self.tmp = tmp
        self.rebirths: list[tuple[str, str]] = []
        self.stale_events: list[tuple[str, bool]] = []
        self.clock = [0.0]
        self.kw = kw
        self.dec = self.new()

    def new(self) -> SparkplugDecoder:
        kw = {"persist_interval_s": 0.0, **self.kw}
        return SparkplugDecoder(self.tmp / "spb.json", lambda g, n: self.rebirths.append((g, n)),
                                on_stale=lambda a, s: self.stale_events.append((a, s)),
                                clock=lambda: self.clock[0], **kw)

    def send(self, kind: str, payload: bytes, node: str = "n1", device: str | None = None,
             group: str = "g1") -> list[Any]:
        topic = f"spBv1.0/{group}/{kind}/{node}" + (f"/{device}" if device else "")
        return self.dec.decode(topic, payload, NOW).items

    def reason(self, kind: str, payload: bytes, **kw: Any) -> str:
        with pytest.raises(DecodeError) as ei:
            self.send(kind, payload, **kw)
        return ei.value.reason


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def born(h: Harness) -> None:
    h.send("NBIRTH", encode_payload(BIRTH_METRICS, seq=0))
    h.send("DBIRTH", encode_payload([metric("Vib", alias=1, dt=FLOAT, value=0.25),
                                     metric("Delta", alias=2, dt=INT16, value=-300)], seq=1),
           device="press-4")


# -- BIRTH and DATA --------------------------------------------------------------------------

def test_birth_values_are_readings_and_non_numeric_metrics_are_skipped(h: Harness) -> None:
    res = h.dec.decode("spBv1.0/g1/NBIRTH/n1", encode_payload(BIRTH_METRICS, seq=0), NOW)
    assert res.items == [Reading("n1", "Sensors.Temp", T, 70.5),
                         Reading("n1", "Offset", T, -12.0),
                         Reading("n1", "Counter", T, 4294967284.0)]
    assert res.skipped == 4  # bdSeq, Node Control/Rebirth, Running (bool), Label (string)


def test_data_resolves_aliases_per_node_and_device(h: Harness) -> None:
    born(h)
    items = h.send("NDATA", encode_payload([metric(alias=1, value=71.0, field="double_value"),
                                            metric(alias=2, value=-12, field="int_value",
                                                   dt=INT32)], seq=2))
    assert items == [Reading("n1", "Sensors.Temp", T, 71.0), Reading("n1", "Offset", T, -12.0)]
    # alias 1 of the device is another metric than alias 1 of the node
    items = h.send("DDATA", encode_payload([metric(alias=1, value=0.5, field="float_value"),
                                            metric(alias=2, value=-7, field="int_value",
                                                   dt=INT16)], seq=3), device="press-4")
    assert items == [Reading("n1.press-4", "Vib", T, 0.5), Reading("n1.press-4", "Delta", T, -7.0)]
    assert h.rebirths == []


@pytest.mark.parametrize(("dt", "wire", "field", "expected"), [
    (INT32, 4294967284, "int_value", -12),          # Int32 -12 as Tahu sends it
    (INT32, 2147483647, "int_value", 2147483647),
    (INT32, 2147483648, "int_value", -2147483648),
    (INT8, 4294967284, "int_value", -12),           # sign-extended to 32 bits
    (INT8, 244, "int_value", -12),                  # or just the 8 bits
    (INT8, 127, "int_value", 127),
    (INT16, 65535, "int_value", -1),
    (INT16, 4294967295, "int_value", -1),
    (INT64, 18446744073709551604, "long_value", -12),
    (INT64, 5, "long_value", 5),
    (UINT8, 255, "int_value", 255),
    (UINT16, 65535, "int_value", 65535),
    (UINT32, 4294967284, "int_value", 4294967284),
    (UINT64, 18446744073709551615, "long_value", 18446744073709551615),
    (INT32, 4294967284, "long_value", -12),         # lenient about the carrying field
])
def test_integer_datatypes(h: Harness, dt: int, wire: int, field: str, expected: int) -> None:
    h.send("NBIRTH", encode_payload([metric("x", alias=9, dt=dt, value=0)], seq=0))
    p = Payload(seq=1, timestamp=TS_MS)
    pm = p.metrics.add(alias=9)
    setattr(pm, field, wire)
    (r,) = h.send("NDATA", p.SerializeToString())
    assert r.value == float(expected)


def test_metric_timestamp_wins_over_payload_timestamp_then_receive_time(h: Harness) -> None:
    h.send("NBIRTH", encode_payload([metric("x", alias=1, dt=DOUBLE, value=1.0)], seq=0))
    (a,) = h.send("NDATA", encode_payload([metric(alias=1, value=2.0, field="double_value",
                                                  ts=TS_MS + 500)], seq=1))
    (b,) = h.send("NDATA", encode_payload([metric(alias=1, value=2.0, field="double_value")],
                                          seq=2))
    res = h.dec.decode("spBv1.0/g1/NDATA/n1", encode_payload(
        [metric(alias=1, value=2.0, field="double_value")], seq=3, ts=None), NOW)
    assert (a.ts, b.ts, res.items[0].ts, res.stamped_on_receipt) == (T + 0.5, T, NOW, 1)


def test_data_by_name_uses_birth_datatype(h: Harness) -> None:
    born(h)
    (r,) = h.send("NDATA", encode_payload([metric("Offset", value=4294967284,
                                                  field="int_value")], seq=2))
    assert r == Reading("n1", "Offset", T, -12.0)


def test_non_finite_and_untyped_integers_are_dropped_not_guessed(h: Harness) -> None:
    h.send("NBIRTH", encode_payload([metric("f", alias=1, dt=FLOAT, value=1.0),
                                     metric("d", alias=2, dt=DOUBLE, value=1.0)], seq=0))
    res = h.dec.decode("spBv1.0/g1/NDATA/n1", encode_payload([
        metric(alias=1, value=float("nan"), field="float_value"),
        metric(alias=2, value=3.0, field="double_value"),
        metric("new", value=4294967284, field="int_value"),   # no datatype anywhere
    ], seq=1), NOW)
    assert res.items == [Reading("n1", "d", T, 3.0)]
    assert res.dropped == {"non_finite": 1, "bad_type": 1}
    # The NaN keeps its asset, signal and time: the pipeline raises a sensor fault.
    assert res.nonfinite == {("n1", "f"): (1, T)}
    assert res.stamped_on_receipt == 0


def test_a_message_of_only_non_finite_metrics_is_reported(h: Harness) -> None:
    h.send("NBIRTH", encode_payload([metric("f", alias=1, dt=FLOAT, value=1.0)], seq=0))
    res = h.dec.decode("spBv1.0/g1/NDATA/n1", encode_payload([
        metric(alias=1, value=float("-inf"), field="float_value")], seq=1), NOW)
    assert res.items == [] and res.nonfinite == {("n1", "f"): (1, T)}


# -- no guessing: unknown alias and seq gaps ---------------------------------------------------

def test_unknown_alias_requests_rebirth_and_rejects(h: Harness) -> None:
    born(h)
    bad = encode_payload([metric(alias=1, value=1.0, field="double_value"),
                          metric(alias=77, value=1.0, field="double_value")], seq=2)
    assert h.reason("NDATA", bad) == "unknown_alias"
    assert h.rebirths == [("g1", "n1")]


def test_data_before_any_birth_requests_rebirth(h: Harness) -> None:
    data = encode_payload([metric(alias=1, value=1.0, field="double_value")], seq=5)
    assert h.reason("DDATA", data, device="d9") == "unknown_alias"
    assert h.rebirths == [("g1", "n1")]


def test_rebirth_requests_are_rate_limited_per_node(h: Harness) -> None:
    data = encode_payload([metric(alias=1, value=1.0, field="double_value")])
    for node in ["n1", "n1", "n1", "n2"]:
        h.reason("NDATA", data, node=node)
    assert h.rebirths == [("g1", "n1"), ("g1", "n2")]
    h.clock[0] = 10.0
    h.reason("NDATA", data, node="n1")
    assert h.rebirths[-1] == ("g1", "n1") and len(h.rebirths) == 3
    assert h.dec.rebirths_requested == 3


def test_seq_gap_requests_rebirth_then_resyncs(h: Harness) -> None:
    born(h)  # seq 0, 1
    ok = [metric(alias=1, value=1.0, field="double_value")]
    h.send("NDATA", encode_payload(ok, seq=2))
    assert h.reason("NDATA", encode_payload(ok, seq=4)) == "seq_gap"
    assert h.rebirths == [("g1", "n1")]
    assert h.send("NDATA", encode_payload(ok, seq=5))  # in sequence again after the gap
    # device messages share the node's sequence
    assert h.send("DDATA", encode_payload([metric(alias=1, value=0.5, field="float_value")],
                                          seq=6), device="press-4")


def test_death_and_birth_apply_even_after_a_seq_gap(h: Harness) -> None:
    born(h)  # seq 0, 1
    dbirth = encode_payload([metric("Vib", alias=1, dt=FLOAT, value=0.25)], seq=7)
    assert h.reason("DBIRTH", dbirth, device="press-9") == "seq_gap"
    assert h.send("DDATA", encode_payload([metric(alias=1, value=0.5, field="float_value")],
                                          seq=8), device="press-9")
    assert h.reason("DDEATH", encode_payload([], seq=20), device="press-9") == "seq_gap"
    assert h.dec.is_stale("n1.press-9")


def test_seq_wraps_at_255(h: Harness) -> None:
    h.send("NBIRTH", encode_payload([metric("x", alias=1, dt=DOUBLE, value=1.0)], seq=254))
    ok = [metric(alias=1, value=1.0, field="double_value")]
    h.send("NDATA", encode_payload(ok, seq=255))
    h.send("NDATA", encode_payload(ok, seq=0))
    h.send("NDATA", encode_payload(ok, seq=1))
    assert h.rebirths == []
    assert h.reason("NDATA", encode_payload(ok, seq=1)) == "seq_gap"  # a repeat is a gap too


def test_nbirth_resets_sequence_and_device_aliases(h: Harness) -> None:
    born(h)
    h.send("NBIRTH", encode_payload(BIRTH_METRICS, seq=0))  # new session
    ok = [metric(alias=1, value=0.5, field="float_value")]
    # the device has not re-sent its DBIRTH yet: its old aliases are not trusted
    assert h.reason("DDATA", encode_payload(ok, seq=1), device="press-4") == "unknown_alias"


# -- DEATH and staleness -----------------------------------------------------------------------

def test_ndeath_marks_node_and_devices_stale_and_birth_clears(h: Harness) -> None:
    born(h)
    assert not h.dec.is_stale("n1.press-4")
    h.send("NDEATH", encode_payload([metric("bdSeq", dt=INT64, value=3)], ts=None))
    assert h.dec.is_stale("n1") and h.dec.is_stale("n1.press-4")
    assert h.dec.stale_assets == {"n1", "n1.press-4"}
    h.send("NBIRTH", encode_payload(BIRTH_METRICS, seq=0))
    assert not h.dec.is_stale("n1") and h.dec.is_stale("n1.press-4")
    h.send("DBIRTH", encode_payload([metric("Vib", alias=1, dt=FLOAT, value=0.25)], seq=1),
           device="press-4")
    assert not h.dec.is_stale("n1.press-4")
    assert ("n1.press-4", True) in h.stale_events and h.stale_events[-1] == ("n1.press-4", False)


def test_ddeath_marks_only_that_device(h: Harness) -> None:
    born(h)
    h.send("DDEATH", encode_payload([], seq=2), device="press-4")
    assert h.dec.is_stale("n1.press-4") and not h.dec.is_stale("n1")


def test_late_will_of_an_older_session_is_ignored(h: Harness) -> None:
    born(h)  # bdSeq 3
    h.send("NDEATH", encode_payload([metric("bdSeq", dt=INT64, value=2)], ts=None))
    assert not h.dec.is_stale("n1")


def test_data_while_stale_is_dropped_counted_and_asks_for_rebirth(h: Harness) -> None:
    born(h)
    h.send("NDEATH", encode_payload([metric("bdSeq", dt=INT64, value=3)], ts=None))
    res = h.dec.decode("spBv1.0/g1/NDATA/n1", encode_payload(
        [metric(alias=1, value=1.0, field="double_value"),
         metric(alias=2, value=5, field="int_value")], seq=0), NOW)
    assert res.items == [] and res.dropped == {"after_death": 2}
    assert h.dec.is_stale("n1") and h.rebirths == [("g1", "n1")]
    # a device of the dead node stays unscored too, until the BIRTHs
    dev = h.dec.decode("spBv1.0/g1/DDATA/n1/press-4", encode_payload(
        [metric(alias=1, value=0.5, field="float_value")], seq=1), NOW)
    assert dev.items == [] and dev.dropped == {"after_death": 1}
    h.send("NBIRTH", encode_payload(BIRTH_METRICS, seq=0))
    h.send("DBIRTH", encode_payload([metric("Vib", alias=1, dt=FLOAT, value=0.25)], seq=1),
           device="press-4")
    assert h.send("DDATA", encode_payload([metric(alias=1, value=0.5, field="float_value")],
                                          seq=2), device="press-4") == [
        Reading("n1.press-4", "Vib", T, 0.5)]


@pytest.mark.parametrize(("topic", "at_fault"), [
    ("spBv1.0/g\x00/NDATA/n1", "group id"),
    ("spBv1.0/g1/NDATA/n\x01", "edge node id"),
    ("spBv1.0/g1/DDATA/n1/d+", "device id"),
    ("spBv1.0/g1/DDATA/n1/<b>", "device id"),
    ("spBv1.0/g1/NDATA/pump1.pump2", "edge node id"),
    ("spBv1.0/g1/DDATA/n1/" + "d" * 62, "asset id"),
])
def test_unsafe_ids_are_refused_as_bad_name(h: Harness, topic: str, at_fault: str) -> None:
    topic = topic.encode().decode("unicode_escape")
    with pytest.raises(DecodeError) as ei:
        h.dec.decode(topic, encode_payload([metric("x", alias=1, dt=DOUBLE, value=1.0)],
                                           seq=0), NOW)
    assert ei.value.reason == "bad_name" and at_fault in ei.value.detail
    assert h.rebirths == []  # no command is ever published on an unsafe topic


def test_a_node_cannot_speak_for_another_nodes_asset(h: Harness) -> None:
    """Edge node pump1 naming a device "pump2" feeds asset pump1.pump2, never pump2."""
    res = h.dec.decode("spBv1.0/g1/DBIRTH/pump1/pump2", encode_payload(
        [metric("temp", alias=1, dt=DOUBLE, value=1.0)], seq=0), NOW)
    assert {r.asset for r in res.items} == {"pump1.pump2"}


# -- persistence -------------------------------------------------------------------------------

def test_birth_cache_and_staleness_survive_a_restart(h: Harness) -> None:
    born(h)
    h.send("DDEATH", encode_payload([], seq=2), device="press-4")
    h.dec.flush()
    doc = json.loads((h.tmp / "spb.json").read_text())
    assert doc["version"] == 1
    again = h.new()
    assert again.is_stale("n1.press-4") and not again.is_stale("n1")
    res = again.decode("spBv1.0/g1/NDATA/n1", encode_payload(
        [metric(alias=2, value=4294967284, field="int_value")], seq=17), NOW)
    assert res.items == [Reading("n1", "Offset", T, -12.0)]
    assert h.rebirths == []
    assert not list(h.tmp.glob("*.tmp"))


def test_persistence_is_coalesced_until_flush(tmp_path: Path) -> None:
    h = Harness(tmp_path, persist_interval_s=60.0)
    h.clock[0] = 100.0
    born(h)  # the first BIRTH writes at once, the second waits
    again = h.new()
    with pytest.raises(DecodeError):
        again.decode("spBv1.0/g1/DDATA/n1/press-4", encode_payload(
            [metric(alias=1, value=1.0, field="float_value")], seq=2), NOW)
    h.dec.flush()
    again = h.new()
    assert again.decode("spBv1.0/g1/DDATA/n1/press-4", encode_payload(
        [metric(alias=1, value=1.0, field="float_value")], seq=2), NOW).items


@pytest.mark.parametrize("content", [b"{not json", b'{"version": 99, "nodes": []}',
                                     b'{"version": 1, "nodes": [{"group": "g"}]}', b"[]"])
def test_corrupt_cache_starts_empty(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "spb.json").write_bytes(content)
    h = Harness(tmp_path)
    assert h.reason("NDATA", encode_payload([metric(alias=1, value=1.0,
                                                    field="double_value")])) == "unknown_alias"


def test_unwritable_cache_does_not_break_decoding(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("")
    dec = SparkplugDecoder(tmp_path / "blocker" / "spb.json", lambda g, n: None,
                           persist_interval_s=0.0)
    res = dec.decode("spBv1.0/g1/NBIRTH/n1", encode_payload(BIRTH_METRICS, seq=0), NOW)
    assert res.items and dec.persist_errors == 1


# -- topics, payloads, helpers ------------------------------------------------------------------

@pytest.mark.parametrize(("topic", "reason"), [
    ("spBv1.0/g1/NDATA", "bad_topic"),
    ("spBv1.0/g1/XDATA/n1", "bad_topic"),
    ("spBv1.0/g1/DDATA/n1", "bad_topic"),            # device message without a device
    ("spBv1.0/g1/NDATA/n1/d1", "bad_topic"),         # node message with a device
    ("spBv1.0/g1/DDATA/n1/d1/x", "bad_topic"),
    ("spAv1.0/g1/NDATA/n1", "bad_topic"),
    ("spBv1.0/g1/NDATA/bad node", "bad_name"),
])
def test_bad_topics(h: Harness, topic: str, reason: str) -> None:
    with pytest.raises(DecodeError) as ei:
        h.dec.decode(topic, encode_payload([]), NOW)
    assert ei.value.reason == reason


def test_commands_and_state_are_ignored(h: Harness) -> None:
    topic, payload = rebirth_command("g1", "n1")
    assert h.dec.decode(topic, payload, NOW).items == []
    assert h.dec.decode("spBv1.0/STATE/host1", b'{"online": true}', NOW).items == []


def test_oversized_and_bad_protobuf(h: Harness) -> None:
    dec = SparkplugDecoder(h.tmp / "x.json", lambda g, n: None, max_bytes=10)
    with pytest.raises(DecodeError, match="oversized"):
        dec.decode("spBv1.0/g1/NDATA/n1", b"x" * 11, NOW)
    assert h.reason("NDATA", b"\xff\xff\xff\xff") == "bad_protobuf"


def test_rebirth_command_payload() -> None:
    topic, raw = rebirth_command("g1", "n1", now_ms=TS_MS)
    assert topic == "spBv1.0/g1/NCMD/n1"
    p = Payload.FromString(raw)
    (m,) = p.metrics
    assert (m.name, m.datatype, m.boolean_value, p.timestamp) == (REBIRTH_METRIC, 11, True, TS_MS)


def test_signal_names_are_made_safe() -> None:
    assert signal_name("Sensors/Motor Temp") == "Sensors.Motor_Temp"
    assert signal_name("temp") == "temp"
    assert signal_name("/lead") is None and signal_name("x" * 65) is None


def test_int32_minus_12_wire_bytes_match_the_spec() -> None:
    # Independent of our encoder: field 10 (int_value), varint 4294967284 = f4 ff ff ff 0f
    raw = encode_payload([metric("x", alias=1, dt=INT32, value=-12)], ts=None)
    assert b"\x50\xf4\xff\xff\xff\x0f" in raw
    assert struct.unpack("<i", struct.pack("<I", 4294967284))[0] == -12


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.sampled_from(["NBIRTH", "NDATA", "DBIRTH", "DDATA",
                                                 "NDEATH", "DDEATH"]))
def test_arbitrary_bytes_only_raise_decode_error(tmp_path_factory: Any, payload: bytes,
                                                 kind: str) -> None:
    dec = SparkplugDecoder(tmp_path_factory.mktemp("spb") / "c.json", lambda g, n: None)
    topic = f"spBv1.0/g/{kind}/n" + ("/d" if kind[0] == "D" else "")
    try:
        res = dec.decode(topic, payload, NOW)
    except DecodeError:
        return
    for r in res.items:
        assert r.value == r.value and abs(r.value) != float("inf")


def test_metric_names_with_control_characters_or_wildcards_are_refused(h: Harness) -> None:
    for bad in ("te\x00mp", "temp\n", "a+b", "a#"):
        assert signal_name(bad) is None, bad
    res = h.dec.decode("spBv1.0/g1/NBIRTH/n1", encode_payload(
        [metric("ok", alias=1, dt=DOUBLE, value=1.0),
         metric("bad\x00name", alias=2, dt=DOUBLE, value=2.0)], seq=0), NOW)
    assert [r.signal for r in res.items] == ["ok"] and res.dropped == {"bad_name": 1}
