"""The replay gate's counting and decision, and the verdicts' classes of rows (pure logic)."""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest

from trainer.alertspans import (
    CONFIRMED,
    FALSE_ALARM,
    NORMAL,
    UNJUDGED,
    AlertSpan,
    fault_intervals,
    row_classes,
)
from trainer.gate import Fault, Trace, judge


def trace(on: str, t0: float = 0.0, opened: list[float] | None = None) -> Trace:
    """``on``: one character per window, ``#`` = alert open after it."""
    ts = t0 + np.arange(len(on), dtype=np.float64)
    return Trace(ts, np.zeros(len(on)), np.array([c == "#" for c in on]), opened or [], 1.0)


def test_false_alarm_rate_counts_alert_open_windows_outside_faults() -> None:
    faults = [Fault("p", 4.0, 6.0, "alert 1")]
    r = judge({"p": trace("##..###...")}, {"p": trace("....###...")}, faults)
    a, c = r.active, r.candidate
    assert (a.windows, a.healthy, a.false_alarm_windows, a.fault_windows_alerted) == (10, 7, 2, 3)
    assert (c.false_alarm_windows, c.false_alarm_rate) == (0, 0.0)
    assert a.false_alarm_rate == pytest.approx(2 / 7)
    assert a.window_precision == pytest.approx(3 / 5) and c.window_precision == 1.0
    assert r.accepted and a.caught == c.caught == {0}


def test_a_tie_is_accepted_a_higher_rate_is_refused() -> None:
    f: list[Fault] = []
    assert judge({"p": trace("#.........")}, {"p": trace(".........#")}, f).accepted
    r = judge({"p": trace("#.........")}, {"p": trace("##........")}, f)
    assert not r.accepted and r.reasons[0].startswith("false-alarm rate 20.00% (2 of 10")


def test_a_fault_the_active_missed_is_not_required() -> None:
    faults = [Fault("p", 2.0, 3.0, "label"), Fault("p", 7.0, 8.0, "alert 4")]
    r = judge({"p": trace(".......#..")}, {"p": trace("..#.......")}, faults)
    assert r.active.caught == {1} and r.candidate.caught == {0}
    assert not r.accepted and [f.source for f in r.missed] == ["alert 4"]
    # The fault the active missed is no reason; catching it does not buy the other back.
    assert len(r.reasons) == 1


def test_counts_pool_over_assets_and_faults_belong_to_their_asset() -> None:
    faults = [Fault("q", 0.0, 9.0, "alert 2")]
    act = {"p": trace("#........."), "q": trace("##########")}
    cand = {"p": trace(".........."), "q": trace(".........#")}
    r = judge(act, cand, faults)
    assert r.active.healthy == 10 and r.active.false_alarm_windows == 1  # only p is healthy
    assert r.per_asset["q"][1].caught == {0} and r.accepted


def test_no_window_is_refused() -> None:
    r = judge({"p": trace("")}, {"p": trace("")}, [])
    assert not r.accepted and "nothing was compared" in r.reasons[0]


def test_alerts_opened_outside_faults_are_reported() -> None:
    faults = [Fault("p", 5.0, 9.0, "alert 1")]
    r = judge({"p": trace("..#..#....", opened=[2.0, 5.0])},
              {"p": trace("..........")}, faults)
    assert (r.active.alerts_opened, r.active.false_alerts) == (2, 1)


def span(i: int, verdict: str | None, start: float, end: float, kind: str = "model",
         model: str = "m/1") -> AlertSpan:
    return AlertSpan(i, "p", kind, model, verdict, start, end)


def test_row_classes_confirmed_wins_and_margins_apply() -> None:
    ts = np.arange(0.0, 30.0)
    spans = [span(1, "false_alarm", 0, 9), span(2, "confirmed", 10, 12), span(3, None, 20, 21)]
    c = row_classes(ts, spans, margin_s=2.0, model="m")
    assert (c[0:8] == FALSE_ALARM).all()
    assert (c[8:15] == CONFIRMED).all()  # 10-12 widened by 2 s, over the false alarm's end
    assert (c[18:24] == UNJUDGED).all() and (c[15:18] == NORMAL).all()
    loose = row_classes(ts, spans, margin_s=2.0, model="m", unjudged="normal")
    assert (loose[18:24] == NORMAL).all()


def test_only_the_models_own_unjudged_alerts_exclude_and_labels_confirm() -> None:
    ts = np.arange(0.0, 10.0)
    spans = [span(1, None, 0, 3, kind="limit"), span(2, None, 5, 6, model="other/2"),
             span(3, "unsure", 8, 9), span(4, "confirmed", 0, 1, kind="sensor_fault")]
    labels = np.zeros(10)
    labels[4] = 1
    c = row_classes(ts, spans, margin_s=0.0, model="m", labels=labels)
    assert c.tolist() == [CONFIRMED, CONFIRMED, NORMAL, NORMAL, CONFIRMED, NORMAL, NORMAL,
                          NORMAL, UNJUDGED, UNJUDGED]


def test_fault_intervals_merge_verdicts_and_label_runs() -> None:
    ts = np.arange(0.0, 20.0)
    y = np.zeros(20)
    y[3:6] = 1
    y[15:17] = 1
    got = fault_intervals([span(9, "confirmed", 6, 8), span(10, "false_alarm", 10, 12)],
                          margin_s=1.0, label_ts=ts, labels=y)
    assert got == [(3.0, 9.0, "alert 9 + label"), (15.0, 16.0, "label")]


@pytest.mark.parametrize("name", ["trainer.alertspans", "trainer.gate", "trainer.retrain_cli",
                                  "edge.drift.state"])
def test_the_doctests_hold(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0
