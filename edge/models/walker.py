"""The running agent's side of a staged walk: the hold's clock, the steps, and telling.

:class:`Walker` keeps one model's walk (:mod:`edge.models.stages`) in step with
the registry: it starts or resumes the walk of a new candidate, adds the hold
time that passed at every registry poll, carries out what the walk decides
(the next stage, promotion, an automatic rollback) and tells of every step,
its own and the ones a person made from the command line or the API: the audit
log (for its own), a log line, the ``forewarn_rollout_*`` metrics and one MQTT
event (``forewarn.rollout-event/1``) on the agent's events topic.

The hold is saved every :data:`SAVE_EVERY_S` seconds and at every step, so a
crash costs at most that much of a stage's hold (it is run again, never skipped).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from edge.core.config import BundleConfig
from edge.core.errors import StorageError
from edge.core.metrics import Metrics
from edge.models.registry import Registry
from edge.models.stages import (
    PROMOTED,
    Evidence,
    Stage,
    StagedWalk,
    Step,
    Verdicts,
    WalkState,
    no_verdicts,
    plan,
)
from edge.models.walkstore import WALK_FILE, WalkStore, carry_out, record

log = logging.getLogger(__name__)
SAVE_EVERY_S = 15.0
EVENT_SCHEMA = "forewarn.rollout-event/1"
# The events topic's asset level for model events: no asset can be called this
# (names start with a letter or digit, edge/core/names.py).
EVENTS_ASSET = "_rollout"


class RolloutEvents:
    """Publishes a walk's steps on ``events_topic`` with ``{asset}`` = ``_rollout``.

    Payload (JSON, not retained)::

        {"schema": "forewarn.rollout-event/1", "site": "site1", "model": "pump",
         "version": "7", "event": "started" | "restored" | "passed" | "advanced" |
         "promoted" | "rolled_back" | "paused" | "resumed" | "aborted" | "ended",
         "stage": "canary-5", "to": "canary-20" | "promoted" | null, "share": 0.05,
         "actor": "rollout" | "cli:ana" | ..., "reason": "...", "rule": "error_rate" | "",
         "ts": 1732360000.0, "n": 3}
    """

    def __init__(self, publish: Callable[..., Any], events_topic: str, site: str) -> None:
        self.publish = publish
        self.topic = events_topic.format(site=site, asset=EVENTS_ASSET)
        self.site = site

    def __call__(self, event: dict[str, Any]) -> None:
        body = {"schema": EVENT_SCHEMA, "site": self.site, **event}
        self.publish(self.topic, json.dumps(body, allow_nan=False).encode(), retain=False)


def stages_of(cfg: BundleConfig) -> tuple[Stage, ...]:
    s = cfg.rollout_stages
    return plan(s.shadow_hold_s, [(c.share, c.hold_s) for c in s.canary])


class Walker:
    def __init__(self, registry: Registry, name: str, cfg: BundleConfig, metrics: Metrics,
                 events: Callable[[dict[str, Any]], None] | None = None,
                 verdicts: Verdicts = no_verdicts, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.store = WalkStore(registry)
        self.name = name
        self.cfg = cfg
        self.metrics = metrics
        self.events = events
        self.verdicts = verdicts
        self._clock, self._mono = clock, monotonic
        self.state: WalkState | None = None
        self.rollbacks: list[dict[str, Any]] = []
        # History entries up to this one were told; None: nothing read yet, and what
        # a walk did before this process started is not told again.
        self._announced: int | None = None
        self._seen_n = -1
        self._pending = 0.0  # hold run since the last save
        self._last_tick = monotonic()
        self._last_save = monotonic()

    @contextmanager
    def locked(self) -> Iterator[None]:
        with self.store.locked(self.name):
            yield

    def _load(self) -> WalkState | None:
        """The saved walk; an unreadable one is moved aside (logged) and counts as none."""
        try:
            return self.store.load(self.name)
        except StorageError as exc:
            path = self.registry.root / self.name / WALK_FILE
            aside = path.with_name(f"{WALK_FILE}.unreadable-{int(self._clock())}")
            log.error("%s; moved to %s, the candidate's walk starts again", exc, aside.name)
            path.replace(aside)
            return None

    def _walk(self, st: WalkState) -> StagedWalk:
        return StagedWalk(st, min_windows=self.cfg.canary_min_windows,
                          max_false_alarms=self.cfg.rollout_stages.max_false_alarms)

    def begin(self, version: str) -> WalkState:
        """A new candidate: resume its walk if one runs for it, else start one (lock held)."""
        now = self._clock()
        old = self._load()
        if old is not None and old.version == version and old.status == "running":
            st, self._announced = old, old.n
            step = self._walk(st).restore(now)
        else:
            if old is not None and old.status == "running":  # replaced while the agent was down
                self._announced = old.n
                self.end(old.version, f"candidate replaced by {version}")
            st, self._announced = WalkState.begin(self.name, version, stages_of(self.cfg), now), 0
            step = self._walk(st).start(now)
        record(self.registry.audit, st, step)
        self._save(st)
        self._last_tick = self._mono()  # the hold starts now, not at the last poll
        self._settle(st)
        return st

    def end(self, version: str, reason: str) -> None:
        """The candidate left outside the walk (cleared, replaced, promoted by hand)."""
        st = self._load()
        if st is None or st.version != version or st.status != "running":
            self._settle(st)
            return
        step = self._walk(st).end(self._clock(), reason)
        record(self.registry.audit, st, step)
        self._save(st)
        self._settle(st)

    def tick(self, version: str | None, evidence: Evidence | None) -> Step | None:
        """One registry poll: run the hold, judge, carry out and tell (lock held)."""
        st = self._load()
        mono = self._mono()
        dt, self._last_tick = mono - self._last_tick, mono
        if st is None or st.n != self._seen_n:
            self._pending = 0.0  # someone else wrote it: count the hold from now on
        else:
            self._pending += dt
        step = None
        if (st is not None and st.status == "running" and st.version == version
                and evidence is not None):
            false_alarms = int(self.verdicts(st.ident, st.started).get("false_alarm", 0))
            ev = Evidence(evidence.windows, evidence.verdict, false_alarms)
            step = self._walk(st).update(self._pending, ev, self._clock())
            if st.paused:
                self._pending = 0.0
            if step is not None:
                step = carry_out(self.registry, st, step)
            if step is not None:
                record(self.registry.audit, st, step)
            if step is not None or mono - self._last_save >= SAVE_EVERY_S:
                self._save(st)
        self._settle(st)
        return step

    def flush(self) -> None:
        """At stop: keep the hold run since the last save."""
        with self.locked():
            st = self._load()
            run = self._pending + (self._mono() - self._last_tick)
            if (st is not None and st.status == "running" and not st.paused
                    and st.n == self._seen_n and run > 0):
                st.held_s += run
                self._save(st)

    def _save(self, st: WalkState) -> None:
        self.store.save(st)
        self._pending = 0.0
        self._last_save = self._mono()

    def _settle(self, st: WalkState | None) -> None:
        self.state = st
        self._seen_n = -1 if st is None else st.n
        self._gauges(st)
        if st is None:
            return
        told = st.n if self._announced is None else self._announced
        for e in st.history:
            if e["n"] > told:
                self._tell(st, e)
        self._announced = max(told, st.n)

    def _gauges(self, st: WalkState | None) -> None:
        m, stage = self.metrics, None if st is None else st.current
        running = st is not None and st.status == "running" and stage is not None
        m.rollout_stage.set(st.stage if running and st is not None else -1)
        m.rollout_share.set(stage.share if running and stage is not None else 0.0)
        m.rollout_paused.set(1 if running and st is not None and st.paused else 0)
        left = stage.hold_s - st.held_s if running and st and stage else 0.0
        m.rollout_hold_remaining.set(max(0.0, left))

    def _tell(self, st: WalkState, e: dict[str, Any]) -> None:
        event, reason, rule = e["event"], e.get("reason", ""), e.get("rule", "")
        to = e.get("to")
        after = e["stage"] if to is None else to  # the share it left the candidate on
        share = next((s.share for s in st.stages if s.name == after), 1.0)
        if event in ("passed", "advanced") or (event == "promoted"):
            self.metrics.rollout_stages_passed.inc()
        if event in ("rolled_back", "aborted"):
            self.metrics.rollout_rollbacks.labels(rule or "aborted").inc()
            self.rollbacks = [*self.rollbacks, {"version": st.version, "rule": rule,
                                                "reason": reason, "actor": e["actor"],
                                                "ts": e["ts"]}][-20:]
        if event == "rolled_back":
            self.metrics.canary_rollbacks.labels(rule).inc()
            log.error("IT ALERT: rollout of %s rolled back automatically at %s: %s",
                      st.ident, e["stage"], reason)
        else:
            log.info("rollout of %s: %s %s%s (%s)%s", st.ident, event, e["stage"],
                     f" -> {to}" if to and to != PROMOTED else "", e["actor"],
                     f": {reason}" if reason else "")
        if self.events is not None:
            try:
                self.events({"model": st.name, "version": st.version, "event": event,
                             "stage": e["stage"], "to": e.get("to"), "share": share,
                             "actor": e["actor"], "reason": reason, "rule": rule,
                             "ts": e["ts"], "n": e["n"]})
            except Exception:  # telling must never stop the walk
                log.exception("rollout event of %s not published", st.ident)

    def snapshot(self) -> dict[str, Any] | None:
        return None if self.state is None else self.state.summary()
