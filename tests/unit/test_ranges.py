"""Range verdicts, manifest schema 1 -> 2, and the limit / sensor-fault alarm machines."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from edge.alerts.limits import LimitSample, LimitSettings, LimitTracker
from edge.core.errors import BundleError
from edge.models.bundle import LimitSpec, SignalSpec, read_manifest
from edge.scoring.ranges import FAULT, HIGH, LOW, OK, apply_rows, bounds_of
from tests.bundlefactory import make_bundle
from trainer.export import signal_specs

S4 = SignalSpec(name="s4", unit="psia", train_min=100.0, train_max=200.0,
                plausible_min=0.0, plausible_max=1000.0)


def test_verdicts_against_the_limit_alarm_and_the_plausibility_bound() -> None:
    b = bounds_of([S4], LimitSpec(margin=0.1))["s4"]
    assert (b.low, b.high) == (90.0, 210.0)  # training range +- 10 % of its span
    v = np.array([150.0, 89.0, 211.0, -1.0, 1001.0, math.nan, 90.0, 210.0])
    assert b.codes(v).tolist() == [OK, LOW, HIGH, FAULT, FAULT, FAULT, OK, OK]
    assert [b.code(float(x)) for x in v] == b.codes(v).tolist()


def test_signals_without_any_bound_are_not_checked() -> None:
    assert bounds_of([SignalSpec(name="x")], LimitSpec()) == {}


def test_rows_as_the_agent_windows_them() -> None:
    b = bounds_of([S4], LimitSpec(clip=True))["s4"]
    rows = np.array([[150.0, 250.0, 5000.0, 50.0]])
    out = apply_rows(rows, [b])
    assert out[0, :2].tolist() == [150.0, 200.0] and math.isnan(out[0, 2])
    assert out[0, 3] == 100.0  # clipped to the limit, not dropped
    unclipped = apply_rows(rows, [bounds_of([S4], LimitSpec())["s4"]])
    assert unclipped[0, 1] == 250.0 and math.isnan(unclipped[0, 2])


def test_schema_1_min_max_load_as_the_training_range(tmp_path: Path) -> None:
    path, _ = make_bundle(tmp_path, signals=["temp", "vib"], ranges={"temp": (0.0, 100.0)})
    m = read_manifest(path / "manifest.json")
    assert m.schema_version == 1
    assert (m.signals[0].train_min, m.signals[0].train_max) == (0.0, 100.0)
    assert (m.signals[0].plausible_min, m.signals[0].plausible_max) == (None, None)
    assert m.limits == LimitSpec()  # margin 0: the old bounds already held the margin
    # Schema 2 refuses the old keys, naming the field.
    raw = json.loads((path / "manifest.json").read_text())
    raw["schema_version"] = 2
    (path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=r"signals\.0\.min"):
        read_manifest(path / "manifest.json")


def test_inverted_ranges_are_refused_naming_the_signal() -> None:
    with pytest.raises(ValueError, match="signal s4: plausible_min 5 > plausible_max 1"):
        SignalSpec(name="s4", plausible_min=5.0, plausible_max=1.0)


def test_the_trainer_writes_what_the_agent_would_let_through() -> None:
    series = np.array([[1.0, 2.0, 3.0, 9999.0], [0.5, math.nan, 0.25, 0.75]])
    specs = signal_specs(["a", "b"], {"a": "bar"}, series, {"a": (0.0, 10.0)})
    assert specs[0] == {"name": "a", "unit": "bar", "train_min": 1.0, "train_max": 3.0,
                        "plausible_min": 0.0, "plausible_max": 10.0}
    assert (specs[1]["train_min"], specs[1]["train_max"]) == (0.25, 0.75)
    assert specs[1]["plausible_min"] is None


def _feed(t: LimitTracker, values: list[float], start: int = 0) -> list[tuple[str, str]]:
    b = t.bounds["s4"]
    out = []
    for i, v in enumerate(values, start):
        for ch in t.feed(LimitSample("e1", "s4", float(i), v, b.code(v))):
            out.append((ch.event, ch.state.kind))
    return out


def test_one_limit_alarm_per_asset_and_signal_with_deadband_and_clear_after() -> None:
    t = LimitTracker(bounds_of([S4], LimitSpec()), LimitSettings(clear_after=3, deadband=0.1))
    assert _feed(t, [150.0, 250.0, 260.0, 255.0]) == [("opened", "limit")]  # not per sample
    st = t.active[("e1", "s4", "limit")]
    assert (st.bound, st.limit, st.value, st.worst) == ("training_max", 200.0, 255.0, 260.0)
    assert ("e1", "s4") in t.watched
    # 195 is inside the limits but inside the deadband (within 10 % of the span): no clear.
    assert _feed(t, [195.0, 195.0, 195.0, 195.0], 4) == []
    # In range, then out again: the count of healthy readings restarts.
    assert _feed(t, [150.0, 150.0, 250.0, 150.0, 150.0], 8) == []
    assert _feed(t, [150.0], 13) == [("cleared", "limit")]
    assert ("e1", "s4") not in t.watched and not t.active


def test_a_sensor_fault_is_its_own_alarm_and_clears_on_plausible_readings() -> None:
    t = LimitTracker(bounds_of([S4], LimitSpec()), LimitSettings(clear_after=2))
    assert _feed(t, [5000.0, 5000.0]) == [("opened", "sensor_fault")]
    assert t.active[("e1", "s4", "sensor_fault")].limit is None
    # A reading outside training but possible: clears the fault's count, opens a limit alarm.
    assert _feed(t, [250.0, 150.0], 2) == [("opened", "limit"), ("cleared", "sensor_fault")]
    assert ("e1", "s4") in t.watched  # the limit alarm is still active


def test_a_value_that_is_no_number_is_a_sensor_fault_with_or_without_bounds() -> None:
    t = LimitTracker(bounds_of([S4], LimitSpec()), LimitSettings(clear_after=2))
    assert _feed(t, [math.nan, 5000.0]) == [("opened", "sensor_fault")]
    st = t.active[("e1", "s4", "sensor_fault")]
    # The worst evidence is the impossible number, not the NaN; the latest is the 5000.
    assert (st.reason, st.worst, st.value) == ("implausible", 5000.0, 5000.0)
    assert _feed(t, [math.nan], 2) == [] and st.reason == "non_finite" and math.isnan(st.value)
    # A signal without any bound (here "s9"): NaN still opens, good readings clear it.
    chg = t.feed(LimitSample("e1", "s9", 1.0, math.nan, FAULT))
    assert [(c.event, c.state.kind, c.state.reason) for c in chg] == [
        ("opened", "sensor_fault", "non_finite")]
    assert ("e1", "s9") in t.watched
    assert t.feed(LimitSample("e1", "s9", 2.0, 3.0, OK)) == []
    assert [c.event for c in t.feed(LimitSample("e1", "s9", 3.0, 3.0, OK))] == ["cleared"]
    # Unbounded, finite and not watched: nothing to judge, as before.
    assert t.feed(LimitSample("e1", "s9", 4.0, 1e9, OK)) == []


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="clear_after=0"):
        LimitSettings(clear_after=0)
