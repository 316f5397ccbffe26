"""The staged walk of a candidate model: shadow, canary on growing shares, promotion.

A :class:`StagedWalk` is pure: the agent tells it how much time passed and what
the stage's judge saw (:class:`Evidence`), and gets back the :class:`Step` to
carry out (the next stage, the promotion, a rollback) or None. People act on it
with :meth:`~StagedWalk.pause`, ``resume``, ``advance`` and ``abort``. Its
:class:`WalkState` is plain data (JSON beside the registry pointers), so a
restarted agent resumes the stage and what is left of its hold.

A stage passes once its hold has run (paused time does not count) *and* its
candidate group scored at least ``min_windows`` windows: a stage that saw
nothing is never passed by the clock alone (a person can still advance it).
The judge's verdict and the false alarms fail a stage at any moment, paused or
not.

>>> stages = plan(shadow_hold_s=2, canary=[(0.05, 1), (0.2, 1), (0.5, 1)])
>>> [s.name for s in stages]
['shadow', 'canary-5', 'canary-20', 'canary-50']
>>> w = StagedWalk(WalkState.begin("m", "2", stages, now=0.0), min_windows=10)
>>> w.update(1.5, Evidence(windows=50), now=1.5) is None   # still holding
True
>>> w.update(1.0, Evidence(windows=50), now=2.5).event
'passed'
>>> w.stage.name, w.state.held_s
('canary-5', 0.0)
>>> w.update(5.0, Evidence(windows=3), now=7.5) is None    # held, but too little seen
True
>>> w.state.waiting
'waiting for evidence: 3 of 10 windows scored by the candidate'
>>> bad = Evidence(windows=9, verdict=RollbackReason("error_rate", "NaN scores"))
>>> step = w.update(0.1, bad, now=8.0)
>>> step.event, step.rule, step.reason, w.state.status
('rolled_back', 'error_rate', 'canary 5 %: NaN scores', 'rolled_back')
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from edge.models.canary import RollbackReason

Status = Literal["running", "promoted", "rolled_back", "aborted", "ended"]
Event = Literal["started", "restored", "passed", "advanced", "promoted", "rolled_back",
                "paused", "resumed", "aborted", "ended"]
# Why a walk was rolled back: the judge's rules, the crew's verdicts, a refused
# promotion, a person. A fixed vocabulary: it is a metric label.
ROLLBACK_REASONS = ("error_rate", "latency_p99", "alert_rate", "false_alarms",
                    "promote_refused", "aborted")
HISTORY_MAX = 64
PROMOTED = "promoted"

# The verdict hook: false-alarm (and other) verdicts the crew gave on alerts raised
# by ``model`` (its ident, e.g. "pump-anomaly/7") that opened at or after ``since``
# (epoch s). Returns counts by verdict, e.g. {"confirmed": 2, "false_alarm": 1}.
Verdicts = Callable[[str, float], Mapping[str, int]]


def no_verdicts(model: str, since: float) -> Mapping[str, int]:
    """The default hook until crew verdicts exist: nobody has judged anything."""
    del model, since
    return {}


@dataclass(frozen=True)
class Stage:
    """One stage: ``share`` 0.0 is shadow (the candidate scores beside, unseen)."""

    name: str
    share: float
    hold_s: float

    @property
    def mode(self) -> Literal["shadow", "canary"]:
        return "shadow" if self.share == 0.0 else "canary"

    @property
    def label(self) -> str:
        """How people read it: 'shadow', 'canary 5 %'."""
        return "shadow" if self.share == 0.0 else f"canary {self.share * 100:g} %"


def plan(shadow_hold_s: float, canary: Sequence[tuple[float, float]]) -> tuple[Stage, ...]:
    """Stages from the config: shadow (unless its hold is 0), then each (share, hold_s).

    >>> [(s.label, s.hold_s) for s in plan(0, [(0.1, 60), (0.5, 120)])]
    [('canary 10 %', 60.0), ('canary 50 %', 120.0)]
    >>> plan(10, [(0.5, 1), (0.2, 1)])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: canary shares must grow stage by stage (0.5 then 0.2): ...
    """
    stages = [Stage("shadow", 0.0, float(shadow_hold_s))] if shadow_hold_s > 0 else []
    last = 0.0
    for share, hold in canary:
        if not 0.0 < share < 1.0:
            raise ValueError(f"canary share {share!r} must be within (0, 1); 1.0 is the "
                             "promotion that ends the walk")
        if share <= last:
            raise ValueError(f"canary shares must grow stage by stage ({last:g} then "
                             f"{share:g}): a smaller share would take assets off the candidate")
        if hold <= 0:
            raise ValueError(f"hold_s {hold!r} of the {share:g} stage must be > 0")
        stages.append(Stage(f"canary-{share * 100:g}", float(share), float(hold)))
        last = share
    if not stages:
        raise ValueError("a staged rollout needs at least one stage (shadow_hold_s > 0 "
                         "or a canary stage)")
    return tuple(stages)


@dataclass(frozen=True)
class Evidence:
    """What the current stage's judge has seen (see :class:`~edge.models.canary.CanaryJudge`)."""

    windows: int = 0  # windows the candidate scored in this stage
    verdict: RollbackReason | None = None
    false_alarms: int = 0  # false-alarm verdicts on the candidate's alerts, whole walk


@dataclass(frozen=True)
class Step:
    """One transition of the walk, as the audit log, the metric and the MQTT event say it."""

    n: int
    ts: float
    event: Event
    stage: str  # the stage it happened in (or left)
    to: str | None  # the stage it went to, PROMOTED, or None
    actor: str
    reason: str = ""
    rule: str = ""  # a rollback's reason label (ROLLBACK_REASONS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class WalkState:
    """Everything a walk needs to resume; JSON-able (:meth:`to_dict`, :meth:`from_dict`)."""

    name: str
    version: str
    stages: list[Stage]
    started: float  # epoch s; verdicts are counted from here
    stage: int = 0  # index into stages; len(stages) once promoted
    held_s: float = 0.0  # hold run in this stage (paused time excluded)
    stage_started: float = 0.0
    paused: bool = False
    paused_by: str = ""
    status: Status = "running"
    reason: str = ""  # why it ended, for a rollback or an abort
    rule: str = ""
    waiting: str = ""  # why a stage whose hold has run does not pass yet
    n: int = 0  # number of the last history entry
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def begin(cls, name: str, version: str, stages: Sequence[Stage], now: float) -> WalkState:
        return cls(name, version, list(stages), started=now, stage_started=now)

    @property
    def current(self) -> Stage | None:
        return self.stages[self.stage] if self.stage < len(self.stages) else None

    @property
    def ident(self) -> str:
        return f"{self.name}/{self.version}"

    def label(self, index: int | None = None) -> str:
        i = self.stage if index is None else index
        return self.stages[i].label if i < len(self.stages) else "100 %"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stages"] = [asdict(s) for s in self.stages]
        return d

    def summary(self, history: int = 12) -> dict[str, Any]:
        """What the page, the API and ``forewarn model rollout status --json`` show."""
        stage = self.current if self.status == "running" else None
        return {"model": self.ident, "version": self.version, "status": self.status,
                "stage": self.stage, "label": self.label(),
                "stages": [{**asdict(s), "label": s.label} for s in self.stages],
                "share": None if stage is None else stage.share,
                "held_s": round(self.held_s, 3),
                "hold_s": None if stage is None else stage.hold_s,
                "paused": self.paused, "paused_by": self.paused_by, "waiting": self.waiting,
                "reason": self.reason, "rule": self.rule, "started": self.started,
                "stage_started": self.stage_started, "history": self.history[-history:]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WalkState:
        """Raises KeyError/TypeError/ValueError on a malformed record (the store names the file)."""
        fields = dict(d)
        stages = [Stage(str(s["name"]), float(s["share"]), float(s["hold_s"]))
                  for s in fields.pop("stages")]
        st = cls(stages=stages, **fields)
        if st.status not in ("running", "promoted", "rolled_back", "aborted", "ended"):
            raise ValueError(f"status {st.status!r} is not a walk status")
        if not 0 <= st.stage <= len(stages):
            raise ValueError(f"stage {st.stage} is outside the walk's {len(stages)} stages")
        return st


class StagedWalk:
    """Advances a :class:`WalkState` in place; each transition is returned and kept in history."""

    def __init__(self, state: WalkState, min_windows: int = 100,
                 max_false_alarms: int = 3) -> None:
        self.state = state
        self.min_windows = min_windows
        self.max_false_alarms = max_false_alarms

    @property
    def stage(self) -> Stage | None:
        return self.state.current

    @property
    def running(self) -> bool:
        return self.state.status == "running"

    @property
    def remaining_s(self) -> float | None:
        s = self.stage
        return None if s is None or not self.running else max(0.0, s.hold_s - self.state.held_s)

    def update(self, dt_s: float, evidence: Evidence, now: float) -> Step | None:
        """``dt_s`` seconds of hold passed with this evidence: the step it leads to, or None."""
        st, stage = self.state, self.stage
        if not self.running or stage is None:
            return None
        if evidence.verdict is not None:
            v = evidence.verdict
            return self._end("rolled_back", now, "rollout", f"{stage.label}: {v.reason}",
                             v.rule)
        if evidence.false_alarms > self.max_false_alarms:
            return self._end("rolled_back", now, "rollout",
                             f"{stage.label}: {evidence.false_alarms} false-alarm verdicts on "
                             f"alerts the candidate raised (limit {self.max_false_alarms})",
                             "false_alarms")
        if st.paused:
            return None  # a pause stops the clock, not the judge
        st.held_s += max(0.0, dt_s)
        if st.held_s < stage.hold_s:
            st.waiting = ""
            return None
        if evidence.windows < self.min_windows:
            st.waiting = (f"waiting for evidence: {evidence.windows} of {self.min_windows} "
                          "windows scored by the candidate")
            return None
        return self._next("passed", now, "rollout",
                          f"{stage.label} held {stage.hold_s:g} s: {evidence.windows} "
                          "windows judged, no rule failed")

    # -- what people do ----------------------------------------------------------------
    def pause(self, actor: str, now: float, reason: str = "") -> Step:
        self._need_running("pause")
        if self.state.paused:
            raise ValueError(f"{self.state.ident} is already paused (by "
                             f"{self.state.paused_by or 'someone'})")
        self.state.paused, self.state.paused_by = True, actor
        return self._record("paused", now, actor, reason)

    def resume(self, actor: str, now: float, reason: str = "") -> Step:
        self._need_running("resume")
        if not self.state.paused:
            raise ValueError(f"{self.state.ident} is not paused")
        self.state.paused, self.state.paused_by = False, ""
        return self._record("resumed", now, actor, reason)

    def advance(self, actor: str, now: float, reason: str = "") -> Step:
        """Skip the rest of the hold (and the evidence it waits for); a pause stays on."""
        self._need_running("advance")
        return self._next("advanced", now, actor, reason or "hold skipped")

    def abort(self, actor: str, now: float, reason: str = "") -> Step:
        self._need_running("abort")
        return self._end("aborted", now, actor, reason or f"aborted by {actor}", "aborted")

    def restore(self, now: float) -> Step:
        """The agent restarted and carries on with this stage and its remaining hold."""
        self._need_running("restore")
        return self._record("restored", now, "agent",
                            f"{self.state.label()} resumed with {self.remaining_s or 0:.0f} s "
                            "of its hold left")

    def end(self, now: float, reason: str) -> Step:
        """The candidate was changed outside the walk (cleared, replaced, promoted by hand)."""
        self._need_running("end")
        return self._end("ended", now, "agent", reason, "")

    def undo_promotion(self, now: float, reason: str) -> Step:
        """The promotion just stepped to could not be made: roll back from the last stage."""
        st = self.state
        if st.status != "promoted" or not st.history or st.history[-1]["event"] != "promoted":
            raise ValueError(f"{st.ident}: no promotion to undo")
        last = st.history.pop()
        st.n -= 1
        st.status, st.stage = "running", len(st.stages) - 1
        return self._end("rolled_back", now, str(last["actor"]), reason, "promote_refused")

    def start(self, now: float) -> Step:
        return self._record("started", now, "agent",
                            " -> ".join(s.label for s in self.state.stages) + " -> 100 %")

    # -- plumbing ------------------------------------------------------------------------
    def _need_running(self, what: str) -> None:
        st = self.state
        if not self.running:
            raise ValueError(f"cannot {what} the rollout of {st.ident}: it is "
                             f"{st.status.replace('_', ' ')} ({st.reason or 'done'})")

    def _next(self, event: Event, now: float, actor: str, reason: str) -> Step:
        st = self.state
        was = st.stage
        st.stage += 1
        st.held_s, st.stage_started, st.waiting = 0.0, now, ""
        if st.stage >= len(st.stages):
            st.status = "promoted"
            return self._record("promoted", now, actor, reason, stage=was, to=PROMOTED)
        return self._record(event, now, actor, reason, stage=was, to=st.stages[st.stage].name)

    def _end(self, status: Literal["rolled_back", "aborted", "ended"], now: float, actor: str,
             reason: str, rule: str) -> Step:
        st = self.state
        st.status, st.reason, st.rule, st.waiting = status, reason, rule, ""
        return self._record(status, now, actor, reason, rule=rule)

    def _record(self, event: Event, now: float, actor: str, reason: str, *,
                stage: int | None = None, to: str | None = None, rule: str = "") -> Step:
        st = self.state
        i = st.stage if stage is None else stage
        st.n += 1
        step = Step(st.n, now, event, st.stages[i].name if i < len(st.stages) else PROMOTED,
                    to, actor, reason, rule)
        st.history = [*st.history, step.to_dict()][-HISTORY_MAX:]
        return step
