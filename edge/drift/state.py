"""The drift alarm as the agent last saw it: one small file in the state directory.

The drift monitor's alarm is a metric and a report to central IT
(:mod:`edge.drift.reporting`). ``forewarn retrain --if-needed`` asks a question a
gauge cannot answer: *has the alarm been on for longer than X?* The reporter
therefore keeps this record of the current run of alarming intervals and
replaces ``<state_dir>/drift-state.json`` with it at every interval close
(temporary file, rename; no fsync: after a power cut the record is at most one
interval old, and the monitor restarts its persistence rule anyway).

The alarm's age is measured in data time (the first window of the first alarming
interval to the last window of the latest one), so a replay at any speed ages it
as the plant's own time would. Feature names stay on site: this file is not an
egress path.

>>> s = DriftState.start("pump/3")
>>> s = s.update(alarm=False, first_ts=0.0, last_ts=359.0, closed_at=10.0, over=())
>>> s = s.update(alarm=True, first_ts=360.0, last_ts=719.0, closed_at=20.0, over=("std_a",))
>>> s = s.update(alarm=True, first_ts=720.0, last_ts=1079.0, closed_at=30.0, over=("std_a",))
>>> (s.intervals, s.alarm_intervals, s.alarm_for_s)
(3, 2, 719.0)
>>> s.update(alarm=False, first_ts=1080.0, last_ts=1439.0, closed_at=40.0, over=()).alarm_for_s
0.0
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edge.core.errors import StorageError

STATE_FILE = "drift-state.json"
FORMAT = "forewarn.drift-state/1"


@dataclass(frozen=True)
class DriftState:
    """The current run of alarming drift intervals of one model (``<name>/<version>``)."""

    model: str
    intervals: int = 0  # closed since the monitor started
    alarm: bool = False  # the last closed interval alarmed
    alarm_intervals: int = 0  # consecutive alarming intervals up to the last one
    alarm_since_ts: float | None = None  # data time: first window of the run's first
    alarm_since_wall: float | None = None  # agent wall clock when that interval closed
    last_ts: float | None = None  # data time of the last closed interval's last window
    closed_at: float | None = None  # agent wall clock of the last close
    over: tuple[str, ...] = field(default_factory=tuple)  # alarming features, last interval

    @classmethod
    def start(cls, model: str) -> DriftState:
        return cls(model=model)

    def update(self, *, alarm: bool, first_ts: float, last_ts: float, closed_at: float,
               over: tuple[str, ...]) -> DriftState:
        """The state after one more closed interval (pure); NaN data times are unknown."""
        first = None if math.isnan(first_ts) else first_ts
        last = None if math.isnan(last_ts) else last_ts
        if not alarm:
            return replace(self, intervals=self.intervals + 1, alarm=False, alarm_intervals=0,
                           alarm_since_ts=None, alarm_since_wall=None, last_ts=last,
                           closed_at=closed_at, over=())
        fresh = not self.alarm
        return replace(
            self, intervals=self.intervals + 1, alarm=True,
            alarm_intervals=1 if fresh else self.alarm_intervals + 1,
            alarm_since_ts=first if fresh else self.alarm_since_ts,
            alarm_since_wall=closed_at if fresh else self.alarm_since_wall,
            last_ts=last, closed_at=closed_at, over=tuple(over))

    @property
    def alarm_for_s(self) -> float:
        """Data seconds the alarm has been on (0 when it is off)."""
        if not self.alarm:
            return 0.0
        if self.alarm_since_ts is not None and self.last_ts is not None:
            return max(0.0, self.last_ts - self.alarm_since_ts)
        if self.alarm_since_wall is not None and self.closed_at is not None:
            # No data times (a monitor fed without them): the closes, one interval short.
            return max(0.0, self.closed_at - self.alarm_since_wall)
        return 0.0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["over"] = list(self.over)
        return {"format": FORMAT, **{k: _finite(v) for k, v in d.items()}}


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def write_state(path: Path, state: DriftState) -> None:
    """Replace ``path`` with ``state`` (temporary file in the same directory, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(state.to_json(), sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_state(path: Path) -> DriftState | None:
    """The recorded state; None when the agent never wrote one. A damaged file is a
    StorageError naming the file and the field."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StorageError(f"{path}: unreadable drift state ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise StorageError(f"{path}: format {got!r}, want {FORMAT!r}")
    try:
        return DriftState(
            model=str(doc["model"]), intervals=int(doc["intervals"]),
            alarm=bool(doc["alarm"]), alarm_intervals=int(doc["alarm_intervals"]),
            alarm_since_ts=_num(doc["alarm_since_ts"]),
            alarm_since_wall=_num(doc["alarm_since_wall"]), last_ts=_num(doc["last_ts"]),
            closed_at=_num(doc["closed_at"]), over=tuple(str(x) for x in doc["over"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise StorageError(f"{path}: drift state field {exc} missing or wrong") from exc


def _num(v: Any) -> float | None:
    return None if v is None else float(v)
