"""The crew's verdict on a resolved alert, and live precision from the verdicts.

A person resolving an alert says what they found: ``confirmed`` (a real fault),
``false_alarm`` (nothing wrong) or ``unsure`` (could not tell), optionally with a
note and a work-order id. A verdict may be amended later; the last one counts.

Live precision = confirmed / (confirmed + false_alarm) over the last verdict of
each alert: "could not tell" is counted but is neither right nor wrong, and an
alert nobody judged (most auto-cleared ones) is not counted at all. It is the
precision of **model** alerts, per model (``<name>/<version>``, the model that
scored the window that opened the alert) and per asset; limit and sensor-fault
alerts are rules of the agent, not the model's, and are tallied apart.

>>> t = Tally()
>>> for v in ("confirmed", "confirmed", "false_alarm", "unsure"):
...     t.add(v)
>>> (t.judged, t.total, t.precision)
(3, 4, 0.6667)
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.core.errors import StorageError

VERDICTS = ("confirmed", "false_alarm", "unsure")
NOTE_MAX = 2000
WORK_ORDER_MAX = 64
# A work-order id is typed by a person and shown beside the alert: letters, digits and
# the separators CMMS ids use; no control character, quote or markup.
WORK_ORDER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 _./#:\-]{0,63}$"
_WORK_ORDER = re.compile(WORK_ORDER_PATTERN)
# Where a bundle's manifest ``metrics`` keep its precision before it ran here, in order
# of preference: the supervised families' validation split, their test split, and the
# anomaly families' labelled test rows (window level).
VALIDATION_KEYS = ("validation_precision", "test_precision", "test_window_precision")


def check(verdict: str, note: str | None, work_order: str | None) -> None:
    """Refuse a verdict the store must not hold, naming the field and the value.

    >>> check("confirmed", None, "WO-1234/7")
    >>> check("maybe", None, None)
    Traceback (most recent call last):
    ...
    ValueError: verdict 'maybe' is not one of confirmed, false_alarm, unsure
    >>> check("unsure", None, "WO 1; DROP")
    Traceback (most recent call last):
    ...
    ValueError: work_order 'WO 1; DROP' must match ^[A-Za-z0-9][A-Za-z0-9 _./#:\\-]{0,63}$
    """
    if verdict not in VERDICTS:
        raise ValueError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
    if note is not None and len(note) > NOTE_MAX:
        raise ValueError(f"note is {len(note)} characters, more than {NOTE_MAX}")
    if work_order is not None and not _WORK_ORDER.match(work_order):
        raise ValueError(f"work_order {work_order!r} must match {WORK_ORDER_PATTERN}")


def precision(confirmed: int, false_alarm: int) -> float | None:
    """confirmed / (confirmed + false_alarm), 4 decimals; None before any such verdict.

    >>> precision(3, 1), precision(0, 0)
    (0.75, None)
    """
    judged = confirmed + false_alarm
    return round(confirmed / judged, 4) if judged else None


@dataclass
class Tally:
    """Last verdicts of a group of alerts."""

    confirmed: int = 0
    false_alarm: int = 0
    unsure: int = 0

    def add(self, verdict: str, n: int = 1) -> None:
        if verdict in VERDICTS:
            setattr(self, verdict, getattr(self, verdict) + n)

    def merge(self, other: Tally) -> None:
        for v in VERDICTS:
            self.add(v, getattr(other, v))

    @property
    def judged(self) -> int:
        """Verdicts that say right or wrong (the precision's denominator)."""
        return self.confirmed + self.false_alarm

    @property
    def total(self) -> int:
        return self.confirmed + self.false_alarm + self.unsure

    @property
    def precision(self) -> float | None:
        return precision(self.confirmed, self.false_alarm)

    def to_dict(self) -> dict[str, Any]:
        return {"confirmed": self.confirmed, "false_alarm": self.false_alarm,
                "unsure": self.unsure, "judged": self.judged, "precision": self.precision}


@dataclass(frozen=True)
class VerdictRow:
    """Alerts of one kind, model and asset with the same last verdict (None: none given)."""

    kind: str
    model: str
    asset: str
    verdict: str | None
    n: int


def rows(db: sqlite3.Connection) -> list[VerdictRow]:
    """Resolved alerts grouped by kind, model, asset and last verdict (one query)."""
    got = db.execute("SELECT kind, model, asset, verdict, COUNT(*) FROM alerts "
                     "WHERE state = 'resolved' GROUP BY kind, model, asset, verdict").fetchall()
    return [VerdictRow(str(k), str(m or ""), str(a), None if v is None else str(v), int(n))
            for k, m, a, v, n in got]


def read_rows(store_path: Path) -> list[VerdictRow]:
    """:func:`rows` through a read-only connection of its own (the writer never waits)."""
    try:
        db = sqlite3.connect(f"file:{Path(store_path)}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise StorageError(f"{store_path}: cannot open alert store read-only ({exc})") from exc
    try:
        return rows(db)
    except sqlite3.Error as exc:
        raise StorageError(f"{store_path}: cannot count verdicts ({exc})") from exc
    finally:
        db.close()


def model_verdicts(store_path: Path, model: str, since: float) -> dict[str, int]:
    """Last verdicts on model alerts ``model`` raised that opened at or after ``since``.

    The staged rollout's verdict hook (:data:`edge.models.stages.Verdicts`): a read-only
    connection of its own, so the hot loop's writer never waits on it. An unreadable
    store counts as no verdicts (the rollout judge still has its other rules).
    """
    try:
        db = sqlite3.connect(f"file:{Path(store_path)}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error:
        return {}
    try:
        got = db.execute("SELECT verdict, COUNT(*) FROM alerts WHERE kind = 'model' AND "
                         "model = ? AND opened_ts >= ? AND verdict IS NOT NULL "
                         "GROUP BY verdict", (model, since)).fetchall()
    except sqlite3.Error:
        return {}
    finally:
        db.close()
    return {str(v): int(n) for v, n in got}


def split_model(model: str) -> tuple[str, str]:
    """``"<name>/<version>"`` as the scorer names a model -> (name, version).

    >>> split_model("cmapss-rul/3"), split_model("")
    (('cmapss-rul', '3'), ('', ''))
    """
    name, _, version = model.partition("/")
    return name, version


@dataclass
class Summary:
    """Live precision of model alerts per model and per asset; other kinds apart."""

    by_model: dict[str, Tally] = field(default_factory=dict)
    by_asset: dict[str, Tally] = field(default_factory=dict)
    by_kind: dict[str, Tally] = field(default_factory=dict)  # limit, sensor_fault
    unjudged: int = 0  # resolved model alerts without a verdict

    @property
    def overall(self) -> Tally:
        out = Tally()
        for t in self.by_model.values():
            out.merge(t)
        return out


def summarise(got: Iterable[VerdictRow]) -> Summary:
    """Fold :func:`rows` into per-model, per-asset and per-kind tallies.

    >>> s = summarise([VerdictRow("model", "m/1", "e1", "confirmed", 2),
    ...                VerdictRow("model", "m/1", "e2", "false_alarm", 1),
    ...                VerdictRow("model", "m/1", "e2", None, 5),
    ...                VerdictRow("limit", "m/1", "e2", "confirmed", 1)])
    >>> s.by_model["m/1"].precision, s.by_asset["e2"].precision, s.unjudged
    (0.6667, 0.0, 5)
    >>> s.by_kind["limit"].confirmed
    1
    """
    out = Summary()
    for r in got:
        if r.kind != "model":
            if r.verdict is not None:
                out.by_kind.setdefault(r.kind, Tally()).add(r.verdict, r.n)
            continue
        if r.verdict is None:
            out.unjudged += r.n
            continue
        out.by_model.setdefault(r.model, Tally()).add(r.verdict, r.n)
        out.by_asset.setdefault(r.asset, Tally()).add(r.verdict, r.n)
    return out


def validation_figure(metrics: Mapping[str, float]) -> tuple[str, float] | None:
    """The bundle's own precision figure and which manifest metric it is.

    >>> validation_figure({"test_precision": 0.8, "validation_precision": 0.9})
    ('validation_precision', 0.9)
    >>> validation_figure({"validation_rmse": 17.0}) is None
    True
    """
    for key in VALIDATION_KEYS:
        v = metrics.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool) and 0.0 <= v <= 1.0:
            return key, round(float(v), 4)
    return None
