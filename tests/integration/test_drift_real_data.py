"""Drift on real healthy data: the calibrated rule keeps intervals with any false
alarm at or under 2% and catches a +0.5 sigma shift in one feature within 3 intervals.

Data (the public data sets in ``shared/datasets`` beside the checkout, not shipped;
skipped when absent):
* C-MAPSS FD001 train (NASA, Saxena et al. PHM 2008): first 100 cycles of each
  engine = healthy early life; features are the non-constant sensors per cycle.
  As in the agent, one monitor per model pools the fleet: windows arrive
  interleaved in time (cycle by cycle), an interval = one cycle of 50 engines.
  Engines 1-50 give the reference and calibration, engines 51-100 are held out.
  (Per engine, unit-to-unit offsets of ~0.8 sigma hide a 0.5 sigma shift.)
* SKAB anomaly-free.csv (Skoltech, GPL-3.0): 8 sensors at 1 Hz; alternating
  500-second blocks give the reference (even) and held-out (odd) parts; an
  interval = 100 s.

Held-out discipline: the reference part alone gives the histograms and
:func:`calibrate_thresholds`; every measured interval is one it never saw.
Swapping the parts is not asserted: engines 1-50 drift by up to +0.3 sigma on
one steady sensor late in early life, and SKAB's first 500 s (an even block)
are a start-up regime 2.4 sigma off; a reference that never saw them flags
them, as a detector of 0.5 sigma shifts must.

Measured quantities (the issue's):
* false alarm rate = share of held-out healthy intervals with *any* alarm
  (``DriftInterval.alarm``, every feature together), <= 2%;
* detection: the held-out half runs healthy, then from its middle interval on
  one feature is shifted by +0.5 reference sigma; the first alarm of that
  feature must come at most 2 intervals after the onset, i.e. within the first
  3 shifted intervals (the 2-of-3 rule cannot alarm before the 2nd), and it must
  stay alarmed in most shifted intervals. The feature is the continuous one
  (10 distinct quantile edges) whose interval means wander least in the
  reference (std of chunk means in reference std units), chosen from the
  reference only. Features whose natural interval-to-interval wander exceeds
  0.5 sigma (unit-to-unit offsets in C-MAPSS, slow temperature drift in SKAB)
  cannot show a 0.5 sigma shift at this false alarm rate, by any statistic.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from edge.drift.monitor import (
    RULE,
    TARGET_INTERVAL_RATE,
    DriftMonitor,
    calibrate_thresholds,
    reference_histogram,
)
from edge.models.bundle import Manifest

BINS = 10
MAX_FALSE_ALARM_RATE = 0.02  # the bar, per interval
MAX_DELAY = 2  # intervals after the onset; the first alarm is possible at delay RULE[0] - 1


def manifest_for(ref: np.ndarray, interval: int) -> Manifest:
    names = [f"f{j}" for j in range(ref.shape[1])]
    hists = {n: reference_histogram(ref[:, j], BINS) for j, n in enumerate(names)}
    cal = calibrate_thresholds(ref, names, hists, interval)
    m = Manifest.model_validate({
        "schema_version": 2,  # schema 2: drift needs no alert_policy
        "name": "m", "version": "1", "signals": [{"name": "s"}], "sample_period_s": 1.0,
        "window": 2, "hop": 1,
        "output": {"kind": "anomaly", "score_output": "score", "alert_when": "above",
                   "feature_names": names},
        "thresholds": {"warning": 1e9},
        "reference": {"features": {n: h.model_dump() for n, h in hists.items()}},
        "drift_thresholds": cal, "model_sha256": "ab" * 32,
    })
    # what the agent reads is what the trainer wrote: the rule survives the JSON file
    return Manifest.model_validate_json(m.model_dump_json())


def run(m: Manifest, x: np.ndarray, interval: int) -> tuple[np.ndarray, np.ndarray]:
    """Interval alarms [intervals] and per-feature alarms [intervals, features]."""
    ivs = DriftMonitor(m, interval).update(x, np.zeros(x.shape[0]))
    return (np.array([iv.alarm for iv in ivs]),
            np.array([[f.alarm for f in iv.features] for iv in ivs], dtype=bool))


def steadiest(m: Manifest, ref: np.ndarray, interval: int) -> int:
    """Continuous feature (all quantile edges distinct) whose chunk means wander least."""
    n = ref.shape[0] // interval
    wander = ref[: n * interval].reshape(n, interval, -1).mean(1).std(0) / ref.std(0)
    hists = m.reference.features
    continuous = np.array([len(set(hists[f"f{j}"].edges)) == BINS - 1
                           for j in range(ref.shape[1])])
    return int(np.argmin(np.where(continuous, wander, np.inf)))


def check(name: str, ref: np.ndarray, held: np.ndarray, interval: int) -> None:
    m = manifest_for(ref, interval)
    cal = m.drift_thresholds
    assert (cal.over, cal.of) == RULE and cal.interval_windows == interval
    assert cal.expected_interval_rate is not None
    assert cal.expected_interval_rate <= TARGET_INTERVAL_RATE
    assert set(cal.psi) == set(cal.mean_shift) == set(m.output.feature_names)

    fa, _ = run(m, held, interval)
    print(f"{name}: k={cal.k:.2f}, reference interval rate {cal.expected_interval_rate:.2%} "
          f"over {cal.evidence['intervals_evaluated']:.0f}; held-out {fa.size} intervals x "
          f"{ref.shape[1]} features: {fa.sum()} with any alarm = {fa.mean():.2%}")
    assert fa.size >= 40
    assert fa.mean() <= MAX_FALSE_ALARM_RATE

    j = steadiest(m, ref, interval)
    onset = fa.size // 2
    shifted = held.copy()
    shifted[onset * interval:, j] += 0.5 * ref[:, j].std()
    _, per_feature = run(m, shifted, interval)
    hit = per_feature[onset:, j]
    delay = int(np.argmax(hit)) if hit.any() else None
    print(f"{name}: +0.5 sigma on feature {j} from interval {onset}: first alarm after "
          f"{delay} intervals, alarmed in {hit.mean():.0%} of {hit.size} shifted intervals")
    assert delay is not None and delay <= MAX_DELAY
    assert hit.mean() >= 0.75


def test_cmapss_fd001_healthy_early_life(shared_datasets: Path) -> None:
    a = np.loadtxt(shared_datasets / "cmapss" / "train_FD001.txt")
    a = a[a[:, 1] <= 100]
    a = a[np.lexsort((a[:, 0], a[:, 1]))]  # the fleet's windows interleaved in time
    unit, x = a[:, 0], a[:, 5:]
    x = x[:, x[unit <= 50].std(0) > 1e-9]  # constant sensors carry no drift signal
    check("C-MAPSS FD001", x[unit <= 50], x[unit > 50], 50)


def test_skab_anomaly_free(shared_datasets: Path) -> None:
    path = shared_datasets / "skab" / "data" / "anomaly-free" / "anomaly-free.csv"
    with path.open() as fh:
        rows = list(csv.reader(fh, delimiter=";"))[1:]
    x = np.array([[float(v) for v in r[1:9]] for r in rows])
    block = np.arange(x.shape[0]) // 500
    check("SKAB anomaly-free", x[block % 2 == 0], x[block % 2 == 1], 100)
