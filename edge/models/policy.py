"""The deployed alert policy, a section of the bundle's manifest (schema 3).

The rule that turns a bundle's scores into alerts is chosen with the model (the
training config's ``[alerts]``, tuned on the same data as the levels), so it
travels with it: ``forewarn evaluate --bundle`` and the agent both build their
:class:`edge.alerts.rules.RuleSpec` from it, and the evaluated alert behaviour is
the deployed one.

* the **levels** are the manifest's ``thresholds`` (warning, critical, reset):
  one calibrated copy, referenced here, not repeated;
* **k of n** - an alert opens when ``k`` of the last ``n`` windows breach the
  warning level (and escalates when ``k`` of ``n`` breach critical);
* **clear_after** - it clears after that many consecutive windows on the healthy
  side of the reset level;
* **cooldown_s** - after a clear the condition may not re-open for that many
  seconds of score time;
* **direction** - ``above``/``below``, equal to the manifest's ``output.alert_when``.

Schema 1 and 2 bundles carry no policy; they alert with :data:`LEGACY_RULE`, the
agent's defaults before the policy moved into the bundle.

>>> p = AlertPolicy(direction="below", k=2, n=3, clear_after=2, cooldown_s=0)
>>> (p.levels, p.k, p.n)
('thresholds', 2, 3)
>>> legacy_policy("above").rule()
{'k': 1, 'n': 1, 'clear_after': 3, 'cooldown_s': 0.0}
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final, Literal

from pydantic import Field, model_validator

from edge.core.strict import Strict

if TYPE_CHECKING:
    from edge.models.bundle import Manifest

MAX_RULE_WINDOWS = 10_000
# What schema 1 and 2 bundles alert with: the agent's defaults before schema 3.
LEGACY_RULE: Final = {"k": 1, "n": 1, "clear_after": 3, "cooldown_s": 0.0}
RULE_KEYS: Final = ("k", "n", "clear_after", "cooldown_s")


class AlertPolicy(Strict):
    """How the bundle's scores become alerts (manifest ``alert_policy``, schema 3)."""

    levels: Literal["thresholds"] = Field(
        "thresholds", description="where the warning/critical/reset levels are: the "
        "manifest's thresholds section (one calibrated copy)")
    direction: Literal["above", "below"] = Field(
        description="a window breaches when its score is above/below a level; equals "
                    "output.alert_when")
    k: int = Field(ge=1, le=MAX_RULE_WINDOWS,
                   description="open when k of the last n windows breach the warning level")
    n: int = Field(ge=1, le=MAX_RULE_WINDOWS, description="the debounce window, in windows")
    clear_after: int = Field(
        ge=1, le=1_000_000, description="clear after this many consecutive windows on the "
                                        "healthy side of the reset level")
    cooldown_s: float = Field(
        ge=0, le=10 * 365 * 86_400, description="after a clear, no re-open for this many "
                                                "seconds of score time")
    rationale: str = Field("", max_length=2000, description="where the rule was chosen")

    @model_validator(mode="after")
    def _rule(self) -> AlertPolicy:
        if self.k > self.n:
            raise ValueError(f"alert_policy: k={self.k} exceeds n={self.n}")
        if not math.isfinite(self.cooldown_s):
            raise ValueError(f"alert_policy: cooldown_s={self.cooldown_s} is not finite")
        return self

    def rule(self) -> dict[str, float]:
        """``k``, ``n``, ``clear_after``, ``cooldown_s`` (the fields an agent may override)."""
        return {key: getattr(self, key) for key in RULE_KEYS}


def legacy_policy(direction: Literal["above", "below"]) -> AlertPolicy:
    """The policy a schema 1 or 2 bundle alerts with."""
    return AlertPolicy.model_validate({
        "direction": direction, **LEGACY_RULE,
        "rationale": "legacy default: the bundle predates manifest alert_policy"})


def policy_of(manifest: Manifest) -> AlertPolicy:
    """The manifest's policy; a schema 1 or 2 bundle's is :func:`legacy_policy`."""
    if manifest.alert_policy is not None:
        return manifest.alert_policy
    return legacy_policy(manifest.output.alert_when)


def policy_problem(schema_version: int, policy: AlertPolicy | None,
                   alert_when: str) -> str | None:
    """Why a manifest's ``alert_policy`` does not fit it, or None."""
    if schema_version < 3:
        return (f"alert_policy is a schema_version 3 field (this manifest says "
                f"{schema_version})") if policy is not None else None
    if policy is None:
        return ("schema_version 3 needs alert_policy (k, n, clear_after, cooldown_s, "
                "direction)")
    if policy.direction != alert_when:
        return (f"alert_policy.direction = {policy.direction!r} but output.alert_when = "
                f"{alert_when!r}")
    return None
