"""Alarm-system figures (EEMUA 191, ISA-18.2) from the alert store's event history.

Pure functions over event timestamps, and one read-only query of the store
(:func:`alarm_kpis`) that opens its own ``mode=ro`` connection, so the agent's
writer is never blocked or changed.

What counts (decisions where the standards leave a choice):

* An **alarm** is an annunciation: an ``opened`` or ``escalated`` event (an
  escalation to critical asks the crew to act again).
* Rates are per operator: the counts divided by ``operators`` (configured).
* **Flood**: a fixed 10-minute period (aligned on the epoch) with more than 10
  alarms per operator; ``floods`` counts runs of consecutive flooded periods and
  ``flood_s`` is their total length. Fixed periods are what ISA-18.2's
  "% of 10-minute periods in flood" reports, and need no state between calls.
* **Chattering**: an (asset, condition) with 3 or more transitions (opened,
  auto-cleared or resolved) within any 60 s.
* **Stale**: an alert unresolved (open or acknowledged) for more than 24 h.

Targets: about 1 alarm per 10 minutes per operator, at most ~150 a day.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edge.core.errors import StorageError

PERIOD_S = 600.0
DAY_S = 86_400.0
FLOOD_ABOVE = 10
CHATTER_TRANSITIONS = 3
CHATTER_WINDOW_S = 60.0
STALE_AFTER_S = DAY_S
ANNUNCIATIONS = ("opened", "escalated")
TRANSITIONS = ("opened", "auto_cleared", "resolved")


def per_period(ts: Iterable[float], period_s: float = PERIOD_S) -> Counter[int]:
    """Alarms per fixed period (index = ``int(t // period_s)``).

    >>> sorted(per_period([0, 10, 599, 600, 1250]).items())
    [(0, 3), (1, 1), (2, 1)]
    """
    return Counter(int(t // period_s) for t in ts)


def average_per_period(ts: Sequence[float], start: float, end: float,
                       period_s: float = PERIOD_S) -> float:
    """Mean alarms per period over [start, end).

    >>> average_per_period([5, 6, 7], 0, 1800)
    1.0
    """
    span = max(end - start, period_s)
    return sum(start <= t < end for t in ts) * period_s / span


def flood_runs(ts: Iterable[float], above: float = FLOOD_ABOVE,
               period_s: float = PERIOD_S) -> list[tuple[int, int]]:
    """Runs of consecutive flooded periods as (first index, length).

    >>> flood_runs([1.0] * 11 + [700.0] * 12 + [3000.0] * 11)
    [(0, 2), (5, 1)]
    >>> flood_runs([1.0] * 10)
    []
    """
    flooded = sorted(i for i, n in per_period(ts, period_s).items() if n > above)
    runs: list[tuple[int, int]] = []
    for i in flooded:
        if runs and runs[-1][0] + runs[-1][1] == i:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


def chattering(transitions: dict[Any, list[float]], n: int = CHATTER_TRANSITIONS,
               window_s: float = CHATTER_WINDOW_S) -> list[Any]:
    """Sources with ``n`` or more transitions inside any ``window_s``.

    >>> chattering({"a": [0, 20, 59], "b": [0, 30, 61], "c": [5]})
    ['a']
    """
    out = []
    for src, ts in transitions.items():
        s = sorted(ts)
        if any(s[i + n - 1] - s[i] <= window_s for i in range(len(s) - n + 1)):
            out.append(src)
    return out


def stale(opened: Iterable[float], now: float, after_s: float = STALE_AFTER_S) -> int:
    """Unresolved alerts open longer than ``after_s``.

    >>> stale([0.0, 50_000.0, 90_000.0], now=100_000.0)
    1
    """
    return sum(now - t > after_s for t in opened)


@dataclass(frozen=True)
class AlarmKpis:
    operators: int
    window_s: float
    alarms: int  # annunciations in the window
    per_10min_avg: float  # per operator
    per_10min_peak: float  # per operator, busiest fixed period
    per_day: float  # per operator, last 24 h
    floods: int
    flood_s: float
    flood_fraction: float  # share of the window's periods in flood
    chattering: int
    stale: int
    target_per_10min: float = 1.0
    target_per_day: float = 150.0
    # What the counts are made of, by asset (filled by :func:`alarm_kpis` from the
    # store; plain timestamps do not name them): each flood run with its start, end
    # and alarms per asset; the chattering (asset, condition)s; the stale alerts.
    flood_items: tuple[dict[str, Any], ...] = field(default=())
    chattering_items: tuple[dict[str, Any], ...] = field(default=())
    stale_items: tuple[dict[str, Any], ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compute(annunciations: Sequence[float], transitions: dict[Any, list[float]],
            unresolved_opened: Sequence[float], now: float, operators: int = 1,
            window_s: float = DAY_S) -> AlarmKpis:
    """Every figure from plain timestamps (the window ends at ``now``).

    >>> k = compute([100.0 * i for i in range(30)], {}, [], now=3000.0, window_s=3000.0)
    >>> (k.alarms, k.per_10min_avg, k.per_10min_peak, k.floods)
    (30, 6.0, 6.0, 0)
    """
    ops = max(1, operators)
    start = now - window_s
    ts = [t for t in annunciations if start <= t <= now]
    counts = per_period(ts)
    runs = flood_runs(ts, FLOOD_ABOVE * ops)
    periods = max(1.0, window_s / PERIOD_S)
    flooded = sum(n for _, n in runs)
    return AlarmKpis(
        operators=ops, window_s=window_s, alarms=len(ts),
        per_10min_avg=round(average_per_period(ts, start, now) / ops, 4),
        per_10min_peak=round(max(counts.values(), default=0) / ops, 4),
        per_day=round(sum(now - t < DAY_S for t in ts) / ops, 4),
        floods=len(runs), flood_s=flooded * PERIOD_S,
        flood_fraction=round(min(1.0, flooded / periods), 4),
        chattering=len(chattering({k: [t for t in v if t >= start]
                                   for k, v in transitions.items()})),
        stale=stale(unresolved_opened, now))


def alarm_kpis(store_path: Path, now: float, operators: int = 1,
               window_s: float = DAY_S) -> AlarmKpis:
    """Read the store (read-only connection) and compute the figures."""
    since = now - window_s
    try:
        db = sqlite3.connect(f"file:{Path(store_path)}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise StorageError(f"{store_path}: cannot open alert store read-only ({exc})") from exc
    try:
        rows = db.execute(
            "SELECT e.ts, e.kind, a.asset, a.condition FROM alert_events e "
            "JOIN alerts a ON a.id = e.alert_id WHERE e.ts >= ? AND e.kind IN "
            "('opened', 'escalated', 'auto_cleared', 'resolved') ORDER BY e.ts",
            (since,)).fetchall()
        unresolved = db.execute(
            "SELECT id, asset, opened_ts FROM alerts WHERE state IN ('open', 'acknowledged') "
            "ORDER BY opened_ts").fetchall()
    except sqlite3.Error as exc:
        raise StorageError(f"{store_path}: cannot read alert history ({exc})") from exc
    finally:
        db.close()
    ann = [(float(t), str(asset)) for t, kind, asset, _ in rows
           if kind in ANNUNCIATIONS and since <= float(t) <= now]
    trans: dict[Any, list[float]] = {}
    for t, kind, asset, cond in rows:
        if kind in TRANSITIONS:
            trans.setdefault((asset, cond), []).append(float(t))
    opened = [float(r[2]) for r in unresolved]
    k = compute([t for t, _ in ann], trans, opened, now, operators, window_s)
    floods = []
    for first, n in flood_runs([t for t, _ in ann], FLOOD_ABOVE * k.operators):
        start, end = first * PERIOD_S, (first + n) * PERIOD_S
        by_asset = Counter(a for t, a in ann if start <= t < end)
        floods.append({"start": start, "end": end, "alarms": sum(by_asset.values()),
                       "assets": [{"asset": a, "alarms": c} for a, c in by_asset.most_common()]})
    chatter = [{"asset": a, "condition": c, "transitions": len(trans[(a, c)])}
               for a, c in chattering(trans)]
    stale_items = [{"id": int(i), "asset": str(a), "opened_ts": float(t)}
                   for i, a, t in unresolved if now - float(t) > STALE_AFTER_S]
    return replace(k, flood_items=tuple(floods), chattering_items=tuple(chatter),
                   stale_items=tuple(stale_items))
