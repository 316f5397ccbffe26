"""Canary: a stable share of assets runs the candidate; a judge decides when to roll back.

:func:`canary_assets` picks assets by SHA-256 of a salt and the asset id, so the
same assets stay on the candidate across restarts and appliances (Python's
``hash()`` is salted per process). :class:`CanaryJudge` is pure: the agent feeds
it per-batch counts for the ``stable`` and ``candidate`` groups and asks for a
:meth:`~CanaryJudge.verdict`.

>>> canary_assets("pump-7", 0.0, "s"), canary_assets("pump-7", 1.0, "s")
(False, True)
>>> j = CanaryJudge(min_windows=10)
>>> j.update("stable", 100, 0, [0.001] * 100, 2)
>>> j.update("candidate", 20, 20, [0.001] * 20, 0)
>>> j.verdict().rule
'error_rate'
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from edge.models.shadow import LatencyHistogram

Group = Literal["stable", "candidate"]


def canary_assets(asset: str, share: float, salt: str = "") -> bool:
    """True when ``asset`` belongs to the canary share (0.0–1.0) for this salt.

    Changing the salt (for example to the candidate's version) draws a new,
    independent set of assets; growing ``share`` only adds assets.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"canary share {share!r} must be within 0.0–1.0")
    digest = hashlib.sha256(f"{salt}\x00{asset}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < share * 2**64


def count_errors(scores: np.ndarray) -> int:
    """Non-finite scores in a batch: each counts as one error of the model."""
    return int(np.size(scores) - np.count_nonzero(np.isfinite(scores)))


@dataclass(frozen=True)
class RollbackReason:
    rule: Literal["error_rate", "latency_p99", "alert_rate"]
    reason: str
    values: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.reason


@dataclass
class _GroupStats:
    windows: int = 0
    errors: int = 0
    alerts: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    @property
    def error_rate(self) -> float:
        return self.errors / self.windows if self.windows else 0.0

    @property
    def alert_rate(self) -> float:
        return self.alerts / self.windows if self.windows else 0.0


class CanaryJudge:
    """Compares the candidate group with the stable group; the first failed rule sticks.

    Rules, checked once the candidate has scored ``min_windows`` windows:

    * error rate (non-finite scores and exceptions per window) above
      ``max_error_ratio`` × max(stable error rate, ``error_rate_floor``) — the floor
      keeps one error against a flawless stable model from rolling back;
    * p99 inference latency above ``p99_bound_s``;
    * alert rate off the stable one by more than ``alert_rate_factor`` either way
      (both rates floored at ``alert_rate_floor``), once the stable group also has
      ``min_windows`` and the difference in alert counts is beyond Poisson noise
      (3 sigma and at least ``min_alert_excess`` alerts).
    """

    def __init__(self, max_error_ratio: float = 2.0, p99_bound_s: float = 0.2,
                 alert_rate_factor: float = 3.0, min_windows: int = 100,
                 error_rate_floor: float = 0.005, alert_rate_floor: float = 0.001,
                 min_alert_excess: int = 3) -> None:
        if max_error_ratio <= 0 or p99_bound_s <= 0 or alert_rate_factor <= 1:
            raise ValueError("max_error_ratio and p99_bound_s must be > 0, "
                             "alert_rate_factor > 1")
        self.max_error_ratio = max_error_ratio
        self.p99_bound_s = p99_bound_s
        self.alert_rate_factor = alert_rate_factor
        self.min_windows = min_windows
        self.error_rate_floor = error_rate_floor
        self.alert_rate_floor = alert_rate_floor
        self.min_alert_excess = min_alert_excess
        self.groups: dict[str, _GroupStats] = {"stable": _GroupStats(),
                                               "candidate": _GroupStats()}
        self._verdict: RollbackReason | None = None

    def update(self, group: Group, n_windows: int, n_errors: int,
               latencies: Iterable[float], n_alerts: int) -> None:
        g = self.groups.get(group)
        if g is None:
            raise ValueError(f"canary group {group!r} must be 'stable' or 'candidate'")
        g.windows += n_windows
        g.errors += n_errors
        g.alerts += n_alerts
        for s in latencies:
            g.latency.update(s)

    def verdict(self) -> RollbackReason | None:
        if self._verdict is None:
            self._verdict = self._judge()
        return self._verdict

    def _judge(self) -> RollbackReason | None:
        st, ca = self.groups["stable"], self.groups["candidate"]
        if ca.windows < self.min_windows:
            return None
        limit = self.max_error_ratio * max(st.error_rate, self.error_rate_floor)
        if ca.error_rate > limit:
            return RollbackReason(
                "error_rate",
                f"candidate error rate {ca.error_rate:.2%} ({ca.errors}/{ca.windows} windows) "
                f"exceeds {self.max_error_ratio:g}x the stable rate {st.error_rate:.2%} "
                f"(limit {limit:.2%})",
                {"candidate": ca.error_rate, "stable": st.error_rate, "limit": limit})
        p99 = ca.latency.quantile(0.99)
        if p99 is not None and p99 > self.p99_bound_s:
            return RollbackReason(
                "latency_p99",
                f"candidate p99 inference latency {p99 * 1000:.0f} ms exceeds the bound "
                f"{self.p99_bound_s * 1000:.0f} ms ({ca.latency.count} calls)",
                {"p99_s": p99, "bound_s": self.p99_bound_s})
        return self._judge_alerts(st, ca)

    def _judge_alerts(self, st: _GroupStats, ca: _GroupStats) -> RollbackReason | None:
        if st.windows < self.min_windows:
            return None
        floor = self.alert_rate_floor
        ratio = max(ca.alert_rate, floor) / max(st.alert_rate, floor)
        if 1 / self.alert_rate_factor <= ratio <= self.alert_rate_factor:
            return None
        expected = st.alert_rate * ca.windows
        if abs(ca.alerts - expected) < max(3 * math.sqrt(expected), self.min_alert_excess):
            return None  # too few alerts to tell a real shift from chance
        way = "above" if ratio > 1 else "below"
        return RollbackReason(
            "alert_rate",
            f"candidate alert rate {ca.alert_rate:.3%} ({ca.alerts}/{ca.windows} windows) is "
            f"{ratio if ratio > 1 else 1 / ratio:.1f}x {way} the stable rate "
            f"{st.alert_rate:.3%} (allowed factor {self.alert_rate_factor:g})",
            {"candidate": ca.alert_rate, "stable": st.alert_rate, "ratio": ratio})

    def snapshot(self) -> dict[str, Any]:
        v = self.verdict()
        return {
            name: {"windows": g.windows, "errors": g.errors, "alerts": g.alerts,
                   "error_rate": g.error_rate, "alert_rate": g.alert_rate,
                   "latency_s": g.latency.summary()}
            for name, g in self.groups.items()
        } | {"verdict": None if v is None else {"rule": v.rule, "reason": v.reason}}
