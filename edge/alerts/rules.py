"""Pure alert rules: one small state machine per asset and condition.

The machine sees only ``(ts, score)`` samples, one per scored window, and says
when an alert opens, escalates or clears. It never touches storage, MQTT or the
clock, so the same object runs live in the agent and in ``forewarn evaluate``
replays (river style: ``update()`` then read properties).

* **Debounce** - open only when the warning level is breached in at least
  ``k`` of the last ``n`` windows (one noisy window raises nothing).
* **Escalation** - while open at warning, ``k`` of the last ``n`` windows past
  the critical level escalate the *same* alert to critical.
* **Hysteresis** - clear only after ``clear_after`` consecutive windows on the
  healthy side of the ``reset`` level (defaults to the warning level).
* **Cooldown** - after a clear, the condition may not re-open for ``cooldown_s``
  seconds of *score* time (so replays behave like live runs).

"Breached" follows the manifest's direction: ``above`` (anomaly scores) or
``below`` (remaining useful life).

>>> spec = RuleSpec(warning=30, critical=10, direction="below", k=2, n=3, clear_after=2)
>>> m = RuleMachine(spec)
>>> [t.kind for t in m.update(0, 50)], [t.kind for t in m.update(1, 25)]
([], [])
>>> [(t.kind, t.severity) for t in m.update(2, 20)]
[('opened', 'warning')]
>>> m.update(3, 8), [(t.kind, t.severity) for t in m.update(4, 5)]
([], [('escalated', 'critical')])
>>> m.update(5, 40), [t.kind for t in m.update(6, 45)], m.active
([], ['cleared'], False)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from edge.core.errors import BundleError, ConfigError
from edge.models.policy import policy_of

if TYPE_CHECKING:
    from edge.core.config import AlertRuleConfig
    from edge.models.bundle import Manifest

Direction = Literal["above", "below"]
Severity = Literal["warning", "critical"]
TransitionKind = Literal["opened", "escalated", "cleared"]
# Agent config fields (edge.core.config.AlertRuleConfig) that override the bundle when set.
OVERRIDABLE: Final = ("warning", "critical", "reset", "k", "n", "clear_after", "cooldown_s")


@dataclass(frozen=True, slots=True)
class RuleSpec:
    warning: float
    critical: float | None = None
    reset: float | None = None
    direction: Direction = "above"
    k: int = 1
    n: int = 1
    clear_after: int = 3
    cooldown_s: float = 0.0
    condition: str = "score"

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.n:
            raise ValueError(f"alert rule {self.condition}: need 1 <= k <= n, got k={self.k} "
                             f"n={self.n}")
        if self.clear_after < 1:
            raise ValueError(f"alert rule {self.condition}: clear_after={self.clear_after} < 1")
        if self.cooldown_s < 0:
            raise ValueError(f"alert rule {self.condition}: cooldown_s={self.cooldown_s} < 0")
        if self.critical is not None and self.breached(self.warning, self.critical):
            raise ValueError(f"alert rule {self.condition}: critical={self.critical} is less "
                             f"severe than warning={self.warning} for direction "
                             f"{self.direction!r}")
        if self.reset is not None and self.breached(self.reset, self.warning):
            raise ValueError(f"alert rule {self.condition}: reset={self.reset} lies past "
                             f"warning={self.warning} (no hysteresis band) for direction "
                             f"{self.direction!r}")

    def breached(self, score: float, level: float) -> bool:
        return score > level if self.direction == "above" else score < level

    @property
    def reset_level(self) -> float:
        return self.warning if self.reset is None else self.reset

    def healthy(self, score: float) -> bool:
        """On the safe side of the reset level (at the level counts as healthy)."""
        return not self.breached(score, self.reset_level)

    @classmethod
    def from_manifest(cls, manifest: Manifest, cfg: AlertRuleConfig | None = None) -> RuleSpec:
        """The bundle's deployed rule: levels from its ``thresholds``, k of n, clear-after
        and cooldown from its ``alert_policy`` (schema 1/2: the legacy defaults).

        A field the agent config sets explicitly (not None) overrides the bundle's
        (:func:`rule_overrides`); ``forewarn evaluate`` passes no config, so it
        scores exactly the rule the bundle deploys. An override that contradicts
        the bundle is a ConfigError naming both; a bundle whose own levels do not
        fit together is a BundleError.
        """
        th, policy = manifest.thresholds, policy_of(manifest)
        over = rule_overrides(cfg)

        def pick(name: str, bundle_value: Any) -> Any:
            return over.get(name, bundle_value)

        try:
            return cls(warning=pick("warning", th.warning), critical=pick("critical", th.critical),
                       reset=pick("reset", th.reset), direction=policy.direction,
                       k=pick("k", policy.k), n=pick("n", policy.n),
                       clear_after=pick("clear_after", policy.clear_after),
                       cooldown_s=pick("cooldown_s", policy.cooldown_s),
                       condition=manifest.output.kind)
        except ValueError as exc:
            where = f"bundle {manifest.name}/{manifest.version}"
            if over:
                raise ConfigError(
                    f"{exc}: the agent config sets "
                    + ", ".join(f"alerts.{k}={v:g}" for k, v in over.items())
                    + f", the rest comes from {where}") from exc
            raise BundleError(f"{where}: {exc}") from exc


def rule_overrides(cfg: AlertRuleConfig | None) -> dict[str, float]:
    """The rule fields the agent config sets explicitly; None means "from the bundle".

    >>> rule_overrides(None)
    {}
    """
    if cfg is None:
        return {}
    return {k: v for k in OVERRIDABLE if (v := getattr(cfg, k)) is not None}


def describe_rule(spec: RuleSpec, manifest: Manifest, cfg: AlertRuleConfig | None = None
                  ) -> str:
    """One line saying which rule applies and where each part came from (the agent logs
    it once per activated bundle, ``forewarn evaluate`` prints it)."""
    over = rule_overrides(cfg)
    levels = f"warning={spec.warning:g}" + (
        f" critical={spec.critical:g}" if spec.critical is not None else "") + (
        f" reset={spec.reset:g}" if spec.reset is not None else "")
    rule = f"k={spec.k} n={spec.n} clear_after={spec.clear_after} cooldown_s={spec.cooldown_s:g}"
    src = ("its alert_policy" if manifest.alert_policy is not None else
           f"the legacy defaults (schema_version {manifest.schema_version} bundle without "
           "alert_policy)")
    text = (f"alert rule of {manifest.name}/{manifest.version} ({spec.condition}, breach "
            f"{spec.direction}): {levels}; {rule}; levels from the bundle's thresholds, "
            f"k/n/clear_after/cooldown_s from {src}")
    if over:
        text += "; the agent config overrides " + ", ".join(
            f"alerts.{k}={v:g}" for k, v in over.items())
    return text


@dataclass(frozen=True, slots=True)
class Transition:
    kind: TransitionKind
    severity: Severity  # the alert's severity after this transition
    ts: float
    score: float


class RuleMachine:
    """Debounced, hysteretic alert state of one asset for one condition."""

    # One per asset and condition: the last n breaches are the low n bits of an int
    # (bit 0 the newest), not a deque, whose first block alone is ~370 bytes.
    __slots__ = (
        "_cooldown_until",
        "_crit",
        "_healthy_run",
        "_last_ts",
        "_mask",
        "_severity",
        "_warn",
        "spec",
    )

    def __init__(self, spec: RuleSpec) -> None:
        self.spec = spec
        self._mask = (1 << spec.n) - 1
        self._warn = 0
        self._crit = 0
        self._healthy_run = 0
        self._severity: Severity | None = None
        self._cooldown_until = float("-inf")
        self._last_ts = float("-inf")

    @property
    def active(self) -> bool:
        return self._severity is not None

    @property
    def severity(self) -> Severity | None:
        return self._severity

    @property
    def cooldown_until(self) -> float:
        return self._cooldown_until

    def update(self, ts: float, score: float) -> list[Transition]:
        """Feed one window's score; returns the transitions it caused (usually none).

        Non-finite scores are ignored (the inference stage counts them); a sample
        older than the last one is ignored too, so a replayed batch cannot rewind.
        """
        if score != score or score in (float("inf"), float("-inf")) or ts < self._last_ts:
            return []
        self._last_ts = ts
        spec = self.spec
        crit = spec.critical is not None and spec.breached(score, spec.critical)
        self._warn = (self._warn << 1 | spec.breached(score, spec.warning)) & self._mask
        self._crit = (self._crit << 1 | crit) & self._mask
        self._healthy_run = self._healthy_run + 1 if spec.healthy(score) else 0
        warn_hits, crit_hits = self._warn.bit_count(), self._crit.bit_count()

        if self._severity is None:
            if warn_hits >= spec.k and ts >= self._cooldown_until:
                self._severity = "critical" if crit_hits >= spec.k else "warning"
                self._healthy_run = 0
                return [Transition("opened", self._severity, ts, score)]
            return []
        if self._healthy_run >= spec.clear_after:
            severity = self._severity
            self._close(ts)
            return [Transition("cleared", severity, ts, score)]
        if self._severity == "warning" and crit_hits >= spec.k:
            self._severity = "critical"
            return [Transition("escalated", "critical", ts, score)]
        return []

    def force_clear(self) -> None:
        """The crew resolved the alert by hand: start the cooldown from the last sample.

        If the condition still holds, a new alert opens once the cooldown is over
        and ``k`` of ``n`` fresh windows breach again.
        """
        if self._severity is not None:
            self._close(self._last_ts)

    def restore(self, severity: Severity) -> None:
        """Resume an alert that was still unresolved when the agent stopped."""
        self._severity = severity
        self._healthy_run = 0

    def _close(self, ts: float) -> None:
        self._severity = None
        self._healthy_run = 0
        self._warn = self._crit = 0
        self._cooldown_until = ts + self.spec.cooldown_s
