"""The replay gate: candidate and active over the same held-back period, judged on counts.

Both bundles are replayed over the gate period of every asset with their own alert
policy (:mod:`trainer.gatereplay`); this module only counts. Per asset, pooled over
assets:

* evaluated windows: windows ending in the gate period;
* confirmed faults: confirmed alert spans widened by the margin, and runs of
  labelled rows, merged (:func:`trainer.alertspans.fault_intervals`);
* a bundle *catches* a fault when its alert is open after at least one evaluated
  window ending inside the fault;
* healthy windows: evaluated windows ending outside every fault;
* false-alarm windows: healthy windows after which the bundle's alert is open;
* **false-alarm rate** = false-alarm windows / healthy windows (the share of
  healthy time the crew would see an alert);
* false alerts: alerts opened outside every fault (reported, not judged: one
  alert held open all day is worse than two short ones, and the rate sees that).

The candidate is **accepted** iff it catches every fault the active catches and its
false-alarm rate is not above the active's. A gate period without an evaluated
window is refused: nothing was compared.

>>> t = np.arange(10.0)
>>> act = Trace(t, t, np.array([0, 0, 1, 1, 1, 0, 0, 1, 1, 0], bool), [2.0, 7.0], 1.0)
>>> cand = Trace(t, t, np.array([0, 0, 0, 1, 1, 0, 0, 0, 0, 0], bool), [3.0], 1.0)
>>> r = judge({"p": act}, {"p": cand}, [Fault("p", 3.0, 4.0, "alert 9")])
>>> (r.accepted, r.active.false_alarm_windows, r.candidate.false_alarm_windows)
(True, 3, 0)
>>> print(judge({"p": act}, {"p": cand}, [Fault("p", 7.0, 8.0, "label")]).reasons[0])
misses 1 confirmed fault the active catches: p 1970-01-01T00:00:07Z .. 1970-01-01T00:00:08Z (label)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Trace:
    """One bundle's replay of one asset, evaluated windows only (time order)."""

    win_ts: np.ndarray
    scores: np.ndarray
    active: np.ndarray  # the alert is open after this window
    opened: list[float]  # data times of the alerts opened at evaluated windows
    threshold: float  # the warning level (for the report)


@dataclass(frozen=True)
class Fault:
    asset: str
    start: float
    end: float
    source: str  # "alert 12", "alerts 3, 4", "label", ...

    def text(self) -> str:
        return f"{self.asset} {iso(self.start)} .. {iso(self.end)} ({self.source})"


def iso(t: float) -> str:
    """Data time as UTC ISO-8601 (seconds).

    >>> iso(0.0)
    '1970-01-01T00:00:00Z'
    """
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass
class Side:
    """One bundle's counts over the gate period."""

    windows: int = 0
    healthy: int = 0
    false_alarm_windows: int = 0
    fault_windows: int = 0
    fault_windows_alerted: int = 0
    alerts_opened: int = 0
    false_alerts: int = 0
    caught: set[int] = field(default_factory=set)  # indices into GateResult.faults

    @property
    def false_alarm_rate(self) -> float:
        return self.false_alarm_windows / self.healthy if self.healthy else 0.0

    @property
    def window_precision(self) -> float | None:
        """Alert-open windows inside a fault / all alert-open windows."""
        alerted = self.fault_windows_alerted + self.false_alarm_windows
        return self.fault_windows_alerted / alerted if alerted else None

    def add(self, o: Side) -> None:
        for k in ("windows", "healthy", "false_alarm_windows", "fault_windows",
                  "fault_windows_alerted", "alerts_opened", "false_alerts"):
            setattr(self, k, getattr(self, k) + getattr(o, k))
        self.caught |= o.caught

    def to_dict(self, n_faults: int) -> dict[str, Any]:
        return {"windows": self.windows, "healthy_windows": self.healthy,
                "false_alarm_windows": self.false_alarm_windows,
                "false_alarm_rate": round(self.false_alarm_rate, 6),
                "fault_windows": self.fault_windows,
                "fault_windows_alerted": self.fault_windows_alerted,
                "window_precision": None if self.window_precision is None
                else round(self.window_precision, 6),
                "alerts_opened": self.alerts_opened, "false_alerts": self.false_alerts,
                "faults_caught": len(self.caught), "faults": n_faults}


def count(trace: Trace, faults: list[tuple[int, Fault]]) -> Side:
    """One bundle's counts on one asset; ``faults`` are this asset's, with their index."""
    ts, on = trace.win_ts, np.asarray(trace.active, bool)
    in_fault = np.zeros(ts.shape, bool)
    s = Side(windows=int(ts.size), alerts_opened=len(trace.opened))
    for i, f in faults:
        inside = (ts >= f.start) & (ts <= f.end)
        in_fault |= inside
        if np.any(on & inside):
            s.caught.add(i)
    s.healthy = int((~in_fault).sum())
    s.false_alarm_windows = int((on & ~in_fault).sum())
    s.fault_windows = int(in_fault.sum())
    s.fault_windows_alerted = int((on & in_fault).sum())
    s.false_alerts = sum(1 for t in trace.opened
                         if not any(f.start <= t <= f.end for _, f in faults))
    return s


@dataclass
class GateResult:
    faults: list[Fault]
    active: Side
    candidate: Side
    per_asset: dict[str, tuple[Side, Side]]
    accepted: bool
    reasons: list[str]

    @property
    def missed(self) -> list[Fault]:
        return [self.faults[i] for i in sorted(self.active.caught - self.candidate.caught)]

    def figures(self) -> dict[str, Any]:
        n = len(self.faults)
        return {"accepted": self.accepted, "reasons": self.reasons,
                "active": self.active.to_dict(n), "candidate": self.candidate.to_dict(n),
                "faults": [{"asset": f.asset, "start": f.start, "end": f.end,
                            "source": f.source, "active": i in self.active.caught,
                            "candidate": i in self.candidate.caught}
                           for i, f in enumerate(self.faults)],
                "assets": {a: {"active": x.to_dict(n), "candidate": y.to_dict(n)}
                           for a, (x, y) in self.per_asset.items()}}


def judge(active: dict[str, Trace], candidate: dict[str, Trace], faults: list[Fault]
          ) -> GateResult:
    """Count both replays and decide (the rule in the module docstring)."""
    by_asset: dict[str, list[tuple[int, Fault]]] = {}
    for i, f in enumerate(faults):
        by_asset.setdefault(f.asset, []).append((i, f))
    tot_a, tot_c = Side(), Side()
    per: dict[str, tuple[Side, Side]] = {}
    for asset in sorted(set(active) | set(candidate)):
        empty = Trace(np.empty(0), np.empty(0), np.zeros(0, bool), [], float("nan"))
        a = count(active.get(asset, empty), by_asset.get(asset, []))
        c = count(candidate.get(asset, empty), by_asset.get(asset, []))
        per[asset] = (a, c)
        tot_a.add(a)
        tot_c.add(c)
    reasons: list[str] = []
    if tot_a.windows == 0 or tot_c.windows == 0:
        reasons.append("no window in the gate period: nothing was compared")
    missed = sorted(tot_a.caught - tot_c.caught)
    if missed:
        reasons.append(f"misses {len(missed)} confirmed fault{'s' * (len(missed) > 1)} the "
                       "active catches: " + "; ".join(faults[i].text() for i in missed))
    if tot_c.false_alarm_rate > tot_a.false_alarm_rate:
        reasons.append(f"false-alarm rate {tot_c.false_alarm_rate:.2%} "
                       f"({tot_c.false_alarm_windows} of {tot_c.healthy} healthy windows) "
                       f"above the active's {tot_a.false_alarm_rate:.2%} "
                       f"({tot_a.false_alarm_windows} of {tot_a.healthy})")
    return GateResult(faults, tot_a, tot_c, per, not reasons, reasons)
