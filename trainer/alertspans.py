"""The crew's verdicts as spans of data time, read from the agent's alert store.

An alert's span runs from the data time of the window that opened it
(``opened_data_ts``) to the data time of its last evidence (``data_ts``, which
stops moving when it is resolved); an alert still unresolved runs on to the end
of the period. Stores older than ``opened_data_ts`` fall back to the wall-clock
``opened_ts``, which is the data time give or take the readings' latency.

What a span means for retraining (:func:`row_classes`):

* ``confirmed`` (any kind of alert: a real fault) - excluded from the normal set,
  with a margin either side (a fault starts before the alert opens and lingers
  after it is resolved);
* ``false_alarm`` - kept: the crew says nothing was wrong, so the model must
  learn it as normal;
* the model's own alerts with no verdict, or "could not tell" - excluded as
  well by default (``unjudged = "exclude"``): the model took them for anomalies
  and nobody said otherwise. Limit and sensor-fault alerts without a confirmed
  verdict do not exclude rows: they are the agent's range rules, not the model's
  opinion, and the candidate's training ranges follow the data.

The store is opened read-only (the agent keeps writing it).

>>> spans = [AlertSpan(1, "p1", "model", "m/1", "false_alarm", 10.0, 20.0),
...          AlertSpan(2, "p1", "model", "m/1", "confirmed", 50.0, 60.0),
...          AlertSpan(3, "p1", "model", "m/1", None, 80.0, 85.0)]
>>> ts = np.arange(0.0, 100.0, 5.0)
>>> c = row_classes(ts, spans, margin_s=5.0, model="m", unjudged="exclude")
>>> "".join("nfcu"[k] for k in c)
'nnfffnnnncccccnuuuun'
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from edge.core.errors import StorageError

NORMAL, FALSE_ALARM, CONFIRMED, UNJUDGED = 0, 1, 2, 3
CLASS_NAMES = ("normal", "false_alarm", "confirmed", "unjudged")


@dataclass(frozen=True)
class AlertSpan:
    id: int
    asset: str
    kind: str  # model | limit | sensor_fault
    model: str  # "<name>/<version>" that scored the opening window
    verdict: str | None  # the last one: confirmed | false_alarm | unsure | None
    start: float  # data time
    end: float  # data time; +inf while unresolved

    @property
    def model_name(self) -> str:
        return self.model.partition("/")[0]


def read_spans(store_path: Path, since: float, until: float,
               assets: Iterable[str] | None = None) -> list[AlertSpan]:
    """Alerts whose span overlaps ``[since, until)``, oldest first; none when the
    store does not exist yet (an appliance that never alerted)."""
    path = Path(store_path)
    if not path.is_file():
        return []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise StorageError(f"{path}: cannot open alert store read-only ({exc})") from exc
    try:
        cols = {r[1] for r in db.execute("PRAGMA table_info(alerts)")}
        start = "COALESCE(opened_data_ts, opened_ts)" if "opened_data_ts" in cols \
            else "opened_ts"
        verdict = "verdict" if "verdict" in cols else "NULL"
        kind = "kind" if "kind" in cols else "'model'"
        rows = db.execute(
            f"SELECT id, asset, {kind}, model, {verdict}, {start}, data_ts, state "
            "FROM alerts ORDER BY id").fetchall()
    except sqlite3.Error as exc:
        raise StorageError(f"{path}: cannot read alerts ({exc})") from exc
    finally:
        db.close()
    want = None if assets is None else set(assets)
    out = []
    for i, asset, k, model, v, t0, t1, state in rows:
        if want is not None and asset not in want:
            continue
        begin = float(t0)
        end = math.inf if state != "resolved" else float(t1 if t1 is not None else t0)
        end = max(end, begin)
        if end >= since and begin < until:
            out.append(AlertSpan(int(i), str(asset), str(k), str(model or ""),
                                 None if v is None else str(v), begin, end))
    return out


def default_margin(window: int, hop: int, n: int, period: float) -> float:
    """Seconds either side of a confirmed span: twice the time the rule needs to see a
    window full of the fault and open (window + n hops).

    >>> default_margin(10, 1, 8, 1.0)
    36.0
    """
    return 2.0 * (window + n * hop) * period


def _inside(ts: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (ts >= lo) & (ts <= hi)


def row_classes(ts: np.ndarray, spans: Iterable[AlertSpan], *, margin_s: float, model: str,
                unjudged: Literal["exclude", "normal"] = "exclude",
                labels: np.ndarray | None = None) -> np.ndarray:
    """Each row's class (:data:`NORMAL`, :data:`FALSE_ALARM`, :data:`CONFIRMED`,
    :data:`UNJUDGED`) from one asset's spans; ``model`` is the model name whose own
    unjudged alerts count. Confirmed wins over unjudged, which wins over a false
    alarm; a labelled row (``labels == 1``) is confirmed."""
    ts = np.asarray(ts, np.float64)
    out = np.full(ts.shape, NORMAL, dtype=np.int8)
    fa = np.zeros(ts.shape, bool)
    unj = np.zeros(ts.shape, bool)
    conf = np.zeros(ts.shape, bool)
    for s in spans:
        if s.verdict == "confirmed":
            conf |= _inside(ts, s.start - margin_s, s.end + margin_s)
        elif s.verdict == "false_alarm":
            fa |= _inside(ts, s.start, s.end)
        elif s.kind == "model" and s.model_name == model and unjudged == "exclude":
            unj |= _inside(ts, s.start - margin_s, s.end + margin_s)
    if labels is not None:
        conf |= np.asarray(labels) == 1
    out[fa] = FALSE_ALARM
    out[unj] = UNJUDGED
    out[conf] = CONFIRMED
    return out


def fault_intervals(spans: Iterable[AlertSpan], *, margin_s: float,
                    label_ts: np.ndarray | None = None, labels: np.ndarray | None = None
                    ) -> list[tuple[float, float, str]]:
    """Confirmed faults of one asset as merged ``(start, end, source)`` intervals: each
    confirmed span widened by the margin, and each run of labelled rows.

    >>> fault_intervals([AlertSpan(7, "p", "model", "m/1", "confirmed", 100, 120),
    ...                  AlertSpan(8, "p", "model", "m/1", "confirmed", 125, 130)],
    ...                 margin_s=5.0)
    [(95.0, 135.0, 'alerts 7, 8')]
    """
    parts: list[tuple[float, float, str]] = [
        (s.start - margin_s, s.end + margin_s, f"alert {s.id}") for s in spans
        if s.verdict == "confirmed"]
    if label_ts is not None and labels is not None and len(labels):
        y = np.asarray(labels) == 1
        edges = np.flatnonzero(np.diff(np.r_[0, y.astype(np.int8), 0]))
        for a, b in zip(edges[::2], edges[1::2], strict=True):
            parts.append((float(label_ts[a]), float(label_ts[b - 1]), "label"))
    parts.sort()
    merged: list[tuple[float, float, list[str]]] = []
    for lo, hi, src in parts:
        if merged and lo <= merged[-1][1]:
            m = merged[-1]
            merged[-1] = (m[0], max(m[1], hi), [*m[2], src])
        else:
            merged.append((float(lo), float(hi), [src]))
    return [(lo, hi, _sources(src)) for lo, hi, src in merged]


def _sources(src: list[str]) -> str:
    ids = [s.removeprefix("alert ") for s in src if s.startswith("alert ")]
    words = ([("alert " if len(ids) == 1 else "alerts ") + ", ".join(ids)] if ids else [])
    if "label" in src:
        words.append("label")
    return " + ".join(words)
