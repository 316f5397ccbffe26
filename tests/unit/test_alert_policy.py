"""The deployed alert policy in the manifest (schema 3) and how the agent config overrides it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edge.alerts.rules import RuleSpec, describe_rule, rule_overrides
from edge.core.config import AlertRuleConfig, parse_config
from edge.core.errors import BundleError, ConfigError
from edge.models.bundle import Manifest, load_bundle
from edge.models.policy import LEGACY_RULE, policy_of
from tests.bundlefactory import make_bundle

POLICY = {"direction": "below", "k": 2, "n": 3, "clear_after": 2, "cooldown_s": 30.0,
          "rationale": "[alerts] of the training config"}


def raw(schema: int | None = 3, policy: dict[str, Any] | None = POLICY) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": "cmapss-rul", "version": "7", "signals": [{"name": "s2"}],
        "sample_period_s": 1, "window": 30, "hop": 1, "model_sha256": "0" * 64,
        "output": {"kind": "rul", "score_output": "rul", "alert_when": "below"},
        "thresholds": {"warning": 30, "critical": 15, "reset": 40}}
    if schema is not None:
        d["schema_version"] = schema
    if policy is not None:
        d["alert_policy"] = policy
    return d


def test_schema_3_rule_comes_from_the_bundle() -> None:
    m = Manifest.model_validate(raw(None))  # the default schema is 3
    assert m.schema_version == 3 and m.alert_policy is not None
    spec = RuleSpec.from_manifest(m)
    assert (spec.warning, spec.critical, spec.reset, spec.direction, spec.k, spec.n,
            spec.clear_after, spec.cooldown_s) == (30, 15, 40, "below", 2, 3, 2, 30.0)
    # An agent config that sets nothing takes the bundle's rule unchanged.
    assert RuleSpec.from_manifest(m, AlertRuleConfig()) == spec
    text = describe_rule(spec, m, AlertRuleConfig())
    assert "k=2 n=3 clear_after=2 cooldown_s=30" in text and "from its alert_policy" in text
    assert "overrides" not in text


def test_agent_config_overrides_only_the_fields_it_sets_and_says_which() -> None:
    m = Manifest.model_validate(raw())
    cfg = parse_config({"bundle": {"path": "/b"}, "alerts": {"clear_after": 5,
                                                             "warning": 25}})
    assert rule_overrides(cfg.alerts) == {"warning": 25, "clear_after": 5}
    spec = RuleSpec.from_manifest(m, cfg.alerts)
    assert (spec.warning, spec.k, spec.n, spec.clear_after, spec.cooldown_s) == (
        25, 2, 3, 5, 30.0)
    text = describe_rule(spec, m, cfg.alerts)
    assert text.endswith("the agent config overrides alerts.warning=25, alerts.clear_after=5")


def test_an_override_that_contradicts_the_bundle_names_both() -> None:
    m = Manifest.model_validate(raw())
    with pytest.raises(ConfigError, match=r"k=5 n=3.*alerts\.k=5.*bundle cmapss-rul/7"):
        RuleSpec.from_manifest(m, AlertRuleConfig(k=5))
    # k <= n is checked in the config only when both are set there.
    with pytest.raises(ValidationError, match="k=4 must not exceed n=2"):
        AlertRuleConfig(k=4, n=2)


def test_a_bundle_whose_own_levels_contradict_is_a_bundle_error() -> None:
    bad = raw()
    bad["thresholds"]["critical"] = 35  # less severe than warning for "below"
    with pytest.raises(BundleError, match=r"cmapss-rul/7: .*less severe"):
        RuleSpec.from_manifest(Manifest.model_validate(bad))


@pytest.mark.parametrize(("data", "problem"), [
    (raw(3, None), "schema_version 3 needs alert_policy"),
    (raw(2), "alert_policy is a schema_version 3 field"),
    (raw(3, {**POLICY, "direction": "above"}), "direction = 'above' but output.alert_when"),
    (raw(3, {**POLICY, "k": 4}), "k=4 exceeds n=3"),
    (raw(3, {**POLICY, "n": 0}), "alert_policy.n"),
    (raw(3, {**POLICY, "cooldown_s": -1}), "alert_policy.cooldown_s"),
    (raw(3, {**POLICY, "levels": "inline"}), "alert_policy.levels"),
    (raw(3, {**POLICY, "debounce": 2}), "alert_policy.debounce"),
])
def test_bad_policies_are_refused(data: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        Manifest.model_validate(data)


def test_a_schema_2_bundle_still_loads_with_the_legacy_rule(tmp_path: Path) -> None:
    path, pub = make_bundle(tmp_path, signals=["a"], warning=30.0, reset=40.0,
                            alert_when="below")
    assert json.loads((path / "manifest.json").read_text())["schema_version"] == 2
    m = load_bundle(path, [pub]).manifest
    assert m.alert_policy is None and policy_of(m).rule() == LEGACY_RULE
    spec = RuleSpec.from_manifest(m)
    assert (spec.k, spec.n, spec.clear_after, spec.cooldown_s, spec.direction) == (
        1, 1, 3, 0.0, "below")
    assert "the legacy defaults (schema_version 2 bundle without alert_policy)" in \
        describe_rule(spec, m)
    # ...and an explicit agent setting still applies on top of it, as before.
    assert RuleSpec.from_manifest(m, AlertRuleConfig(k=2, n=4)).n == 4


def test_a_schema_3_bundle_round_trips_through_disk(tmp_path: Path) -> None:
    policy = {k: v for k, v in POLICY.items() if k != "direction"}
    path, pub = make_bundle(tmp_path, signals=["a"], warning=30.0, alert_when="below",
                            policy=policy)
    m = load_bundle(path, [pub]).manifest
    assert m.schema_version == 3 and policy_of(m).rule() == {
        "k": 2, "n": 3, "clear_after": 2, "cooldown_s": 30.0}


def test_the_doctests_hold() -> None:
    import doctest

    import edge.alerts.rules
    import edge.models.policy
    import trainer.evaljson

    for mod in (edge.models.policy, edge.alerts.rules, trainer.evaljson):
        result = doctest.testmod(mod)
        assert result.attempted > 0 and result.failed == 0, mod.__name__
