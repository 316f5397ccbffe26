"""Shadow comparison: streaming statistics equal their batch definitions, bounded memory."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge.models.shadow import LatencyHistogram, ShadowComparator


def _feed(s: ShadowComparator, a: np.ndarray, c: np.ndarray,
          ab: np.ndarray | None = None, cb: np.ndarray | None = None) -> None:
    ab = np.zeros(len(a), bool) if ab is None else ab
    cb = np.zeros(len(a), bool) if cb is None else cb
    for i in range(len(a)):
        s.update(f"asset{i % 7}", float(i), float(a[i]), float(c[i]), 0.001, 0.002,
                 bool(ab[i]), bool(cb[i]))


def test_streaming_correlation_equals_numpy() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(100, 5, 5000)  # offset: naive sum-of-squares would lose precision
    c = 0.6 * a + rng.normal(0, 4, 5000)
    s = ShadowComparator()
    _feed(s, a, c)
    assert s.correlation == pytest.approx(np.corrcoef(a, c)[0, 1], abs=1e-9)
    snap = s.snapshot()
    assert snap["windows"] == snap["compared"] == 5000
    assert snap["mean_abs_diff"] == pytest.approx(np.mean(np.abs(c - a)))


def test_anti_correlated_and_degenerate_cases() -> None:
    s = ShadowComparator()
    _feed(s, np.arange(10.0), -np.arange(10.0))
    assert s.correlation == pytest.approx(-1.0)
    flat = ShadowComparator()
    _feed(flat, np.ones(10), np.arange(10.0))  # a constant active score has no correlation
    assert flat.correlation is None
    assert ShadowComparator().snapshot()["correlation"] is None


def test_non_finite_scores_count_as_errors_and_stay_out_of_the_correlation() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=200)
    c = a + rng.normal(scale=0.1, size=200)
    c_broken = c.copy()
    c_broken[::10] = np.nan
    c_broken[5] = np.inf
    s = ShadowComparator()
    _feed(s, a, c_broken)
    keep = np.isfinite(c_broken)
    assert s.errors == {"active": 0, "candidate": 21}
    assert s.n == int(keep.sum())
    assert s.correlation == pytest.approx(np.corrcoef(a[keep], c[keep])[0, 1], abs=1e-9)
    assert math.isfinite(s.snapshot()["mean_abs_diff"])


def test_alert_agreement_confusion_matrix_and_kappa() -> None:
    ab = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], bool)  # active opened 3
    cb = np.array([1, 1, 0, 1, 1, 0, 0, 0, 0, 0], bool)  # candidate would have opened 4
    s = ShadowComparator()
    _feed(s, np.arange(10.0), np.arange(10.0), ab, cb)
    al = s.snapshot()["alerts"]
    assert (al["opened"], al["would_have_opened"]) == (3, 4)
    assert (al["both"], al["active_only"], al["candidate_only"], al["neither"]) == (2, 1, 2, 5)
    assert al["agreement"] == pytest.approx(0.7)
    chance = 0.3 * 0.4 + 0.7 * 0.6
    assert al["kappa"] == pytest.approx((0.7 - chance) / (1 - chance))


def test_identical_alerts_have_full_agreement() -> None:
    b = np.array([1, 0, 0, 1, 0], bool)
    s = ShadowComparator()
    _feed(s, np.arange(5.0), np.arange(5.0), b, b)
    assert s.agreement == 1.0 and s.kappa == pytest.approx(1.0)


def test_latency_quantiles_are_close_to_exact_ones() -> None:
    rng = np.random.default_rng(3)
    lat = rng.lognormal(mean=math.log(0.002), sigma=0.8, size=20_000)
    h = LatencyHistogram()
    for x in lat:
        h.update(float(x))
    for q in (0.5, 0.99):
        exact = float(np.quantile(lat, q))
        got = h.quantile(q)
        assert got is not None and abs(got - exact) / exact < 0.03, (q, got, exact)


def test_latency_memory_is_bounded_and_extremes_are_kept() -> None:
    h = LatencyHistogram()
    size = len(h.counts)
    for i in range(100_000):
        h.update(1e-4 * (1 + i % 100))
    h.update(1e-9)
    h.update(500.0)  # beyond the top bucket: counted, reported as the max
    h.update(float("nan"))  # ignored
    assert len(h.counts) == size and h.count == 100_002
    assert h.quantile(1.0) == 500.0 and h.quantile(0.0) is not None
    assert LatencyHistogram().quantile(0.5) is None


def test_snapshot_reports_both_latencies() -> None:
    s = ShadowComparator()
    for i in range(100):
        s.update("m", float(i), 1.0, 1.0, 0.001, 0.050, False, False)
    lat = s.snapshot()["latency_s"]
    assert lat["active"]["p99"] == pytest.approx(0.001, rel=0.03)
    assert lat["candidate"]["p50"] == pytest.approx(0.050, rel=0.03)
    assert lat["candidate"]["count"] == 100
    assert s.snapshot()["last_ts"] == 99.0
