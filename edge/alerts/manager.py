"""Alert manager: scores in, durable alerts and MQTT state out.

Feeds scored windows to one :class:`RuleMachine` per asset, persists every
transition in the :class:`AlertStore` (one commit per batch), explains each
alert (top features by deviation, short score history) and publishes the
retained state and an event per change (schemas in :mod:`edge.alerts.payload`).
The evidence of an open alert (score, peak, history) is kept in memory and
written at most every ``evidence_interval_s`` (all pending alerts in one
commit), with the alert's next lifecycle change, before any of the crew's
actions or reads through :meth:`open_alerts`, and by :meth:`write_evidence`;
only commits that carry a lifecycle change need an fsync (see
:mod:`edge.alerts.store`). With ``group_commit`` (the agent) the pipeline thread
does not wait for it either: a syncer thread fsyncs the WAL once for every batch
committed meanwhile, then publishes their messages in commit order. An event is
still published only once its change is durable; the next batch is scored while
the disk works.
The crew's actions (ack, resolve with a verdict, a later verdict, shelve,
maintenance) come through the same object, so MQTT, the page and the database
never disagree.

Thread-safe: the pipeline thread calls :meth:`on_scores`, the API calls the
rest. Publishing happens after the commit (and its fsync); a failed publish is
logged and repaired by :meth:`republish_all` (call it after every reconnect).
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.alerts import payload as pl
from edge.alerts.bands import SignalBand, add_readings
from edge.alerts.limits import (
    LimitChange,
    LimitSample,
    LimitSettings,
    LimitState,
    LimitTracker,
)
from edge.alerts.rules import RuleMachine, RuleSpec, Transition
from edge.alerts.store import Alert, AlertStateError, AlertStore
from edge.alerts.verdicts import Tally, split_model, summarise

if TYPE_CHECKING:
    from edge.core.metrics import Metrics
    from edge.models.infer import ScoredWindow
    from edge.scoring.ranges import SignalBounds

NO_NUMBER = "NaN (no number)"  # how a non-finite reading is shown in an alert

log = logging.getLogger(__name__)
Publish = Callable[[str, bytes, bool], None]  # (topic, payload, retain)
SLOW_SYNC_S = 0.05  # a WAL fsync this long sends changes to the syncer thread


class _ScoreHistory:
    """The last ``n`` (data ts, score) pairs of an asset, as flat doubles.

    One per asset the agent has seen: a deque of two-float lists cost ~120 bytes
    per point (7 MB for 1,000 assets x 60 points); this is 16 bytes, trimmed in
    bulk so an append stays O(1) amortised.
    """

    __slots__ = ("_buf", "_n")

    def __init__(self, n: int) -> None:
        self._n = n
        self._buf = array("d")

    def append(self, ts: float, score: float) -> None:
        buf = self._buf
        buf.append(ts)
        buf.append(score)
        if len(buf) >= 4 * self._n:
            del buf[:len(buf) - 2 * self._n]

    def pairs(self) -> list[list[float]]:
        buf = self._buf
        start = max(0, len(buf) - 2 * self._n)
        # numpy's tolist builds the pairs in C: the comprehension was ~10 µs an opening.
        out: list[list[float]] = np.frombuffer(buf, np.float64)[start:].reshape(-1, 2).tolist()
        return out


class AlertManager:
    def __init__(self, store: AlertStore, rules: RuleSpec, publish: Publish | None = None,
                 site: str = "site1", *, feature_names: Sequence[str] = (),
                 signal_names: Sequence[str] = (),
                 signal_bands: Mapping[str, SignalBand] | None = None,
                 alerts_topic: str = "forewarn/{site}/alerts/{asset}",
                 events_topic: str = "forewarn/{site}/events/{asset}",
                 metrics: Metrics | None = None, clock: Callable[[], float] = time.time,
                 history_len: int = 60, top_n: int = 3, stale_after_s: float = 300.0,
                 group_commit: bool = False,
                 bounds: dict[str, SignalBounds] | None = None,
                 bounds_model: str = "",
                 limit_settings: LimitSettings | None = None,
                 evidence_interval_s: float = 0.0) -> None:
        self.store, self.rules, self.site = store, rules, site
        # An evidence UPDATE, its commit and the history's JSON per open alert per
        # batch were ~half the SQLite statements of a one-message batch; a crash
        # now loses at most this much of an open alert's score trace, never a change.
        self.evidence_interval_s = evidence_interval_s
        self._evidence_due = -math.inf
        self._publish, self._metrics, self._clock = publish, metrics, clock
        self._alerts_topic, self._events_topic = alerts_topic, events_topic
        self._names, self._signals = list(feature_names), list(signal_names)
        self._bands = dict(signal_bands or {})  # signal -> unit and normal band
        self._history_len, self._top_n, self.stale_after_s = history_len, top_n, stale_after_s
        self._lock = threading.RLock()
        self._machines: dict[str, RuleMachine] = {}
        self._history: dict[str, _ScoreHistory] = {}
        self._last: dict[str, tuple[float, float, float, str]] = {}  # score, data ts, seen, model
        self._version = 0
        self._next_purge = 0.0
        self._maint = set(store.maintenance())
        # assets whose source announced its death (Sparkplug), with when it was heard
        self._dead: dict[str, float] = {}
        self._open: dict[int, Alert] = {a.id: a for a in store.unresolved()}
        # The same alerts by (asset, condition), which the store keeps unique: every
        # scored window looks its asset's alert up, a scan of _open per window.
        self._by_key: dict[tuple[str, str], Alert] = {
            (a.asset, a.condition): a for a in self._open.values()}
        self._dirty: dict[int, tuple[Alert, bool]] = {}  # alert id -> (alert, new top)
        # When the next shelve runs out (-inf: not known, scan): every batch asked, and a
        # scan of the open alerts per batch was on an opening's path to its event.
        self._shelf_due = -math.inf
        # Group commit: batches commit without waiting for the disk; one thread
        # fsyncs the WAL for everything committed so far, then publishes in order.
        self._group_commit = group_commit
        self._outgoing: list[tuple[str, bytes, bool]] = []
        self._posted: queue.Queue[tuple[bool, list[tuple[str, bytes, bool]]] | None] = \
            queue.Queue()
        self._idle = threading.Condition()
        self._in_flight = 0
        self._syncer: threading.Thread | None = None
        # Asked at each change: may the calling thread wait for the fsync itself? The
        # agent answers yes for the network thread's inline batches (Pipeline.inline_active),
        # which then sync and publish without a hand-over; the order stays the commit
        # order, since this is only taken while the syncer has nothing in flight.
        self.sync_here: Callable[[], bool] = lambda: False
        self._children: dict[tuple[Any, str], Any] = {}
        self.limits = LimitTracker(dict(bounds or {}), limit_settings or LimitSettings())
        # The model whose training ranges the limits are: a limit alert names it, not
        # the model of the asset's last window (still the old one just after a swap).
        self._bounds_model = bounds_model
        for a in self._open.values():  # resume machines of alerts open before a restart
            if a.kind != "model":
                self.limits.restore(_limit_state(a))
            elif a.condition == rules.condition:
                self._machine(a.asset).restore("critical" if a.severity == "critical"
                                               else "warning")
        self._update_gauge()
        self._set_precision()

    @property
    def version(self) -> int:
        """Increases on every alert or asset change (the API's live feed polls it)."""
        return self._version

    # -- scores ----------------------------------------------------------------

    def on_scores(self, windows: Iterable[ScoredWindow]) -> list[dict[str, Any]]:
        """Feed a batch of scored windows; returns the event payloads it published."""
        with self._lock:
            now = self._clock()
            events = self._expire_shelves(now)
            if now >= self._next_purge:  # retention: hourly is plenty
                self.store.purge(now)
                self._next_purge = now + 3600
            touched: set[str] = set()
            # Evidence of open alerts is written once per alert per interval (its latest
            # state), not once per window: JSON of the history was most of the CPU here.
            with self.store.transaction(sync=not self._group_commit, lazy=True):
                for w in windows:
                    if w.asset not in self._last:
                        touched.add(w.asset)
                    self._last[w.asset] = (w.score, w.ts, now, w.model)
                    if math.isfinite(w.score):
                        hist = self._history.get(w.asset)
                        if hist is None:
                            hist = self._history[w.asset] = _ScoreHistory(self._history_len)
                        hist.append(w.ts, round(w.score, 6))
                    if w.asset in self._maint:
                        continue  # planned stop: scores are not meaningful
                    top: list[dict[str, Any]] | None = None  # computed only when needed
                    for t in self._machine(w.asset).update(w.ts, w.score):
                        if top is None:
                            top = self._top(w)
                        change = self._apply(w.asset, t, top, w.model, now)
                        if change is not None:
                            events.append(change)
                    self._evidence(w, top)
            self._finish(events, touched, now)
            if now >= self._evidence_due and self._dirty:
                # Its own commit, after this batch's events are out: an opening that
                # fell due with the interval waited for every open alert's UPDATE.
                with self.store.transaction(lazy=True):
                    self._write_all_evidence(now)
            return [e for e, _ in events]

    # -- readings outside their ranges -----------------------------------------

    @property
    def limit_watch(self) -> set[tuple[str, str]]:
        """(asset, signal) pairs with an active limit or sensor-fault alarm: the pipeline
        sends their in-range readings too, so the alarm can clear."""
        return self.limits.watched

    def set_bounds(self, bounds: dict[str, SignalBounds], model: str = "") -> None:
        """Ranges of a newly activated model (its ident, which the limit alerts it opens
        name); active alarms carry on until they clear."""
        with self._lock:
            self.limits.bounds = dict(bounds)
            self._bounds_model = model

    def on_readings(self, samples: Sequence[LimitSample]) -> list[dict[str, Any]]:
        """Readings outside their ranges (and in-range ones of watched pairs), in order.

        One alert per asset, signal and kind; its evidence (latest and worst value)
        is written once per batch. Assets in maintenance are skipped, as their
        scores are.
        """
        with self._lock:
            now = self._clock()
            events: list[tuple[dict[str, Any], Alert]] = []
            seen: dict[tuple[str, str, str], LimitState] = {}
            with self.store.transaction(sync=not self._group_commit, lazy=True):
                for smp in samples:
                    if smp.asset in self._maint:
                        continue
                    for ch in self.limits.feed(smp):
                        change = self._apply_limit(ch, now)
                        if change is not None:
                            events.append(change)
                    for kind in ("limit", "sensor_fault"):
                        st = self.limits.active.get((smp.asset, smp.signal, kind))
                        if st is not None:
                            seen[(smp.asset, smp.signal, kind)] = st
                for st in seen.values():
                    a = self._by_condition(st.asset, st.condition())
                    if a is not None and (a.data_ts or -math.inf) <= st.ts:
                        a.score, a.peak_score = _number(st.value), _number(st.worst)
                        a.data_ts, a.detail = st.ts, self._detail(st)
                        self.store.update_evidence(a.id, score=a.score, peak_score=a.peak_score,
                                                   data_ts=st.ts, history=[],
                                                   detail=a.detail)
            self._finish(events, set(), now)
            return [e for e, _ in events]

    def _apply_limit(self, ch: LimitChange, now: float) -> tuple[dict[str, Any], Alert] | None:
        st = ch.state
        cur = self._by_condition(st.asset, st.condition())
        if ch.event == "opened":
            if cur is not None:
                return None  # unresolved from before a restart: keep that alert
            state = "suppressed" if st.asset in self._maint else "open"
            a = self.store.open_alert(
                asset=st.asset, condition=st.condition(), severity="warning",
                score=_number(st.value),
                data_ts=st.ts, state=state,
                model=self._bounds_model or self._last.get(st.asset, (0, 0, 0, ""))[3],
                top_features=[{"feature": st.signal, "signal": st.signal, "deviation": None}],
                kind=st.kind, detail=self._detail(st))
            return self._changed(a, "opened", now, None, None)
        if cur is None:
            return None  # the crew resolved it already
        a = self.store.change(cur.id, "auto_cleared", who="auto", note="back in range",
                              score=_number(st.value), state="resolved", resolved_by="auto",
                              resolved_ts=now, resolved_note="back in range", data_ts=st.ts,
                              current=cur)
        return self._changed(a, "auto_cleared", now, "auto", "back in range")

    def _detail(self, st: LimitState) -> dict[str, Any]:
        """What a limit or sensor-fault alert shows (schema in :mod:`edge.alerts.payload`)."""
        b = self.limits.bounds.get(st.signal)
        d: dict[str, Any] = {
            "signal": st.signal, "unit": b.unit if b else "", "bound": st.bound,
            "limit": st.limit, "value": _number(st.value), "worst": _number(st.worst),
            "ts": st.ts, "since_ts": st.opened_ts}
        if st.kind == "sensor_fault":
            d["reason"] = st.reason or "implausible"
            for k in ("value", "worst"):  # JSON has no NaN: say it in words
                if d[k] is None:
                    d[f"{k}_text"] = NO_NUMBER
        return d

    def _by_condition(self, asset: str, condition: str) -> Alert | None:
        return self._by_key.get((asset, condition))

    def _recent(self, asset: str) -> list[list[float]]:
        hist = self._history.get(asset)
        return [] if hist is None else hist.pairs()

    def _top(self, w: ScoredWindow) -> list[dict[str, Any]]:
        top = pl.top_features(w.deviations, self._names, self._signals, self._top_n)
        return add_readings(top, w.window, self._signals, self._bands)

    def _apply(self, asset: str, t: Transition, top: list[dict[str, Any]], model: str,
               now: float) -> tuple[dict[str, Any], Alert] | None:
        cur = self._current(asset)
        # Evidence not written yet goes into the change's own UPDATE.
        pending = self._dirty.pop(cur.id, None) if cur is not None else None
        if cur is None and t.kind == "cleared":
            return None  # the crew resolved it already
        if cur is not None and t.kind == "opened":
            if pending is not None:
                self._write_evidence(*pending)
            return None  # still unresolved from before a restart: keep that alert
        if cur is None:
            state = "suppressed" if asset in self._maint else "open"
            a = self.store.open_alert(asset=asset, condition=self.rules.condition,
                                      severity=t.severity, score=t.score, data_ts=t.ts,
                                      model=model, state=state, top_features=top,
                                      history=self._recent(asset))
            return self._changed(a, "opened", now, None, None)
        if t.kind == "escalated":
            # A new severity needs a new acknowledgement (ISA-18.2 re-alarm).
            extra: dict[str, Any] = (
                {"state": "open", "ack_by": None, "ack_ts": None, "ack_note": None}
                if cur.state == "acknowledged" else {})
            a = self.store.change(cur.id, "escalated", score=t.score, severity="critical",
                                  data_ts=t.ts, current=cur, **extra,
                                  **self._evidence_fields(pending))
            return self._changed(a, "escalated", now, None, None)
        a = self.store.change(cur.id, "auto_cleared", who="auto", note="auto-cleared",
                              score=t.score, state="resolved", resolved_by="auto",
                              resolved_ts=now, resolved_note="auto-cleared", data_ts=t.ts,
                              current=cur, **self._evidence_fields(pending))
        return self._changed(a, "auto_cleared", now, "auto", "auto-cleared")

    def _evidence(self, w: ScoredWindow, top: list[dict[str, Any]] | None) -> None:
        """Latest score of the asset's open alert, in memory; written at the batch's end."""
        asset, ts, score = w.asset, w.ts, w.score
        cur = self._current(asset)
        if cur is None or not math.isfinite(score) or (cur.data_ts or -math.inf) > ts:
            return
        if cur.opened_data_ts == ts and cur.data_ts == ts and cur.score == score:
            return  # the window that opened it: its row holds exactly this evidence
        peak = score if cur.peak_score is None else cur.peak_score
        new_peak = cur.peak_score is None or self.rules.breached(score, peak)
        if new_peak:
            peak = score
        cur.score, cur.data_ts, cur.peak_score = score, ts, peak
        top_changed = self._dirty.get(cur.id, (cur, False))[1]
        if new_peak:
            top = self._top(w) if top is None else top
            if top:
                cur.top_features = top  # explain the worst moment, not the latest
                top_changed = True
        self._dirty[cur.id] = (cur, top_changed)

    def write_evidence(self, *, due_only: bool = False) -> None:
        """Write every open alert's pending evidence now (``due_only``: only once its
        interval has passed; the pipeline's idle turn calls it so)."""
        if not self._dirty:  # the idle turn's common case, without the lock
            return
        with self._lock:
            now = self._clock()
            if self._dirty and (not due_only or now >= self._evidence_due):
                with self.store.transaction(lazy=True):
                    self._write_all_evidence(now)

    def _write_all_evidence(self, now: float) -> None:
        if not self._dirty:
            return
        for a, top_changed in self._dirty.values():
            self._write_evidence(a, top_changed)
        self._dirty.clear()
        self._evidence_due = now + self.evidence_interval_s

    def _evidence_fields(self, pending: tuple[Alert, bool] | None) -> dict[str, Any]:
        """An alert's pending evidence as :meth:`AlertStore.change` fields (the change
        itself sets the score and data time of the window that made it)."""
        if pending is None:
            return {}
        a, top_changed = pending
        out: dict[str, Any] = {"peak_score": a.peak_score or 0.0,
                               "history": self._recent(a.asset)}
        if top_changed:
            out["top_features"] = a.top_features
        return out

    def _write_evidence(self, a: Alert, top_changed: bool) -> None:
        a.history = self._recent(a.asset)  # built here: once per write, not per window
        self.store.update_evidence(a.id, score=a.score or 0.0,
                                   peak_score=a.peak_score or 0.0,
                                   data_ts=a.data_ts or 0.0, history=a.history,
                                   top_features=a.top_features if top_changed else None)

    # -- the crew's actions ------------------------------------------------------

    def ack(self, alert_id: int, who: str, note: str | None = None) -> Alert:
        with self._lock:
            self.write_evidence()  # the change re-reads the row
            cur = self.store.require(alert_id)
            if cur.state == "resolved" or cur.ack_ts is not None:
                raise AlertStateError(f"alert {alert_id} is {cur.state}"
                                      + (f" (acknowledged by {cur.ack_by})" if cur.ack_by else "")
                                      + "; nothing to acknowledge")
            state = "acknowledged" if cur.state == "open" else cur.state
            now = self._clock()
            a = self.store.change(alert_id, "acknowledged", who=who, note=note, state=state,
                                  ack_by=who, ack_ts=now, ack_note=note)
            return self._human(a, "acknowledged", who, note)

    def resolve(self, alert_id: int, who: str, note: str | None = None, *, verdict: str,
                work_order: str | None = None) -> Alert:
        """Resolve with the person's verdict (:mod:`edge.alerts.verdicts`), one commit."""
        with self._lock:
            self.write_evidence()  # the change re-reads the row
            a = self.store.record_verdict(alert_id, verdict, who, note, work_order,
                                          resolve=True)
            if a.asset in self._machines and a.condition == self.rules.condition:
                self._machines[a.asset].force_clear()
            signal = a.condition.partition(":")[2]
            if a.kind != "model" and (a.asset, signal, a.kind) in self.limits.active:
                self.limits.drop(a.asset, signal, a.kind)  # the next bad reading re-opens
            self._judged(a)
            return self._human(a, "resolved", who, note)

    def judge(self, alert_id: int, who: str, verdict: str, note: str | None = None,
              work_order: str | None = None) -> Alert:
        """A verdict on a resolved alert: an amendment, or one on an auto-cleared alert."""
        with self._lock:
            self.write_evidence()  # the change re-reads the row
            a = self.store.record_verdict(alert_id, verdict, who, note, work_order,
                                          resolve=False)
            self._judged(a)
            return self._human(a, "verdict", who, note)

    def _judged(self, a: Alert) -> None:
        """Count the verdict and refresh the model's live precision (model alerts only)."""
        if self._metrics is None or a.kind != "model" or a.verdict is None:
            return
        name = split_model(a.model)[0]
        self._metrics.alert_verdicts.labels(model=name, verdict=a.verdict).inc()
        self._set_precision()

    def _set_precision(self) -> None:
        """The live precision gauge per bundle name, from every alert's last verdict."""
        if self._metrics is None:
            return
        per_name: dict[str, Tally] = {}
        for model, t in summarise(self.store.verdict_rows()).by_model.items():
            per_name.setdefault(split_model(model)[0], Tally()).merge(t)
        gauge = self._metrics.alert_precision
        for name, t in per_name.items():
            if t.precision is not None:
                gauge.labels(model=name).set(t.precision)
            else:  # only "could not tell" left: no figure rather than a stale one
                with contextlib.suppress(KeyError):
                    gauge.remove(name)

    def shelve(self, alert_id: int, who: str, until_ts: float, note: str | None = None) -> Alert:
        with self._lock:
            self.write_evidence()  # the change re-reads the row
            if until_ts <= self._clock():
                raise AlertStateError(f"shelve until {until_ts} is not in the future")
            a = self.store.change(alert_id, "shelved", who=who, note=note,
                                  allowed_from=("open", "acknowledged"), state="shelved",
                                  shelved_by=who, shelved_until=until_ts, shelved_note=note)
            return self._human(a, "shelved", who, note)

    def unshelve(self, alert_id: int, who: str, note: str | None = None) -> Alert:
        with self._lock:
            self.write_evidence()  # the change re-reads the row
            a = self._unshelve(alert_id, who, note)
            return self._human(a, "unshelved", who, note)

    def _unshelve(self, alert_id: int, who: str, note: str | None) -> Alert:
        cur = self.store.require(alert_id)
        state = "acknowledged" if cur.ack_ts is not None else "open"
        return self.store.change(alert_id, "unshelved", who=who, note=note,
                                 allowed_from=("shelved",), state=state, shelved_until=None)

    def set_maintenance(self, asset: str, on: bool, who: str, note: str | None = None) -> bool:
        """Start or end an asset's maintenance window; its alerts are suppressed meanwhile."""
        with self._lock:
            self.write_evidence()  # the changes re-read the rows
            now = self._clock()
            changed = self.store.set_maintenance(asset, on, who, note)
            events = []
            with self.store.transaction():
                for a in list(self._open.values()):
                    if a.asset != asset:
                        continue
                    if on and a.state != "suppressed":
                        b = self.store.change(a.id, "suppressed", who=who, note=note,
                                              state="suppressed", shelved_until=None)
                        events.append(self._changed(b, "suppressed", now, who, note))
                    elif not on and a.state == "suppressed":
                        b = self.store.change(a.id, "unsuppressed", who=who, note=note,
                                              state="acknowledged" if a.ack_ts else "open")
                        events.append(self._changed(b, "unsuppressed", now, who, note))
            (self._maint.add if on else self._maint.discard)(asset)
            self._finish(events, {asset} if changed or events else set(), now)
            return changed

    # -- views -------------------------------------------------------------------

    def open_alerts(self) -> list[Alert]:
        with self._lock:
            self._tick()
            return sorted(self._open.values(), key=lambda a: a.id)

    def assets(self) -> list[dict[str, Any]]:
        """Every known asset: state, last score, data freshness, maintenance."""
        with self._lock:
            self._tick()
            now = self._clock()
            names = (set(self._last) | self._maint | set(self._dead)
                     | {a.asset for a in self._open.values()})
            out = []
            for asset in sorted(names):
                a = pl.worst([x for x in self._open.values() if x.asset == asset])
                score, data_ts, seen, model = self._last.get(asset, (None, None, None, ""))
                age = None if seen is None else max(0.0, now - seen)
                dead, silent = asset in self._dead, age is not None and age > self.stale_after_s
                out.append({
                    "asset": asset, "state": a.state if a else "normal",
                    "severity": a.severity if a else "none", "alert_id": a.id if a else None,
                    "last_score": score, "last_data_ts": data_ts, "last_seen": seen,
                    "age_s": age, "maintenance": asset in self._maint, "model": model,
                    "freshness": ("stale" if dead else "no data" if age is None else
                                  "fresh" if age <= self.stale_after_s else "stale"),
                    "stale": dead or silent,
                    "stale_reason": "source_died" if dead else "silent" if silent else None,
                    "dead_since": self._dead.get(asset)})
            return out

    def set_source_dead(self, asset: str, dead: bool) -> None:
        """The asset's source announced its death (Sparkplug NDEATH/DDEATH) or a new BIRTH."""
        with self._lock:
            if dead == (asset in self._dead):
                return
            if dead:
                self._dead[asset] = self._clock()
            else:
                del self._dead[asset]
            self._version += 1

    def republish_all(self) -> None:
        """Publish the retained state of every known asset again (after a reconnect)."""
        with self._lock:
            self._tick()
            for asset in {x["asset"] for x in self.assets()}:
                self._publish_state(asset, self._clock())
            self._post()

    # -- internals ---------------------------------------------------------------

    def _machine(self, asset: str) -> RuleMachine:
        m = self._machines.get(asset)
        if m is None:
            m = self._machines[asset] = RuleMachine(self.rules)
        return m

    def _current(self, asset: str) -> Alert | None:
        return self._by_condition(asset, self.rules.condition)

    def _changed(self, a: Alert, event: str, now: float, who: str | None,
                 note: str | None) -> tuple[dict[str, Any], Alert]:
        key = (a.asset, a.condition)
        if a.state == "resolved":
            self._open.pop(a.id, None)
            if (held := self._by_key.get(key)) is not None and held.id == a.id:
                del self._by_key[key]
        else:
            self._open[a.id] = a
            self._by_key[key] = a
            if a.state == "shelved":
                self._shelf_due = min(self._shelf_due, a.shelved_until or 0.0)
        if self._metrics is not None and event != "verdict":  # a verdict changes no state
            self._labelled(self._metrics.alert_transitions, a.state).inc()
        return pl.event_payload(self.site, a, event, ts=now, who=who, note=note), a

    def set_rules(self, rules: RuleSpec, feature_names: Sequence[str] = (),
                  signal_names: Sequence[str] = (),
                  signal_bands: Mapping[str, SignalBand] | None = None) -> None:
        """Levels of a newly activated model; unresolved alerts carry on under them."""
        with self._lock:
            self.rules = rules
            if feature_names:
                self._names = list(feature_names)
            if signal_names:
                self._signals = list(signal_names)
            if signal_bands is not None:
                self._bands = dict(signal_bands)
            active = {a: m.severity for a, m in self._machines.items() if m.active}
            self._machines.clear()
            for asset, severity in active.items():
                if severity is not None:
                    self._machine(asset).restore(severity)

    def _human(self, a: Alert, event: str, who: str, note: str | None) -> Alert:
        now = self._clock()
        self._finish([self._changed(a, event, now, who, note)], {a.asset}, now)
        return a

    def _tick(self) -> None:
        self.write_evidence()  # readers of the store see the latest evidence
        now = self._clock()
        events = self._expire_shelves(now)
        if events:
            self._finish(events, set(), now)

    def _expire_shelves(self, now: float) -> list[tuple[dict[str, Any], Alert]]:
        if now < self._shelf_due:
            return []
        due, nxt = [], math.inf
        for a in self._open.values():
            if a.state == "shelved":
                until = a.shelved_until or 0.0
                if until <= now:
                    due.append(a.id)
                else:
                    nxt = min(nxt, until)
        self._shelf_due = nxt
        return [self._changed(self._unshelve(i, "auto", "shelve expired"), "unshelved", now,
                              "auto", "shelve expired") for i in due]

    def _finish(self, events: list[tuple[dict[str, Any], Alert]], touched: set[str],
                now: float) -> None:
        for event, alert in events:
            touched.add(alert.asset)
            self._send(self._events_topic, alert.asset, pl.encode(event), retain=False)
        if events:
            # The events go out (after their fsync) before the retained states are
            # built: the states' payloads were ~20 µs of an opening's path to its event.
            self._post()
        for asset in sorted(touched):
            self._publish_state(asset, now)
        self._post()
        if events or touched:
            self._version += 1
            self._update_gauge()

    def _post(self) -> None:
        """Hand this change's messages to the syncer (group commit; caller holds the lock).

        Every message goes through the one queue, so MQTT sees them in commit
        order whichever thread made the change.
        """
        if not self._group_commit:
            return
        unsynced = self.store.take_unsynced()
        if not self._outgoing and not unsynced:
            return
        msgs, self._outgoing = self._outgoing, []
        # After a slow fsync, the syncer takes the changes until one is quick again:
        # the network thread, which may be the caller, must not wait out a stalled disk.
        if self.sync_here() and self.store.last_sync_s < SLOW_SYNC_S:
            with self._idle:
                idle = self._in_flight == 0
            if idle:  # nothing ahead of this change: sync and publish it here
                self._sync_and_deliver([(unsynced, msgs)])
                return
        if self._syncer is None:
            self._syncer = threading.Thread(target=self._sync_loop, name="forewarn-alert-sync",
                                            daemon=True)
            self._syncer.start()
        with self._idle:
            self._in_flight += 1
        self._posted.put((unsynced, msgs))

    def _sync_loop(self) -> None:
        while True:
            first = self._posted.get()
            if first is None:
                return
            group = [first]
            while True:  # everything committed meanwhile shares the one fsync
                try:
                    nxt = self._posted.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._posted.put(None)
                    break
                group.append(nxt)
            self._sync_and_deliver(group)
            with self._idle:
                self._in_flight -= len(group)
                self._idle.notify_all()

    def _sync_and_deliver(self, group: list[tuple[bool, list[tuple[str, bytes, bool]]]]
                          ) -> None:
        if any(unsynced for unsynced, _ in group):
            try:
                self.store.sync()
            except Exception:
                # Not durable against a power cut; withholding the events would
                # not make them so. Published anyway, the failure logged.
                log.exception("alert store sync failed")
        for _, msgs in group:
            for topic, body, retain in msgs:
                self._deliver(topic, body, retain)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every change so far is synced and published (group commit)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def _publish_state(self, asset: str, now: float) -> None:
        alerts = [a for a in self._open.values() if a.asset == asset]
        model = self._last.get(asset, (0, 0, 0, ""))[3]
        body = pl.state_payload(self.site, asset, alerts, maintenance=asset in self._maint,
                                now=now, model=model)
        self._send(self._alerts_topic, asset, pl.encode(body), retain=True)

    def _send(self, template: str, asset: str, body: bytes, *, retain: bool) -> None:
        if self._publish is None:
            return
        topic = template.format(site=self.site, asset=asset)
        # orjson's bytes hold an ~8 KB allocation whatever the length (tracemalloc):
        # 1,000 assets' first retained states waiting on PUBACK were 8 MB. Copy to size.
        body = bytes(memoryview(body))
        if self._group_commit:
            self._outgoing.append((topic, body, retain))
        else:
            self._deliver(topic, body, retain)

    def _deliver(self, topic: str, body: bytes, retain: bool) -> None:
        if self._publish is None:
            return
        try:
            self._publish(topic, body, retain)
        except Exception:  # the store is the truth; republish_all() repairs MQTT later
            log.exception("publishing to %s failed", topic)

    def _update_gauge(self) -> None:
        if self._metrics is None:
            return
        critical = sum(a.severity == "critical" for a in self._open.values())
        gauge = self._metrics.alerts_open
        self._labelled(gauge, "warning").set(len(self._open) - critical)
        self._labelled(gauge, "critical").set(critical)

    def _labelled(self, metric: Any, value: str) -> Any:
        """The metric's child for its one label's ``value``, cached: ``labels()`` cost
        more than the update itself, twice per alert change."""
        child = self._children.get((metric, value))
        if child is None:
            child = self._children[(metric, value)] = metric.labels(value)
        return child


def _number(v: float) -> float | None:
    """A reading as stored and published: None for NaN/Inf (JSON has no such numbers)."""
    return v if math.isfinite(v) else None


def _limit_state(a: Alert) -> LimitState:
    d = a.detail
    signal = str(d.get("signal") or a.condition.partition(":")[2])
    reason = str(d.get("reason", ""))
    missing = math.nan if reason == "non_finite" else float(a.score or 0.0)
    value = missing if d.get("value") is None else float(d["value"])
    limit = d.get("limit")
    worst = value if d.get("worst") is None else float(d["worst"])
    return LimitState(a.asset, signal, "sensor_fault" if a.kind == "sensor_fault" else "limit",
                      str(d.get("bound", "")), None if limit is None else float(limit),
                      float(d.get("since_ts", a.data_ts or 0.0) or 0.0), value,
                      float(a.data_ts or 0.0), worst, reason=reason)
