"""A rollout stage's health gate, judged from the sites' signed health reports.

A site passes when it has been on the new version for the hold time and,
compared with the reports from before the switch:

* it is fresh (its latest health report is younger than ``fresh_s``) and still
  on the version (an automatic rollback on the appliance shows here);
* it scored at least ``min_windows`` windows on the new version;
* live precision is not worse than before by more than ``precision_margin``
  (judged only when both sides have one: precision is k-suppressed);
* the inference error rate (errors per window scored) did not rise by more than
  ``error_margin``; inference errors, not decode errors, because only the model
  changed and bad site data would otherwise block a rollout;
* no canary verdict failed during the hold.

Health figures are cumulative since the agent started, so the gate uses
differences between reports; a restart (``uptime_s`` or counters going down)
restarts the difference at the report after it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fleet.store import Report


@dataclass(frozen=True)
class GateRules:
    version: str
    name: str | None = None
    hold_s: float = 0.0
    fresh_s: float = 3600.0
    min_windows: int = 0
    precision_margin: float = 0.02
    error_margin: float = 0.0


@dataclass(frozen=True)
class Verdict:
    ok: bool
    why: str
    held_s: float = 0.0
    facts: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "why": self.why, "held_s": round(self.held_s, 1),
                **({"facts": self.facts} if self.facts else {})}


@dataclass(frozen=True)
class _Snap:
    received: float
    on: bool  # on the rule's version
    versions: tuple[str, ...]
    uptime: int
    windows: int
    inference_errors: int
    precision: float | None
    canary_failed: int


def _snap(r: Report, rules: GateRules) -> _Snap:
    b = json.loads(r.body)
    models = [m for m in b.get("models", []) if rules.name in (None, m.get("name"))]
    versions = tuple(sorted({str(m.get("version")) for m in models}))
    return _Snap(r.received, bool(models) and versions == (rules.version,), versions,
                 int(b.get("uptime_s", 0)), int(b.get("windows_scored", 0)),
                 int(b.get("errors", {}).get("inference", 0)), b.get("precision"),
                 int(b.get("canary", {}).get("failed", 0)))


def _delta(first: _Snap, last: _Snap, field: str) -> int:
    """Growth of a cumulative figure between two reports (a restart resets it)."""
    a, b = int(getattr(first, field)), int(getattr(last, field))
    return b if b < a or last.uptime < first.uptime else b - a


def _rate(first: _Snap, last: _Snap) -> float | None:
    w = _delta(first, last, "windows")
    return None if w <= 0 else _delta(first, last, "inference_errors") / w


def judge(health: list[Report], rules: GateRules, now: float) -> Verdict:
    """One site's verdict from its health reports (any order)."""
    snaps = [_snap(r, rules) for r in sorted(health, key=lambda r: r.seq)]
    if not snaps:
        return Verdict(False, "no health report")
    last = snaps[-1]
    if now - last.received > rules.fresh_s:
        return Verdict(False, f"stale (last health report {now - last.received:.0f} s ago)")
    if not last.on:
        return Verdict(False, f"not on version {rules.version} ({list(last.versions)})")
    i = len(snaps) - 1
    while i > 0 and snaps[i - 1].on:
        i -= 1
    first = snaps[i]
    # The report before the first one on the new version was sent before the
    # swap; the hold runs from it when known (the swap happened after it).
    before = snaps[i - 1] if i > 0 else None
    start = first if before is None else before
    held = now - first.received
    facts: dict[str, Any] = {"reports_on_version": len(snaps) - i}
    if held < rules.hold_s:
        return Verdict(False, f"held {held:.0f} s of {rules.hold_s:.0f} s", held, facts)
    windows = _delta(start, last, "windows")
    facts["windows"] = windows
    if windows < rules.min_windows:
        return Verdict(False, f"{windows} windows scored on the new version, fewer than "
                       f"{rules.min_windows}", held, facts)
    failed = _delta(start, last, "canary_failed")
    if failed:
        return Verdict(False, f"{failed} canary verdicts failed during the hold", held, facts)
    base = [s for s in snaps[:i] if not s.on]
    new_rate = _rate(start, last)
    old_rate = _rate(base[0], base[-1]) if len(base) >= 2 else None
    facts.update(error_rate=new_rate, error_rate_before=old_rate)
    if new_rate is not None and new_rate > (old_rate or 0.0) + rules.error_margin:
        return Verdict(False, f"inference error rate {new_rate:.4f} per window, before "
                       f"{old_rate or 0.0:.4f} (margin {rules.error_margin})", held, facts)
    old_p = next((s.precision for s in reversed(base) if s.precision is not None), None)
    facts.update(precision=last.precision, precision_before=old_p)
    if old_p is not None and last.precision is not None \
            and last.precision < old_p - rules.precision_margin:
        return Verdict(False, f"precision {last.precision:.3f}, before {old_p:.3f} "
                       f"(margin {rules.precision_margin})", held, facts)
    return Verdict(True, "", held, facts)
