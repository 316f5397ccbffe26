"""Pure limit and sensor-fault alarms: one small state machine per asset, signal and kind.

Readings come in with a verdict from :mod:`edge.scoring.ranges`. Two kinds of alarm
(ISA-18.2: one alarm per asset and signal, never one per sample):

* ``limit`` — opens on the first reading outside the training range's alarm
  limits; clears after ``clear_after`` consecutive readings back inside the
  limits *and* the deadband (``deadband`` share of the limit span inside them),
  so a value hovering at the limit does not chatter.
* ``sensor_fault`` — opens on the first physically impossible reading, or on a
  value that is no number at all (NaN/Inf: ``reason`` ``non_finite``, for any
  signal, bounds or not: a value the system cannot judge is shown to a person);
  clears after ``clear_after`` consecutive plausible readings.

While an alarm is active the machine keeps its evidence: the latest value and
the worst one (furthest past the bound). No storage, MQTT or clock here; the
:class:`edge.alerts.manager.AlertManager` persists what it reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from edge.scoring.ranges import FAULT, HIGH, LOW, OK, SignalBounds

Kind = Literal["limit", "sensor_fault"]


@dataclass(frozen=True, slots=True)
class LimitSample:
    asset: str
    signal: str
    ts: float
    value: float
    verdict: int  # edge.scoring.ranges OK / LOW / HIGH / FAULT


@dataclass(frozen=True, slots=True)
class LimitSettings:
    clear_after: int = 5
    deadband: float = 0.02

    def __post_init__(self) -> None:
        if self.clear_after < 1:
            raise ValueError(f"alerts.limits.clear_after={self.clear_after} < 1")
        if not 0 <= self.deadband < 0.5:
            raise ValueError(f"alerts.limits.deadband={self.deadband} outside [0, 0.5)")


@dataclass(slots=True)
class LimitState:
    """One active alarm's evidence."""

    asset: str
    signal: str
    kind: Kind
    bound: str  # training_min | training_max | plausible
    limit: float | None
    opened_ts: float
    value: float
    ts: float
    worst: float
    healthy: int = 0  # consecutive readings on the clear side
    reason: str = ""  # sensor_fault: implausible | non_finite (of the latest bad reading)

    def condition(self) -> str:
        return condition_of(self.kind, self.signal)


@dataclass(frozen=True, slots=True)
class LimitChange:
    event: Literal["opened", "cleared"]
    state: LimitState


def condition_of(kind: str, signal: str) -> str:
    """The alert store's condition: ``limit:s4``, ``sensor_fault:s4``."""
    return f"{kind}:{signal}"


@dataclass
class LimitTracker:
    bounds: dict[str, SignalBounds]
    settings: LimitSettings = field(default_factory=LimitSettings)
    active: dict[tuple[str, str, str], LimitState] = field(default_factory=dict)
    # (asset, signal) pairs with an active alarm: their in-range readings must be fed.
    watched: set[tuple[str, str]] = field(default_factory=set)

    def feed(self, s: LimitSample) -> list[LimitChange]:
        """One reading; returns the alarms it opened or cleared (usually none)."""
        b = self.bounds.get(s.signal)
        nan = not math.isfinite(s.value)
        if b is None and not (nan or (s.asset, s.signal) in self.watched):
            return []
        out = []
        for kind in ("limit", "sensor_fault") if b is not None else ("sensor_fault",):
            key = (s.asset, s.signal, kind)
            cur = self.active.get(key)
            bad = s.verdict == FAULT if kind == "sensor_fault" else s.verdict in (LOW, HIGH)
            if bad:
                reason = "" if kind == "limit" else "non_finite" if nan else "implausible"
                if cur is None:
                    bound, limit = b.limit_of(s.verdict) if b else ("plausible", math.nan)
                    cur = LimitState(s.asset, s.signal, kind, bound,
                                     None if kind == "sensor_fault" else limit, s.ts,
                                     s.value, s.ts, s.value, reason=reason)
                    self.active[key] = cur
                    self.watched.add((s.asset, s.signal))
                    out.append(LimitChange("opened", cur))
                else:
                    cur.healthy = 0
                    cur.value, cur.ts, cur.reason = s.value, s.ts, reason
                    if _worse(cur, s.value):
                        cur.worst = s.value
            elif cur is not None and s.verdict != FAULT:
                cur.value, cur.ts = s.value, s.ts
                cur.healthy = cur.healthy + 1 if self._clear_side(cur, b, s) else 0
                if cur.healthy >= self.settings.clear_after:
                    out.append(LimitChange("cleared", self.drop(s.asset, s.signal, kind)))
        return out

    def _clear_side(self, cur: LimitState, b: SignalBounds | None, s: LimitSample) -> bool:
        if cur.kind == "sensor_fault" or b is None:
            return True
        band = self.settings.deadband * (b.high - b.low) if b.high > b.low else 0.0
        return s.verdict == OK and b.low + band <= s.value <= b.high - band

    def drop(self, asset: str, signal: str, kind: str) -> LimitState:
        """Forget an alarm (cleared, or resolved by the crew: the next bad reading re-opens)."""
        st = self.active.pop((asset, signal, kind))
        if not any((asset, signal, k) in self.active for k in ("limit", "sensor_fault")):
            self.watched.discard((asset, signal))
        return st

    def restore(self, st: LimitState) -> None:
        """An alarm left unresolved before a restart: carry on with it."""
        self.active[(st.asset, st.signal, st.kind)] = st
        self.watched.add((st.asset, st.signal))


def _worse(st: LimitState, v: float) -> bool:
    if not math.isfinite(v):  # a number past the bound says more than "no number"
        return False
    if not math.isfinite(st.worst):
        return True
    if st.bound == "training_min":
        return v < st.worst
    if st.bound == "training_max":
        return v > st.worst
    return abs(v) > abs(st.worst)
