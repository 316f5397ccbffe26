"""JSON payload decoding, plus the dead-letter file and rate-limited log it feeds."""

from __future__ import annotations

import base64
import json
import logging
import math
from pathlib import Path

import numpy as np
import orjson
import pytest

from edge.core.errors import DecodeError
from edge.ingest.deadletter import DeadLetter
from edge.ingest.decode import REASONS, DecodeResult, decode_json
from edge.ingest.ratelog import RateLimitedLog
from edge.ingest.readings import Reading, Series
from edge.ingest.topics import TopicMatch

SIG = TopicMatch("s1", "press-4", "temp")
ASSET = TopicMatch("s1", "press-4", None)
NOW = 1_718_000_100.0
T = 1_718_000_000.0  # 2024-06-10T06:13:20Z


def dec(match: TopicMatch, payload: bytes | str, max_bytes: int = 1 << 20) -> DecodeResult:
    raw = payload.encode() if isinstance(payload, str) else payload
    return decode_json(match, raw, NOW, max_bytes)


def reason_of(match: TopicMatch, payload: bytes | str) -> str:
    with pytest.raises(DecodeError) as ei:
        dec(match, payload)
    assert ei.value.reason in REASONS
    return ei.value.reason


# -- formats -----------------------------------------------------------------------------------

def test_single_reading() -> None:
    res = dec(SIG, '{"ts": 1718000000.25, "value": 71.3}')
    assert res.items == [Reading("press-4", "temp", T + 0.25, 71.3)]
    assert res.stamped_on_receipt == 0 and res.dropped is None


def test_several_signals_at_one_instant() -> None:
    res = dec(ASSET, '{"ts": "2024-06-10T06:13:20Z", "values": {"temp": 71.3, "vib_rms": 0.42}}')
    assert res.items == [Reading("press-4", "temp", T, 71.3),
                         Reading("press-4", "vib_rms", T, 0.42)]


def test_batch_becomes_one_series() -> None:
    values = np.sin(np.arange(4000) / 10.0)
    payload = orjson.dumps({"t0": 1718000000000, "dt": 0.0005, "values": values.tolist()})
    res = dec(SIG, payload)
    assert len(res.items) == 1
    s = res.items[0]
    assert isinstance(s, Series)
    assert (s.asset, s.signal, s.t0, s.dt) == ("press-4", "temp", T, 0.0005)
    assert s.values.dtype == np.float64
    np.testing.assert_array_equal(s.values, values)
    assert res.n_values == 4000


def test_list_of_readings_on_signal_topic() -> None:
    res = dec(SIG, '[{"ts": 1718000000, "value": 1}, {"ts": 1718000001, "value": 2.5}]')
    assert res.items == [Reading("press-4", "temp", T, 1.0),
                         Reading("press-4", "temp", T + 1, 2.5)]


def test_list_of_instants_on_asset_topic() -> None:
    res = dec(ASSET, '[{"ts": 1718000000, "values": {"a": 1, "b": 2}},'
                     ' {"ts": 1718000001, "values": {"a": 3}}]')
    assert res.items == [Reading("press-4", "a", T, 1.0), Reading("press-4", "b", T, 2.0),
                         Reading("press-4", "a", T + 1, 3.0)]


def test_bare_number_gets_receive_time_and_is_counted() -> None:
    res = dec(SIG, b" 71.3\n")
    assert res.items == [Reading("press-4", "temp", NOW, 71.3)]
    assert res.stamped_on_receipt == 1


def test_values_are_floats_even_from_json_ints() -> None:
    (r,) = dec(SIG, '{"ts": 1718000000, "value": 7}').items
    assert type(r.value) is float and type(r.ts) is float


# -- timestamps --------------------------------------------------------------------------------

@pytest.mark.parametrize("ts", [
    "1718000000", "1718000000000", "1718000000000000", "1718000000000000000",
    '"1718000000"', '"2024-06-10T06:13:20Z"', '"2024-06-10T08:13:20+02:00"',
    '"2024-06-10T06:13:20"', '"2024-06-10 06:13:20.000"', "1718000000.0",
])
def test_timestamp_forms(ts: str) -> None:
    (r,) = dec(SIG, f'{{"ts": {ts}, "value": 1}}').items
    assert r.ts == pytest.approx(T, abs=1e-6)


def test_ms_heuristic_boundary() -> None:
    # just under 1e11 is seconds (year 5138), at 1e11 it is milliseconds (1973)
    assert dec(SIG, '{"ts": 99999999999, "value": 1}').items[0].ts == 99999999999.0
    assert dec(SIG, '{"ts": 100000000000, "value": 1}').items[0].ts == 1e8


def test_timestamp_key_alias() -> None:
    (r,) = dec(SIG, '{"timestamp": 1718000000, "value": 1}').items
    assert r.ts == T


@pytest.mark.parametrize("ts", ["0", "-5", '"yesterday"', "true", "[1]", '"' + "9" * 80 + '"',
                                '"1969-12-31T00:00:00Z"', "{}"])
def test_bad_timestamps(ts: str) -> None:
    assert reason_of(SIG, f'{{"ts": {ts}, "value": 1}}') == "bad_timestamp"


@pytest.mark.parametrize("payload", ['{"value": 1}', '{"ts": null, "value": 1}'])
def test_missing_timestamp_uses_receive_time(payload: str) -> None:
    res = dec(SIG, payload)
    assert res.items[0].ts == NOW and res.stamped_on_receipt == 1


def test_missing_timestamp_on_multi_counts_each_kept_value() -> None:
    res = dec(ASSET, '{"values": {"a": 1, "b": true, "c": 3}}')
    assert [r.ts for r in res.items] == [NOW, NOW]
    assert res.stamped_on_receipt == 2 and res.dropped == {"bad_type": 1}


def test_batch_without_t0_ends_at_receive_time() -> None:
    res = dec(SIG, '{"dt": 0.5, "values": [1, 2, 3]}')
    (s,) = res.items
    assert isinstance(s, Series)
    assert s.t0 + 2 * s.dt == NOW and res.stamped_on_receipt == 3


# -- bad values: drop the value, keep the rest ---------------------------------------------------

def test_nan_literal_drops_only_that_value() -> None:
    res = dec(ASSET, '{"ts": 1718000000, "values": {"a": NaN, "b": 2, "c": Infinity}}')
    assert res.items == [Reading("press-4", "b", T, 2.0)]
    assert res.dropped == {"non_finite": 2}
    # Which sensor sent no number survives the decoder (for the sensor-fault alert).
    assert res.nonfinite == {("press-4", "a"): (1, T), ("press-4", "c"): (1, T)}


def test_clean_payloads_report_no_non_finite_values() -> None:
    for match, payload in ((ASSET, '{"ts": 1718000000, "values": {"a": 1.5, "b": 2}}'),
                           (SIG, '{"t0": 1718000000, "dt": 1, "values": [1.0, 2.0]}'),
                           (SIG, '[{"ts": 1718000000, "value": 1.0}]'), (SIG, "3.5")):
        assert dec(match, payload).nonfinite is None


@pytest.mark.parametrize("value", ['"NaN"', '"inf"', '"-Infinity"', "NaN", "-Infinity", "1e400"])
def test_single_non_finite_value_is_reported_with_its_signal(value: str) -> None:
    res = dec(SIG, f'{{"ts": 1718000000, "value": {value}}}')
    assert res.items == [] and res.dropped == {"non_finite": 1}
    assert res.nonfinite == {("press-4", "temp"): (1, T)}
    assert res.nonfinite_detail() == "no finite number from press-4/temp = NaN/Inf x1"


@pytest.mark.parametrize("payload", [b"NaN", b"nan", b"-inf", b"Infinity"])
def test_bare_non_finite(payload: bytes) -> None:
    res = dec(SIG, payload)  # on a signal topic: reported at the receive time
    assert res.items == [] and res.nonfinite == {("press-4", "temp"): (1, NOW)}
    with pytest.raises(DecodeError):  # no signal named: rejected as before
        dec(ASSET, payload)


def test_non_finite_in_lists_keeps_each_timestamp() -> None:
    res = dec(SIG, '[{"ts": 1718000000, "value": 1}, {"ts": 1718000001, "value": NaN},'
                   ' {"ts": 1718000002, "value": "inf"}, {"value": 4}]')
    assert [r.value for r in res.items] == [1.0, 4.0]
    assert res.nonfinite == {("press-4", "temp"): (2, T + 2)}
    res = dec(ASSET, '[{"ts": 1718000000, "values": {"a": NaN, "b": 1}},'
                     ' {"ts": 1718000001, "values": {"a": NaN, "b": 2}}]')
    assert res.nonfinite == {("press-4", "a"): (2, T + 1)} and len(res.items) == 2


@pytest.mark.parametrize("value", ["true", "false", "null", '"warm"', "[1]", '{"v": 1}'])
def test_non_numbers_are_bad_type(value: str) -> None:
    assert reason_of(SIG, f'{{"ts": 1718000000, "value": {value}}}') == "bad_type"


def test_numeric_string_is_accepted() -> None:
    assert dec(SIG, '{"ts": 1718000000, "value": "71.5"}').items[0].value == 71.5


def test_batch_with_bad_samples_splits_into_exact_runs() -> None:
    res = dec(SIG, '{"t0": 1718000000, "dt": 0.5, "values": [1, 2, NaN, 4, "x", true, 7, 8]}')
    runs = [(s.t0, s.values.tolist()) for s in res.items if isinstance(s, Series)]
    assert runs == [(T, [1.0, 2.0]), (T + 1.5, [4.0]), (T + 3.0, [7.0, 8.0])]
    assert res.dropped == {"non_finite": 1, "bad_type": 2}
    assert res.nonfinite == {("press-4", "temp"): (1, T + 1.0)}  # sample 2, at t0 + 2 * dt
    assert all(isinstance(s, Series) and s.dt == 0.5 for s in res.items)


def test_batch_leading_and_trailing_bad_samples() -> None:
    res = dec(SIG, '{"t0": 1718000000, "dt": 1, "values": [NaN, 1, 2, NaN]}')
    (s,) = res.items
    assert isinstance(s, Series) and s.t0 == T + 1 and s.values.tolist() == [1.0, 2.0]
    assert res.dropped == {"non_finite": 2}
    assert res.nonfinite == {("press-4", "temp"): (2, T + 3)}


def test_batch_of_only_non_finite_samples_is_reported_not_rejected() -> None:
    res = dec(SIG, '{"t0": 1718000000, "dt": 1, "values": [NaN, NaN, true]}')
    assert res.items == [] and res.dropped == {"non_finite": 2, "bad_type": 1}
    assert res.nonfinite == {("press-4", "temp"): (2, T + 1)}
    assert reason_of(SIG, '{"t0": 1718000000, "dt": 1, "values": [true, "x"]}') == "bad_type"


def test_bad_names_in_values_are_dropped() -> None:
    res = dec(ASSET, '{"ts": 1718000000, "values": {"ok": 1, "bad name": 2, "../x": 3}}')
    assert res.items == [Reading("press-4", "ok", T, 1.0)]
    assert res.dropped == {"bad_name": 2}


def test_bad_rows_in_a_list_are_dropped() -> None:
    res = dec(SIG, '[{"ts": 1718000000, "value": 1}, 5, {"ts": 1718000001},'
                   ' {"ts": "nope", "value": 2}, {"ts": 1718000002, "value": null}]')
    assert res.items == [Reading("press-4", "temp", T, 1.0)]
    assert res.dropped == {"bad_shape": 2, "bad_timestamp": 1, "bad_type": 1}


# -- whole-message reasons ---------------------------------------------------------------------

def test_oversized() -> None:
    with pytest.raises(DecodeError) as ei:
        decode_json(SIG, b"1" * 101, NOW, 100)
    assert ei.value.reason == "oversized"
    assert decode_json(SIG, b"1" * 100, NOW, 100).items[0].value == float("1" * 100)


@pytest.mark.parametrize("payload", [b"", b"  ", b"{", b"\xff\xfe", b"{'ts': 1}", b"[1,]",
                                     b"[" * 5000 + b"NaN" + b"]" * 5000])
def test_malformed_json(payload: bytes) -> None:
    assert reason_of(SIG, payload) == "malformed_json"


@pytest.mark.parametrize(("match", "payload"), [
    (ASSET, '{"ts": 1, "value": 1}'),                 # value on an asset topic
    (SIG, '{"ts": 1, "values": {"a": 1}}'),           # values object on a signal topic
    (ASSET, '{"t0": 1, "dt": 1, "values": [1]}'),     # batch on an asset topic
    (ASSET, "71.3"),                                  # bare number on an asset topic
    (SIG, '{"ts": 1, "value": 1, "values": [1]}'),
    (SIG, '{"ts": 1}'),
    (SIG, "[]"),
    (SIG, "[1, 2, 3]"),
    (SIG, '{"t0": 1, "dt": 1, "values": []}'),
    (SIG, '{"t0": 1, "dt": 0, "values": [1]}'),
    (SIG, '{"t0": 1, "dt": true, "values": [1]}'),
    (SIG, '{"t0": 1, "values": [1]}'),
    (SIG, '{"t0": 1, "dt": 1e9, "values": [1]}'),
])
def test_bad_shape(match: TopicMatch, payload: str) -> None:
    assert reason_of(match, payload) == "bad_shape"


@pytest.mark.parametrize("payload", ["true", '"71.3"', "null"])
def test_top_level_non_numbers(payload: str) -> None:
    assert reason_of(SIG, payload) == "bad_type"


def test_huge_integer_from_the_fallback_parser_is_non_finite() -> None:
    big = "1" + "0" * 400
    res = dec(ASSET, f'{{"ts": 1718000000, "values": {{"a": {big}, "b": NaN, "c": 1}}}}')
    assert res.items == [Reading("press-4", "c", T, 1.0)]
    assert res.dropped == {"non_finite": 2}


def test_decode_error_carries_detail() -> None:
    with pytest.raises(DecodeError) as ei:
        dec(SIG, '{"ts": 1, "value": true}')
    assert "boolean" in ei.value.detail


# -- dead-letter file --------------------------------------------------------------------------

def test_dead_letter_records_topic_reason_and_first_bytes(tmp_path: Path) -> None:
    dl = DeadLetter(tmp_path / "dead.jsonl", max_bytes=100_000)
    payload = b"\xff{bad" + b"x" * 1000
    dl.write(NOW, "forewarn/s1/p/t", "malformed_json", payload, "unexpected character")
    dl.close()
    (line,) = (tmp_path / "dead.jsonl").read_text().splitlines()
    rec = json.loads(line)
    assert rec["topic"] == "forewarn/s1/p/t" and rec["reason"] == "malformed_json"
    assert rec["size"] == len(payload) and rec["ts"] == NOW
    assert base64.b64decode(rec["head_b64"]) == payload[:256]
    assert rec["head"].startswith("\\xff{bad")


def test_dead_letter_rotates_within_budget(tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    dl = DeadLetter(path, max_bytes=20_000)
    for i in range(1000):
        dl.write(NOW, f"t/{i}", "bad_type", b"y" * 300)
    dl.close()
    rotated = tmp_path / "dead.jsonl.1"
    assert rotated.exists()
    assert path.stat().st_size + rotated.stat().st_size <= 20_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dead.jsonl", "dead.jsonl.1"]
    last = json.loads(path.read_text().splitlines()[-1])
    assert last["topic"] == "t/999"  # the newest record survives rotation
    assert dl.written == 1000


def test_dead_letter_disabled_and_unwritable(tmp_path: Path) -> None:
    off = DeadLetter(tmp_path / "off.jsonl", max_bytes=0)
    off.write(NOW, "t", "bad_type", b"x")
    assert not (tmp_path / "off.jsonl").exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    broken = DeadLetter(blocker / "dead.jsonl", max_bytes=1000)  # parent is a file
    broken.write(NOW, "t", "bad_type", b"x")  # must not raise
    assert broken.write_errors == 1


# -- rate-limited log --------------------------------------------------------------------------

def test_rate_limited_log_counts_suppressed_repeats(caplog: pytest.LogCaptureFixture) -> None:
    t = [0.0]
    rl = RateLimitedLog(logging.getLogger("t.rl"), interval_s=10, clock=lambda: t[0])
    with caplog.at_level(logging.WARNING, logger="t.rl"):
        assert rl.warning("a", "bad %s", 1)
        for _ in range(5):
            assert not rl.warning("a", "bad %s", 1)
        assert rl.warning("b", "other")  # keys are independent
        assert rl.suppressed("a") == 5
        t[0] = 10.5
        assert rl.warning("a", "bad %s", 2)
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["bad 1", "other", "bad 2 (+5 similar in the last 10 s)"]
    assert rl.suppressed("a") == 0


def test_rate_limited_log_key_table_is_bounded() -> None:
    rl = RateLimitedLog(logging.getLogger("t.rl2"), interval_s=60, clock=lambda: 0.0, max_keys=8)
    for i in range(100):
        rl.warning(f"k{i}", "x")
    assert len(rl._last) <= 8


def test_reasons_are_a_small_fixed_vocabulary() -> None:
    assert len(REASONS) < 20 and all(r.isidentifier() for r in REASONS)
    assert math.isfinite(dec(SIG, "1").items[0].value)
