"""Drift reporting: scored windows -> drift intervals -> metrics and the egress outbox.

The monitor is fed the graph's ``deviations`` output: the manifest's reference
histograms of features are defined on that output (features standardised by the
training mean and std), so the agent never needs raw feature values here.
Drift over threshold (the manifest's calibrated rule, see :mod:`edge.drift.monitor`) is
an IT matter: it becomes a metric (alerting rules in ``deploy/prometheus``) and a
report to central IT, never a crew alert. With a ``state_path`` the reporter also
keeps the current run of alarming intervals in a file (:mod:`edge.drift.state`),
which ``forewarn retrain --if-needed`` reads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from operator import attrgetter
from pathlib import Path
from typing import Protocol

import numpy as np

from edge.core.config import EgressConfig
from edge.core.errors import EgressError
from edge.core.metrics import Metrics
from edge.drift.monitor import DriftInterval, DriftMonitor
from edge.drift.state import DriftState, write_state
from edge.egress.schema import build_report
from edge.models.bundle import Manifest
from edge.models.infer import ScoredWindow

log = logging.getLogger(__name__)
FEED_BLOCK = 256  # windows per monitor update; intervals still close on time
_SCORE, _TS = attrgetter("score"), attrgetter("ts")


class ReportSink(Protocol):
    """Where a validated report goes: the agent passes a SealedOutbox (signed, numbered)."""

    def put(self, payload: bytes) -> object: ...


class DriftReporter:
    def __init__(self, manifest: Manifest, interval_windows: int, metrics: Metrics,
                 egress: EgressConfig | None = None, outbox: ReportSink | None = None,
                 notify: Callable[[], None] = lambda: None,
                 state_path: Path | None = None) -> None:
        self.monitor = DriftMonitor(manifest, interval_windows)
        self.metrics = metrics
        self.egress = egress
        self.outbox = outbox
        self.notify = notify
        self.last: DriftInterval | None = None
        self._lock = threading.Lock()
        self._pending: list[ScoredWindow] = []  # scored, not yet in the monitor
        self._fed = 0  # windows given to the current monitor
        self._block()
        self._usable = bool(manifest.reference.features) and bool(manifest.output.feature_names)
        if not self._usable:
            log.warning("bundle %s/%s has no feature reference: drift is not monitored",
                        manifest.name, manifest.version)
        _check_interval(manifest, interval_windows)
        self.state_path = state_path
        self.state = DriftState.start(f"{manifest.name}/{manifest.version}")
        self._state_failed = False
        self._save_state()

    def _block(self) -> None:
        """The preallocated block the buffered windows are copied into at each feed
        (``np.stack`` allocated a new one per feed and wraps every row on its own)."""
        self._devs = np.empty((FEED_BLOCK, len(self.monitor.names)), dtype=np.float64)
        self._scores = np.empty(FEED_BLOCK, dtype=np.float64)
        self._ts = np.empty(FEED_BLOCK, dtype=np.float64)

    def on_scores(self, windows: list[ScoredWindow]) -> None:
        """Buffer the batch; feed the monitor in blocks (see :meth:`_feed`)."""
        if not self._usable or not windows or windows[0].deviations is None:
            return
        with self._lock:
            self._pending.extend(windows)
            n = len(self._pending)
            # An interval closes on exactly the same window as unbuffered: feed the
            # monitor whenever the buffer reaches the current interval's end.
            if n < FEED_BLOCK and self._fed % self.monitor.interval_windows + n \
                    < self.monitor.interval_windows:
                return
            closed = self._feed()
        for interval in closed:
            self._publish(interval)

    def _feed(self) -> list[DriftInterval]:
        """Update the monitor with the buffered windows (caller holds the lock).

        One ``DriftMonitor.update`` costs a fixed part per call whatever the batch
        size; the pipeline's live batches hold a few windows each, so the monitor
        sees blocks of up to FEED_BLOCK windows instead.
        """
        wins, self._pending = self._pending, []
        closed: list[DriftInterval] = []
        for at in range(0, len(wins), FEED_BLOCK):  # one batch may bring more than a block
            part = wins[at:at + FEED_BLOCK]
            n = len(part)
            devs, scores, ts = self._devs[:n], self._scores[:n], self._ts[:n]
            np.concatenate([w.deviations for w in part],  # type: ignore[misc]
                           out=devs.reshape(-1))
            scores[:] = np.fromiter(map(_SCORE, part), np.float64, n)
            ts[:] = np.fromiter(map(_TS, part), np.float64, n)
            self._fed += n
            # Data times too: the drift state ages the alarm in the readings' own time.
            closed += self.monitor.update(devs, scores, ts=ts)
        return closed

    def swap(self, manifest: Manifest) -> None:
        _check_interval(manifest, self.monitor.interval_windows)
        with self._lock:
            closed = self._feed()  # windows of the old model count toward its monitor
            self.monitor = DriftMonitor(manifest, self.monitor.interval_windows)
            self._fed = 0
            self._block()  # the new model may have another feature count
        for interval in closed:
            self._publish(interval)
        # The new model's monitor starts without history: so does its alarm.
        self.state = DriftState.start(f"{manifest.name}/{manifest.version}")
        self._save_state()

    def _save_state(self) -> None:
        if self.state_path is None:
            return
        try:
            write_state(self.state_path, self.state)
            self._state_failed = False
        except OSError as exc:
            if not self._state_failed:  # once per failing run, not per interval
                log.warning("%s: cannot write the drift state (%s); drift reports and "
                            "metrics go on", self.state_path, exc)
            self._state_failed = True

    def _publish(self, interval: DriftInterval) -> None:
        self.last = interval
        over = [f.name for f in interval.features if f.alarm]
        if interval.score is not None and interval.score.alarm:
            over.append(interval.score.name)
        self.state = self.state.update(alarm=interval.alarm, first_ts=interval.first_ts,
                                       last_ts=interval.last_ts,
                                       closed_at=interval.closed_at, over=tuple(over))
        self._save_state()
        m = self.metrics
        m.drift_intervals.inc()
        if interval.alarm:
            m.drift_alarm_intervals.inc()
        m.drift_alarms.set(sum(f.alarm for f in interval.features)
                           + int(bool(interval.score and interval.score.alarm)))
        if interval.score is not None:
            m.drift_score_psi.set(interval.score.psi)
        m.drift_max_feature_psi.set(max((f.psi for f in interval.features), default=0.0))
        if self.egress is None or self.outbox is None or not self.egress.enabled:
            return
        try:
            payload = build_report(interval, self.egress)
        except EgressError:
            m.egress_rejected.inc()
            log.exception("drift report refused by the egress allow-list")
            return
        if payload is None:
            m.egress_suppressed.inc()
            return
        self.outbox.put(payload)
        self.notify()


def _check_interval(manifest: Manifest, interval_windows: int) -> None:
    # Thresholds hold for the interval size they were calibrated on: shorter
    # intervals are noisier (more false alarms), longer ones hide small shifts.
    calibrated = manifest.drift_thresholds.interval_windows
    if calibrated is not None and calibrated != interval_windows:
        log.warning("drift.interval_windows=%d but bundle %s/%s calibrated its drift "
                    "thresholds for %d windows: expect a different false alarm rate",
                    interval_windows, manifest.name, manifest.version, calibrated)
