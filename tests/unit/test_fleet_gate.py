"""The rollout gate's verdict from a site's health reports (pure logic, no broker)."""

from __future__ import annotations

import json
from typing import Any

from fleet.gate import GateRules, judge
from fleet.store import Report
from tests.fleetkit import health_body


def report(seq: int, at: float, version: str, *, windows: int = 500, inference: int = 0,
           precision: float | None = None, canary_failed: int = 0,
           uptime: int = 600) -> Report:
    doc: dict[str, Any] = json.loads(health_body("s-01", version=version))
    doc.update(windows_scored=windows, uptime_s=uptime, precision=precision)
    doc["errors"] = {"inference": inference}
    doc["canary"] = {"failed": canary_failed}
    return Report("s-01", seq, "health", at, 0, "", 0, json.dumps(doc))


RULES = GateRules(version="4", name="cmapss", hold_s=60, fresh_s=30, min_windows=10)


def history(**new: Any) -> list[Report]:
    """Two reports on version 3, then two on 4 (100 s and 40 s before now=1000)."""
    return [report(1, 800, "3", windows=100), report(2, 850, "3", windows=200),
            report(3, 900, "4", windows=300, **{k: v[0] for k, v in new.items()}),
            report(4, 990, "4", windows=400, **{k: v[1] for k, v in new.items()})]


def test_a_site_held_on_the_new_version_without_regressions_passes() -> None:
    v = judge(history(), RULES, now=1000)
    assert v.ok, v.why
    assert v.held_s == 100 and v.facts and v.facts["windows"] == 200


def test_the_hold_time_counts_from_the_first_report_on_the_new_version() -> None:
    v = judge(history(), GateRules(version="4", hold_s=150, fresh_s=30), now=1000)
    assert not v.ok and "held 100 s of 150 s" in v.why


def test_stale_missing_or_other_version_fails() -> None:
    assert judge([], RULES, 1000).why == "no health report"
    assert "stale" in judge(history(), RULES, now=1100).why
    # rolled back on the appliance: the latest report is on 3 again
    back = [*history(), report(5, 995, "3", windows=410)]
    assert "not on version 4 (['3'])" in judge(back, RULES, now=1000).why


def test_too_few_windows_on_the_new_version_fails() -> None:
    v = judge(history(), GateRules(version="4", min_windows=1000, fresh_s=30), now=1000)
    assert not v.ok and "200 windows scored" in v.why


def test_an_inference_error_rise_fails_and_a_steady_rate_passes() -> None:
    v = judge(history(inference=(0, 50)), RULES, now=1000)
    assert not v.ok and "inference error rate 0.2500" in v.why
    steady = [report(1, 800, "3", windows=100, inference=0),
              report(2, 850, "3", windows=200, inference=10),
              report(3, 900, "4", windows=300, inference=20),
              report(4, 990, "4", windows=400, inference=30)]
    assert judge(steady, RULES, now=1000).ok


def test_precision_worse_than_before_beyond_the_margin_fails() -> None:
    base = [report(1, 800, "3", windows=100, precision=0.8),
            report(2, 850, "3", windows=200, precision=0.8)]
    ok = [*base, report(3, 900, "4", windows=300, precision=0.79),
          report(4, 990, "4", windows=400, precision=0.79)]
    assert judge(ok, RULES, now=1000).ok  # within the 0.02 margin
    worse = [*base, report(3, 900, "4", windows=300, precision=0.7),
             report(4, 990, "4", windows=400, precision=0.7)]
    v = judge(worse, RULES, now=1000)
    assert not v.ok and "precision 0.700, before 0.800" in v.why


def test_a_canary_verdict_failed_during_the_hold_fails() -> None:
    v = judge(history(canary_failed=(0, 1)), RULES, now=1000)
    assert not v.ok and "1 canary verdicts failed" in v.why


def test_a_restart_on_the_new_version_restarts_the_counters() -> None:
    # the agent restarted between 3 and 4: counters fell, uptime fell
    h = [*history()[:3], report(4, 990, "4", windows=50, inference=0, uptime=60)]
    v = judge(h, RULES, now=1000)
    assert v.ok and v.facts and v.facts["windows"] == 50
