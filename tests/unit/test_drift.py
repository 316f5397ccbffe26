"""Drift accumulators: PSI/KS/mean-shift math, interval closing, calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge.drift.monitor import (
    RULE,
    SCORE_KEY,
    TARGET_INTERVAL_RATE,
    BinnedDrift,
    DriftMonitor,
    calibrate_thresholds,
    reference_histogram,
)
from edge.models.bundle import DriftCalibration, Histogram, Manifest


def manifest(names: list[str], hists: dict[str, Histogram], score: Histogram | None,
             thresholds: dict[str, float] | DriftCalibration) -> Manifest:
    return Manifest.model_validate({
        "schema_version": 2,  # schema 2: drift needs no alert_policy
        "name": "m", "version": "1", "signals": [{"name": "s"}], "sample_period_s": 1.0,
        "window": 4, "hop": 4,
        "output": {"kind": "anomaly", "score_output": "score", "alert_when": "above",
                   "feature_names": names},
        "thresholds": {"warning": 2.0},
        "reference": {"features": hists, "score": score},
        "drift_thresholds": thresholds, "model_sha256": "ab" * 32,
    })


def test_psi_matches_hand_computation_with_smoothing() -> None:
    ref = Histogram(edges=[0.0], proportions=[0.5, 0.5], mean=0.0, std=1.0)
    d = BinnedDrift(ref)
    d.update(np.array([1.0, 2.0, 3.0, 4.0]))  # all four in the upper bin
    p = np.array([0.5, 4.5]) / 5.0
    q = np.array([2.5, 2.5]) / 5.0
    assert d.psi() == pytest.approx(float(np.sum((p - q) * np.log(p / q))))
    assert math.isfinite(d.psi())  # the empty bin is smoothed, not dropped
    assert d.ks() == pytest.approx(0.5)


def test_edges_inner_and_outer_bins_open() -> None:
    ref = Histogram(edges=[0.0, 1.0], proportions=[0.3, 0.4, 0.3], mean=0.5, std=1.0)
    d = BinnedDrift(ref)
    d.update(np.array([-1e300, -0.0, 0.0, 0.999, 1.0, 1e300, np.nan, np.inf]))
    assert d.counts.tolist() == [1, 3, 2]  # an edge value belongs to the bin above it
    assert d.nonfinite == 2


def test_mean_shift_in_reference_std_units_and_reset() -> None:
    ref = Histogram(edges=[0.0], proportions=[0.5, 0.5], mean=10.0, std=2.0)
    d = BinnedDrift(ref)
    d.update(np.full(10, 13.0))
    assert d.mean_shift() == pytest.approx(1.5)
    d.reset()
    assert d.count == 0 and math.isnan(d.psi()) and math.isnan(d.mean_shift())


def test_matching_distribution_scores_zero() -> None:
    x = np.arange(1000.0)
    d = BinnedDrift(reference_histogram(x, 10))
    d.update(x)
    assert d.psi() == pytest.approx(0.0, abs=1e-12)
    assert d.ks() == pytest.approx(0.0, abs=1e-12)


def test_monitor_closes_intervals_across_batches_and_flags_alarm() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=5000)
    h = reference_histogram(ref)
    m = manifest(["a", "b"], {"a": h, "b": h}, h, {"a": 0.3, "b": 0.3, SCORE_KEY: 0.3})
    mon = DriftMonitor(m, interval_windows=100)
    feats = rng.normal(size=(250, 2))
    feats[:, 1] += 2.0  # feature b drifts
    scores = rng.normal(size=250)
    out = mon.update(feats[:130], scores[:130]) + mon.update(feats[130:], scores[130:])
    assert [iv.index for iv in out] == [0, 1]
    assert all(iv.windows == 100 for iv in out)
    assert [f.alarm for f in out[0].features] == [False, True]
    assert out[0].alarm and out[0].score is not None and not out[0].score.alarm
    assert 0 < out[0].alert_rate < 0.1  # scores > warning 2.0 for a standard normal
    assert out[0].features[1].mean_shift == pytest.approx(2.0, abs=0.4)


def test_monitor_missing_and_explicit_breaches() -> None:
    h = reference_histogram(np.arange(100.0))
    mon = DriftMonitor(manifest(["a"], {"a": h}, None, {}), interval_windows=4)
    (iv,) = mon.update(np.zeros((4, 1)), np.zeros(4), missing=np.array([0, 0.5, 1, 0.5]),
                       breaches=np.array([True, False, False, False]))
    assert iv.missing_rate == pytest.approx(0.5)
    assert iv.alert_rate == pytest.approx(0.25)
    assert iv.score is None


def test_monitor_rejects_wrong_shape() -> None:
    h = reference_histogram(np.arange(100.0))
    mon = DriftMonitor(manifest(["a"], {"a": h}, None, {}), interval_windows=4)
    with pytest.raises(ValueError, match="do not match"):
        mon.update(np.zeros((4, 2)), np.zeros(4))


def test_calibration_follows_autocorrelation() -> None:
    rng = np.random.default_rng(2)
    iid = rng.normal(size=20_000)
    walk = np.convolve(rng.normal(size=20_100), np.ones(100) / 10, mode="valid")[:20_000]
    th = calibrate_thresholds(np.c_[iid, walk], ["iid", "ar"],
                              {"iid": reference_histogram(iid), "ar": reference_histogram(walk)},
                              interval=200)
    # slowly wandering data needs a much higher PSI threshold than i.i.d. data
    assert th.psi["ar"] > 3 * th.psi["iid"]
    assert th.mean_shift["ar"] > 3 * th.mean_shift["iid"]
    with pytest.raises(ValueError, match="2 chunks"):
        calibrate_thresholds(np.c_[iid[:300]], ["iid"], {"iid": reference_histogram(iid)}, 200)


def test_calibrated_stats_match_the_live_accumulator() -> None:
    rng = np.random.default_rng(3)
    x = np.cumsum(rng.normal(size=3000))[:, None]
    x[5, 0] = np.nan  # non-finite values are skipped as live
    h = reference_histogram(x[np.isfinite(x[:, 0]), 0])
    cal = calibrate_thresholds(x, ["a"], {"a": h}, interval=100)
    # recompute the threshold from BinnedDrift on the same chunks: same PSI and mean shift
    acc, psi, ms = BinnedDrift(h), [], []
    for s in range(0, 2901, 10):
        acc.reset()
        acc.update(x[s:s + 100, 0])
        psi.append(acc.psi())
        ms.append(acc.mean_shift())
    assert cal.k is not None
    assert cal.psi["a"] == pytest.approx(np.mean(psi) + cal.k * np.std(psi, ddof=1))
    assert cal.mean_shift["a"] == pytest.approx(cal.k * np.sqrt(np.mean(np.square(ms))))
    assert (cal.over, cal.of) == RULE and cal.interval_windows == 100
    assert cal.evidence["intervals_evaluated"] == len(psi)


def test_calibration_is_family_wise() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(20_000, 12))
    names = [f"f{j}" for j in range(12)]
    hists = {n: reference_histogram(x[:, j]) for j, n in enumerate(names)}
    one = calibrate_thresholds(x[:, :1], names[:1], hists, 100)
    all_ = calibrate_thresholds(x, names, hists, 100)
    assert all_.expected_interval_rate is not None
    assert all_.expected_interval_rate <= TARGET_INTERVAL_RATE
    # more features, more chances of a false alarm: each threshold must rise
    assert all_.k is not None and one.k is not None and all_.k > one.k
    loose = calibrate_thresholds(x, names, hists, 100, target_rate=0.2)
    assert loose.k is not None and loose.k < all_.k
    with pytest.raises(ValueError, match="rule"):
        calibrate_thresholds(x, names, hists, 100, rule=(3, 2))


def test_monitor_alarm_needs_persistence() -> None:
    h = Histogram(edges=[0.0], proportions=[0.5, 0.5], mean=0.0, std=1.0)
    cal = DriftCalibration(psi={"a": 0.3}, mean_shift={"a": 0.5}, over=2, of=3)
    mon = DriftMonitor(manifest(["a"], {"a": h}, None, cal), interval_windows=4)
    calm = np.array([[-1.0], [1.0], [-1.0], [1.0]])  # matches the reference halves
    moved = calm + 0.8  # half a std past the mean-shift threshold; bins unchanged
    out = [mon.update(b, np.zeros(4))[0].features[0]
           for b in (moved, calm, moved, moved, calm, calm, moved)]
    assert [f.over for f in out] == [True, False, True, True, False, False, True]
    # 2 of the last 3: the first over has no history, the third has one, ...
    assert [f.alarm for f in out] == [False, False, True, True, False, False, False]
    assert out[0].psi < 0.3 < 0.5 < out[0].mean_shift == pytest.approx(0.8)
    assert out[0].mean_shift_threshold == 0.5


def test_legacy_flat_thresholds_alarm_alone() -> None:
    h = Histogram(edges=[0.0], proportions=[0.5, 0.5], mean=0.0, std=1.0)
    m = manifest(["a"], {"a": h}, None, {"a": 0.3})
    assert m.drift_thresholds == DriftCalibration(psi={"a": 0.3})
    assert (m.drift_thresholds.over, m.drift_thresholds.of) == (1, 1)
    (iv,) = DriftMonitor(m, interval_windows=4).update(np.full((4, 1), 5.0), np.zeros(4))
    assert iv.alarm and math.isnan(iv.features[0].mean_shift_threshold)


def test_reporter_warns_when_the_interval_differs_from_the_calibrated_one(
        caplog: pytest.LogCaptureFixture) -> None:
    from edge.drift.reporting import _check_interval

    h = reference_histogram(np.arange(100.0))
    m = manifest(["a"], {"a": h}, None, DriftCalibration(psi={"a": 0.3}, interval_windows=360))
    _check_interval(m, 360)
    assert not caplog.records
    _check_interval(m, 60)
    assert "drift.interval_windows=60" in caplog.text and "360 windows" in caplog.text
