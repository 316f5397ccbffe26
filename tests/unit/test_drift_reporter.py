"""DriftReporter feeds the monitor in blocks: the same intervals as window by window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.core.metrics import Metrics
from edge.drift.monitor import DriftInterval, DriftMonitor
from edge.drift.reporting import FEED_BLOCK, DriftReporter
from edge.models.bundle import Histogram, Manifest
from edge.models.infer import ScoredWindow

NAMES = ["f0", "f1", "f2"]


def manifest() -> Manifest:
    h = Histogram(edges=[-1.0, 0.0, 1.0], proportions=[0.16, 0.34, 0.34, 0.16], mean=0.0,
                  std=1.0)
    return Manifest.model_validate({
        "schema_version": 2,  # schema 2: drift needs no alert_policy
        "name": "m", "version": "1", "signals": [{"name": "s"}], "sample_period_s": 1.0,
        "window": 4, "hop": 4,
        "output": {"kind": "anomaly", "score_output": "score", "alert_when": "above",
                   "feature_names": NAMES},
        "thresholds": {"warning": 2.0},
        "reference": {"features": {n: h for n in NAMES}, "score": h},
        "model_sha256": "ab" * 32,
    })


class Recorder(DriftReporter):
    def __init__(self, m: Manifest, interval: int) -> None:
        super().__init__(m, interval, Metrics())
        self.closed: list[DriftInterval] = []

    def _publish(self, interval: DriftInterval) -> None:
        self.closed.append(interval)


def exact(iv: DriftInterval) -> tuple[object, ...]:
    feats = [f for f in (*iv.features, iv.score) if f is not None]
    return (iv.index, iv.windows, iv.alarm, iv.alert_rate, iv.missing_rate,
            [(f.counts, f.alarm) for f in feats])


def sums(iv: DriftInterval) -> list[float]:
    """Float results: equal to rounding (blocks add values in another order)."""
    feats = [f for f in (*iv.features, iv.score) if f is not None]
    return [x for f in feats for x in (f.psi, f.ks, f.mean_shift)]


def test_blocks_close_the_same_intervals_on_the_same_window() -> None:
    rng = np.random.default_rng(3)
    n, interval = 3 * FEED_BLOCK + 123, 100
    devs = rng.normal(size=(n, len(NAMES)))
    devs[n // 2:] += 1.5  # a shift half way: alarms must come out alike too
    scores = rng.normal(size=n)
    wins = [ScoredWindow(asset=f"a{i % 7}", ts=float(i), score=float(scores[i]),
                         deviations=devs[i], model="m/1") for i in range(n)]
    ref = DriftMonitor(manifest(), interval)
    rep = Recorder(manifest(), interval)
    expected: list[DriftInterval] = []
    i = 0
    while i < n:
        k = int(rng.integers(1, 40))  # live pipeline batches: a few windows each
        batch = wins[i:i + k]
        expected += ref.update(devs[i:i + k], scores[i:i + k])
        rep.on_scores(batch)
        i += k
        # Nothing is held back across an interval's end: the same count has closed.
        assert len(rep.closed) == len(expected)
    assert [exact(x) for x in rep.closed] == [exact(x) for x in expected]
    for got, want in zip(rep.closed, expected, strict=True):
        assert sums(got) == pytest.approx(sums(want), rel=1e-9)
    assert any(x.alarm for x in expected) and not expected[0].alarm


def test_the_reporter_keeps_the_alarm_run_in_the_state_file(tmp_path: Path) -> None:
    """drift-state.json: alarm on and its age in data time, reset by a model swap."""
    from edge.drift.state import read_state

    path = tmp_path / "drift-state.json"
    rep = DriftReporter(manifest(), 100, Metrics(), state_path=path)
    st = read_state(path)
    assert st is not None and st.model == "m/1" and st.intervals == 0 and not st.alarm
    rng = np.random.default_rng(5)
    devs = rng.normal(size=(600, len(NAMES)))
    devs[200:] += 3.0  # far off the reference from the third interval on
    scores = rng.normal(size=600)
    for i in range(0, 600, 10):
        rep.on_scores([ScoredWindow("a", float(1000 + j), float(scores[j]), devs[j], "m/1")
                       for j in range(i, i + 10)])
    st = read_state(path)
    assert st is not None and st.intervals == 6 and st.alarm
    # No calibration in this manifest: one interval over alarms (the 1-of-1 rule of old
    # bundles), so the run starts with the third interval (windows 200-299).
    assert st.alarm_since_ts == 1200.0 and st.last_ts == 1599.0
    assert st.alarm_for_s == 399.0 and st.alarm_intervals == 4
    rep.swap(manifest().model_copy(update={"version": "2"}))
    st = read_state(path)
    assert st is not None and st.model == "m/2" and not st.alarm and st.intervals == 0


def test_a_damaged_state_file_is_an_error_naming_it(tmp_path: Path) -> None:
    from edge.core.errors import StorageError
    from edge.drift.state import read_state

    p = tmp_path / "drift-state.json"
    assert read_state(p) is None
    p.write_text('{"format": "forewarn.drift-state/1", "model": "m/1"}')
    with pytest.raises(StorageError, match=r"drift-state\.json: drift state field 'intervals'"):
        read_state(p)
