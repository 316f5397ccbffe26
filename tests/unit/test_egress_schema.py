"""The egress allow-list: unknown fields refused, k enforced, bins merged, merges."""

from __future__ import annotations

import json

import pytest

from edge.core.config import EgressConfig
from edge.core.errors import EgressError
from edge.drift.monitor import DriftInterval, FeatureDrift
from edge.egress.schema import build_report, merge_bins, merge_payloads, parse, validate


def interval(index: int = 0, windows: int = 40, counts: tuple[int, ...] = (10, 2, 20, 8),
             psi: float = 0.1, alarm: bool = False) -> DriftInterval:
    f = FeatureDrift(index=0, name="pump3_bearing_temp_mean", psi=psi, ks=0.2,
                     mean_shift=0.123456789, threshold=0.3, alarm=alarm, counts=counts)
    return DriftInterval(model_name="m", model_version="1", model_sha256="cd" * 32, group=0,
                         index=index, windows=windows, features=(f,), score=f,
                         missing_rate=0.05, alert_rate=0.0, closed_at=1_700_000_123.456,
                         first_ts=1_699_999_000.25, last_ts=1_700_000_100.75)


CFG = EgressConfig(site_id="s-01", k=20)


def test_report_has_only_allowed_scalars() -> None:
    payload = build_report(interval(), CFG)
    assert payload is not None
    doc = json.loads(payload)
    assert set(doc) == {"schema_version", "site_id", "model", "group", "interval_first",
                        "interval_last", "intervals", "hour", "windows", "missing_rate",
                        "alert_rate", "alarm", "features", "score"}
    assert doc["hour"] == 1_700_000_123 // 3600
    assert doc["features"][0] == {"i": 0, "psi": 0.1, "ks": 0.2, "ms": 0.1235, "th": 0.3,
                                  "alarm": False}
    assert b"pump3" not in payload  # feature names stay on site
    assert b"1699999000" not in payload and b"1700000100" not in payload


def test_canonical_and_deterministic() -> None:
    assert build_report(interval(), CFG) == build_report(interval(), CFG)


def test_small_groups_suppressed() -> None:
    assert build_report(interval(windows=19, counts=(19,)), CFG) is None
    data = json.loads(build_report(interval(), CFG) or b"")
    data["windows"] = 5
    with pytest.raises(EgressError, match="below k"):
        validate(data, k=20)


@pytest.mark.parametrize("where", ["top", "feature"])
def test_unknown_field_refused(where: str) -> None:
    data = json.loads(build_report(interval(), CFG) or b"")
    (data if where == "top" else data["features"][0])["raw_value"] = 123456.789012
    with pytest.raises(EgressError, match="raw_value"):
        validate(data)


def test_strings_and_non_finite_refused() -> None:
    data = json.loads(build_report(interval(), CFG) or b"")
    data["features"][0]["psi"] = "0.1"
    with pytest.raises(EgressError):
        validate(data)
    data["features"][0]["psi"] = float("nan")
    with pytest.raises(EgressError):
        validate(data)


def test_bins_opt_in_merged_to_k_and_totals_consistent() -> None:
    assert "bins" not in json.loads(build_report(interval(), CFG) or b"")["features"][0]
    cfg = EgressConfig(site_id="s-01", k=20, include_bins=True)
    doc = json.loads(build_report(interval(), cfg) or b"")
    # 10+2+20 reaches k; the trailing 8 cannot stand alone and joins its neighbour
    assert doc["features"][0]["bins"] == [{"width": 4, "count": 40}]
    doc = json.loads(build_report(interval(windows=60, counts=(25, 0, 30, 5)), cfg) or b"")
    assert doc["features"][0]["bins"] == [{"width": 1, "count": 25}, {"width": 3, "count": 35}]
    # counts not adding up to the windows (non-finite values) are not sent at all
    doc = json.loads(build_report(interval(counts=(10, 2, 20, 5)), cfg) or b"")
    assert "bins" not in doc["features"][0]


def test_merge_bins() -> None:
    assert [(b.width, b.count) for b in merge_bins([5, 5, 5], 20)] == [(3, 15)]
    assert [(b.width, b.count) for b in merge_bins([25, 0, 30], 20)] == [(1, 25), (2, 30)]


def test_merge_reports_weighted_and_alarm_or() -> None:
    a = build_report(interval(0, windows=40, psi=0.1), CFG) or b""
    b = build_report(interval(1, windows=120, counts=(30, 30, 30, 30), psi=0.5, alarm=True),
                     CFG) or b""
    m = parse(merge_payloads(a, b))
    assert (m.interval_first, m.interval_last, m.intervals, m.windows) == (0, 1, 2, 160)
    assert m.features[0].psi == pytest.approx((0.1 * 40 + 0.5 * 120) / 160, abs=1e-4)
    assert m.features[0].alarm and m.alarm


def test_merge_refuses_different_models() -> None:
    a = build_report(interval(0), CFG) or b""
    other = json.loads(build_report(interval(1), CFG) or b"")
    other["model"] = "ef" * 32
    with pytest.raises(EgressError, match="cannot merge"):
        merge_payloads(a, json.dumps(other).encode())
