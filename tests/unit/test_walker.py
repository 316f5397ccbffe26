"""The agent's side of a walk on a real registry: the hold's clock, saves, restarts, telling."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge.core.audit import AuditLog
from edge.core.config import parse_config
from edge.core.metrics import Metrics
from edge.models.registry import Registry
from edge.models.stages import Evidence
from edge.models.walker import SAVE_EVERY_S, Walker
from edge.models.walkstore import WALK_FILE, control
from tests.bundlefactory import make_bundle

ENOUGH = Evidence(windows=1000)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    v1, pub = make_bundle(tmp_path / "b", signals=["a"], version="1")
    v2, _ = make_bundle(tmp_path / "b", signals=["a"], version="2")
    r = Registry(tmp_path / "models", [pub], audit=AuditLog(tmp_path / "audit.jsonl"))
    r.install(v1)
    r.install(v2)
    r.set_candidate("test-model", "2")
    return r


def walker(reg: Registry, clock: Clock, told: list[dict[str, Any]],
           verdicts: Any = None) -> Walker:
    cfg = parse_config({"bundle": {"name": "test-model", "canary_min_windows": 10,
                                   "rollout_stages": {"shadow_hold_s": 100.0, "canary": [
                                       {"share": 0.1, "hold_s": 50.0}],
                                       "max_false_alarms": 1}}}).bundle
    extra = {} if verdicts is None else {"verdicts": verdicts}
    return Walker(reg, "test-model", cfg, Metrics(), events=told.append, clock=clock,
                  monotonic=clock, **extra)


def saved(reg: Registry) -> dict[str, Any]:
    return dict(json.loads((reg.root / "test-model" / WALK_FILE).read_text()))


def run(w: Walker, clock: Clock, seconds: float, evidence: Evidence = ENOUGH) -> list[str]:
    events = []
    for _ in range(int(seconds)):
        clock.t += 1.0
        with w.locked():
            step = w.tick("2", evidence)
        if step is not None:
            events.append(step.event)
    return events


def test_the_hold_is_saved_every_interval_and_at_stop_and_a_restart_resumes_it(
        reg: Registry) -> None:
    clock, told = Clock(), []
    w = walker(reg, clock, told)
    reg.set_candidate("test-model", None)
    run(w, clock, 30)  # polls with no walk: none of that time is hold ...
    clock.t += 5.0  # ... nor the time since the last poll
    with w.locked():
        w.begin("2")
    assert run(w, clock, SAVE_EVERY_S - 1) == []
    assert saved(reg)["held_s"] == 0.0  # not yet written ...
    assert w.state is not None and w.state.held_s == SAVE_EVERY_S - 1  # ... but counted
    run(w, clock, 1)
    assert saved(reg)["held_s"] == SAVE_EVERY_S
    run(w, clock, 7)
    w.flush()  # the agent stops
    assert saved(reg)["held_s"] == SAVE_EVERY_S + 7
    clock.t += 3600  # down for an hour: that is no hold
    told2: list[dict[str, Any]] = []
    w2 = walker(reg, clock, told2)
    with w2.locked():
        st = w2.begin("2")
    assert (st.stage, st.held_s, st.history[-1]["event"]) == (0, SAVE_EVERY_S + 7, "restored")
    assert [e["event"] for e in told2] == ["restored"]  # the first run's steps not told again
    assert run(w2, clock, 100 - SAVE_EVERY_S - 7) == ["passed"]
    assert [e["event"] for e in told] == ["started"]
    metrics = w2.metrics.registry
    assert metrics.get_sample_value("forewarn_rollout_stage") == 1
    assert metrics.get_sample_value("forewarn_rollout_share") == 0.1


def test_a_persons_step_is_told_and_a_pause_stops_the_agents_clock(reg: Registry) -> None:
    clock, told = Clock(), []
    w = walker(reg, clock, told)
    with w.locked():
        w.begin("2")
    run(w, clock, 20)
    control(reg, "test-model", "pause", "cli:ana", "look", now=clock.t)
    held = saved(reg)["held_s"]
    assert run(w, clock, 500) == []
    assert saved(reg)["held_s"] == held
    assert w.metrics.registry.get_sample_value("forewarn_rollout_paused") == 1
    control(reg, "test-model", "resume", "cli:ana", now=clock.t)
    assert run(w, clock, 100 - int(held) + 1) == ["passed"]
    assert [(e["event"], e["actor"]) for e in told] == [
        ("started", "agent"), ("paused", "cli:ana"), ("resumed", "cli:ana"),
        ("passed", "rollout")]


def test_false_alarm_verdicts_from_the_hook_roll_back(reg: Registry) -> None:
    clock, told = Clock(), []
    asked: list[tuple[str, float]] = []

    def verdicts(model: str, since: float) -> dict[str, int]:
        asked.append((model, since))
        return {"confirmed": 4, "false_alarm": 2 if clock.t > 30 else 0}

    w = walker(reg, clock, told, verdicts)
    with w.locked():
        w.begin("2")
    assert run(w, clock, 40) == ["rolled_back"]
    assert asked[0] == ("test-model/2", 0.0)  # the candidate's alerts since its walk began
    assert reg.pointers("test-model").candidate is None
    assert told[-1]["rule"] == "false_alarms"
    assert w.metrics.registry.get_sample_value(
        "forewarn_rollout_rollbacks_total", {"reason": "false_alarms"}) == 1


def test_an_unreadable_walk_file_is_moved_aside(reg: Registry) -> None:
    clock, told = Clock(), []
    w = walker(reg, clock, told)
    with w.locked():
        w.begin("2")
    (reg.root / "test-model" / WALK_FILE).write_text("{torn")
    run(w, clock, 1)
    assert w.state is None
    aside = list((reg.root / "test-model").glob(f"{WALK_FILE}.unreadable-*"))
    assert len(aside) == 1 and aside[0].read_text() == "{torn"
