"""The pure alert state machine: debounce, escalation, hysteresis, cooldown."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.alerts.payload import signal_of, state_payload, top_features
from edge.alerts.rules import RuleMachine, RuleSpec
from edge.alerts.store import Alert
from edge.core.config import AlertRuleConfig
from edge.core.errors import ConfigError
from edge.models.bundle import Manifest


def run(spec: RuleSpec, scores: list[float], start: float = 0.0,
        step: float = 1.0) -> list[tuple[int, str, str]]:
    m = RuleMachine(spec)
    out = []
    for i, s in enumerate(scores):
        for t in m.update(start + i * step, s):
            out.append((i, t.kind, t.severity))
    return out


def test_single_breach_opens_when_k_is_1() -> None:
    assert run(RuleSpec(warning=5), [1, 6]) == [(1, "opened", "warning")]


def test_k_of_n_debounce_ignores_isolated_spikes() -> None:
    spec = RuleSpec(warning=5, k=3, n=5)
    # spikes never reach 3 in any 5-window span
    assert run(spec, [9, 0, 0, 0, 9, 0, 0, 0, 9, 0, 0]) == []
    # the third breach within 5 windows opens
    assert run(spec, [9, 0, 9, 0, 9]) == [(4, "opened", "warning")]


def test_level_itself_is_not_a_breach() -> None:
    assert run(RuleSpec(warning=5), [5, 5, 5]) == []
    assert run(RuleSpec(warning=5, direction="below"), [5, 5, 5]) == []


def test_direction_below_for_remaining_life() -> None:
    spec = RuleSpec(warning=30, critical=10, direction="below")
    assert run(spec, [80, 29, 9]) == [(1, "opened", "warning"), (2, "escalated", "critical")]


def test_opens_directly_at_critical() -> None:
    spec = RuleSpec(warning=5, critical=10, k=2, n=2)
    assert run(spec, [11, 12]) == [(1, "opened", "critical")]


def test_escalation_needs_k_of_n_critical_and_happens_once() -> None:
    spec = RuleSpec(warning=5, critical=10, k=2, n=3, clear_after=10)
    got = run(spec, [6, 6, 11, 6, 11, 12, 13])
    assert got == [(1, "opened", "warning"), (4, "escalated", "critical")]


def test_no_de_escalation_while_open() -> None:
    spec = RuleSpec(warning=5, critical=10, clear_after=10)
    assert run(spec, [11, 6, 6, 6]) == [(0, "opened", "critical")]


def test_hysteresis_clears_only_after_m_windows_past_reset() -> None:
    spec = RuleSpec(warning=5, reset=3, clear_after=3)
    # 4 is below warning but above reset: does not count toward clearing
    scores = [6, 4, 4, 4, 4, 2, 2, 6, 2, 2, 2]
    assert run(spec, scores) == [(0, "opened", "warning"), (10, "cleared", "warning")]


def test_reset_defaults_to_warning_level() -> None:
    assert run(RuleSpec(warning=5, clear_after=2), [6, 5, 5]) == [
        (0, "opened", "warning"), (2, "cleared", "warning")]


def test_cooldown_in_score_time_blocks_reopen() -> None:
    spec = RuleSpec(warning=5, clear_after=1, cooldown_s=10)
    # cleared at t=1; breaches at t=2..10 are inside the cooldown, t=11 is not
    scores = [6, 0] + [6] * 12
    assert run(spec, scores) == [(0, "opened", "warning"), (1, "cleared", "warning"),
                                 (11, "opened", "warning")]


def test_reopen_needs_fresh_k_of_n_after_clear() -> None:
    spec = RuleSpec(warning=5, k=2, n=2, clear_after=1)
    assert run(spec, [6, 6, 0, 6, 0, 6, 6]) == [
        (1, "opened", "warning"), (2, "cleared", "warning"), (6, "opened", "warning")]


def test_non_finite_and_out_of_order_samples_are_ignored() -> None:
    m = RuleMachine(RuleSpec(warning=5))
    assert m.update(10, math.nan) == []
    assert m.update(10, math.inf) == []
    assert m.update(11, 1) == []
    assert m.update(5, 99) == []  # older than the last sample
    assert not m.active
    assert [t.kind for t in m.update(12, 6)] == ["opened"]


def test_force_clear_starts_cooldown_from_last_sample() -> None:
    m = RuleMachine(RuleSpec(warning=5, cooldown_s=5))
    assert [t.kind for t in m.update(0, 6)] == ["opened"]
    m.force_clear()
    assert not m.active and m.cooldown_until == 5
    assert m.update(3, 9) == []
    assert [t.kind for t in m.update(5, 9)] == ["opened"]


def test_restore_resumes_an_open_alert() -> None:
    m = RuleMachine(RuleSpec(warning=5, critical=9, clear_after=1))
    m.restore("warning")
    assert m.update(0, 6) == []  # already open: no second "opened"
    assert [(t.kind, t.severity) for t in m.update(1, 10)] == [("escalated", "critical")]
    assert [t.kind for t in m.update(2, 1)] == ["cleared"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"warning": 5, "k": 3, "n": 2}, "k <= n"),
    ({"warning": 5, "k": 0, "n": 2}, "k <= n"),
    ({"warning": 5, "critical": 4}, "less severe"),
    ({"warning": 5, "critical": 6, "direction": "below"}, "less severe"),
    ({"warning": 5, "reset": 6}, "no hysteresis"),
    ({"warning": 5, "clear_after": 0}, "clear_after"),
    ({"warning": 5, "cooldown_s": -1}, "cooldown_s"),
])
def test_invalid_specs_name_the_problem(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RuleSpec(**kwargs)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(scores=st.lists(st.floats(-5, 25, allow_nan=False), max_size=80),
       k=st.integers(1, 4), extra=st.integers(0, 3), m=st.integers(1, 4),
       cooldown=st.sampled_from([0.0, 3.0, 10.0]))
def test_lifecycle_invariants(scores: list[float], k: int, extra: int, m: int,
                              cooldown: float) -> None:
    spec = RuleSpec(warning=10, critical=15, reset=7, k=k, n=k + extra, clear_after=m,
                    cooldown_s=cooldown)
    mach = RuleMachine(spec)
    active, cleared_at, escalated = False, -math.inf, False
    for i, s in enumerate(scores):
        window = scores[max(0, i - spec.n + 1): i + 1]
        for t in mach.update(float(i), s):
            if t.kind == "opened":
                assert not active, "opened twice without a clear"
                assert i >= cleared_at + cooldown, "re-opened inside the cooldown"
                assert sum(x > 10 for x in window) >= k, "opened without k of n breaches"
                active, escalated = True, t.severity == "critical"
            elif t.kind == "escalated":
                assert active and not escalated
                assert sum(x > 15 for x in window) >= k
                escalated = True
            else:
                assert active
                tail = scores[max(0, i - m + 1): i + 1]
                assert len(tail) == m and all(x <= 7 for x in tail), "cleared without M healthy"
                active, cleared_at = False, float(i)
        assert mach.active == active


def manifest(**thresholds: float) -> Manifest:
    """A schema 2 manifest: no alert_policy, so the legacy rule (tests/unit/test_alert_policy.py
    covers schema 3)."""
    return Manifest.model_validate({
        "schema_version": 2,
        "name": "cmapss-rul", "version": "1", "signals": [{"name": "s2"}],
        "sample_period_s": 1, "window": 30, "hop": 1, "model_sha256": "0" * 64,
        "output": {"kind": "rul", "score_output": "rul", "alert_when": "below"},
        "thresholds": thresholds})


def test_levels_come_from_the_manifest_and_config_overrides_them() -> None:
    spec = RuleSpec.from_manifest(manifest(warning=30, critical=15, reset=40))
    assert (spec.warning, spec.critical, spec.reset_level, spec.direction, spec.condition) == (
        30, 15, 40, "below", "rul")
    cfg = AlertRuleConfig(warning=25, k=2, n=4, clear_after=5, cooldown_s=60)
    spec = RuleSpec.from_manifest(manifest(warning=30, critical=15, reset=40), cfg)
    assert (spec.warning, spec.critical, spec.reset, spec.k, spec.n, spec.clear_after,
            spec.cooldown_s) == (25, 15, 40, 2, 4, 5, 60)
    with pytest.raises(ConfigError, match="less severe"):  # override contradicts the bundle
        RuleSpec.from_manifest(manifest(warning=30, critical=15), AlertRuleConfig(critical=35))


def test_top_features_by_absolute_deviation_with_their_signals() -> None:
    names = ["s2.mean", "s2.std", "s11.mean", "s1.max", "s11_slope"]
    top = top_features(np.array([0.5, -7.0, np.nan, 3.0, -3.5]), names, ["s1", "s2", "s11"])
    assert top == [{"feature": "s2.std", "signal": "s2", "deviation": -7.0},
                   {"feature": "s11_slope", "signal": "s11", "deviation": -3.5},
                   {"feature": "s1.max", "signal": "s1", "deviation": 3.0}]
    assert top_features(None, names, []) == []
    assert top_features(np.array([np.nan, 1.0]), ["a", "b"], [], n=5) == [
        {"feature": "b", "signal": None, "deviation": 1.0}]
    assert signal_of("s11.mean", ["s1", "s11"]) == "s11"
    assert signal_of("s1x.mean", ["s1"]) is None


def test_state_payload_shows_the_worst_unresolved_alert() -> None:
    def alert(i: int, severity: str, state: str, opened: float) -> Alert:
        return Alert(id=i, asset="e1", condition=f"c{i}", severity=severity, state=state,
                     opened_ts=opened, updated_ts=opened, data_ts=None, score=1.0,
                     peak_score=1.0, model="m/1")

    normal = state_payload("p", "e1", [], maintenance=False, now=5)
    assert (normal["state"], normal["severity"], normal["alert_id"]) == ("normal", "none", None)
    alerts = [alert(1, "warning", "open", 1), alert(2, "critical", "acknowledged", 3),
              alert(3, "critical", "resolved", 0), alert(4, "critical", "open", 2)]
    got = state_payload("p", "e1", alerts, maintenance=True, now=5)
    assert (got["alert_id"], got["state"], got["maintenance"]) == (4, "open", True)
