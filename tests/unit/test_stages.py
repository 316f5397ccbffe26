"""The staged walk: holds, evidence, the judge, verdicts, a person's controls, persistence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.core.audit import verify
from edge.core.errors import BundleError, StorageError
from edge.models.canary import RollbackReason
from edge.models.registry import Registry
from edge.models.stages import (
    HISTORY_MAX,
    PROMOTED,
    Evidence,
    StagedWalk,
    WalkState,
    plan,
)
from edge.models.walkstore import WALK_FILE, WalkStore, control
from tests.bundlefactory import make_bundle

STAGES = plan(10, [(0.05, 20), (0.2, 30), (0.5, 40)])
ENOUGH = Evidence(windows=500)


def _walk(min_windows: int = 100, max_false_alarms: int = 3) -> StagedWalk:
    return StagedWalk(WalkState.begin("pump", "2", STAGES, now=1000.0),
                      min_windows=min_windows, max_false_alarms=max_false_alarms)


def test_a_walk_passes_each_stage_after_its_hold_and_ends_promoted() -> None:
    w = _walk()
    seen, t = [], 1000.0
    for _ in range(200):
        t += 1.0
        step = w.update(1.0, ENOUGH, t)
        if step is not None:
            seen.append((step.event, step.stage, step.to, round(t - 1000.0)))
    assert seen == [("passed", "shadow", "canary-5", 10), ("passed", "canary-5", "canary-20", 30),
                    ("passed", "canary-20", "canary-50", 60),
                    ("promoted", "canary-50", PROMOTED, 100)]
    assert w.state.status == "promoted" and w.stage is None
    assert [e["event"] for e in w.state.history] == ["passed", "passed", "passed", "promoted"]
    assert [e["n"] for e in w.state.history] == [1, 2, 3, 4]
    assert w.update(1000.0, ENOUGH, t) is None  # nothing after the end


def test_a_stage_whose_hold_ran_waits_for_evidence() -> None:
    w = _walk(min_windows=100)
    assert w.update(50.0, Evidence(windows=99), 1050.0) is None
    assert w.stage is not None and w.stage.name == "shadow"
    assert "99 of 100 windows" in w.state.waiting
    step = w.update(1.0, Evidence(windows=100), 1051.0)
    assert step is not None and step.event == "passed" and w.state.waiting == ""


def test_the_judge_fails_a_stage_at_once_with_the_stage_in_the_reason() -> None:
    w = _walk()
    w.update(10.0, ENOUGH, 1010.0)  # -> canary 5 %
    bad = Evidence(windows=3, verdict=RollbackReason("latency_p99", "p99 900 ms over 200 ms"))
    step = w.update(0.1, bad, 1010.1)  # long before the hold and the evidence
    assert step is not None and (step.event, step.rule) == ("rolled_back", "latency_p99")
    assert step.reason == "canary 5 %: p99 900 ms over 200 ms" == w.state.reason
    assert w.state.status == "rolled_back" and w.state.stage == 1


def test_false_alarm_verdicts_above_the_limit_fail_the_stage() -> None:
    w = _walk(max_false_alarms=2)
    assert w.update(1.0, Evidence(windows=5, false_alarms=2), 1001.0) is None
    step = w.update(1.0, Evidence(windows=5, false_alarms=3), 1002.0)
    assert step is not None and step.rule == "false_alarms"
    assert "3 false-alarm verdicts" in step.reason and "limit 2" in step.reason


def test_a_pause_stops_the_clock_but_not_the_judge() -> None:
    w = _walk()
    w.update(4.0, ENOUGH, 1004.0)
    w.pause("cli:ana", 1004.0, "night shift")
    assert w.update(10_000.0, ENOUGH, 1100.0) is None
    assert w.state.held_s == 4.0 and w.stage is not None and w.stage.name == "shadow"
    with pytest.raises(ValueError, match=r"already paused \(by cli:ana"):
        w.pause("cli:bob", 1100.0)
    bad = Evidence(windows=500, verdict=RollbackReason("error_rate", "NaN"))
    assert w.update(1.0, bad, 1101.0).event == "rolled_back"  # type: ignore[union-attr]


def test_resume_continues_the_remaining_hold() -> None:
    w = _walk()
    w.update(4.0, ENOUGH, 1004.0)
    w.pause("a", 1004.0)
    w.resume("b", 1500.0)
    assert w.update(5.0, ENOUGH, 1505.0) is None and w.remaining_s == 1.0
    assert w.update(1.0, ENOUGH, 1506.0).to == "canary-5"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="not paused"):
        w.resume("b", 1506.0)


def test_advance_skips_the_hold_and_the_evidence_and_from_the_last_stage_promotes() -> None:
    w = _walk()
    steps = [w.advance("api:ana", 1000.0 + i) for i in range(4)]
    assert [(s.event, s.to, s.actor) for s in steps] == [
        ("advanced", "canary-5", "api:ana"), ("advanced", "canary-20", "api:ana"),
        ("advanced", "canary-50", "api:ana"), ("promoted", PROMOTED, "api:ana")]
    with pytest.raises(ValueError, match="it is promoted"):
        w.advance("api:ana", 1005.0)


def test_abort_rolls_back_and_ends_the_walk() -> None:
    w = _walk()
    step = w.abort("cli:ana", 1001.0, "wrong sensor map")
    assert (step.event, step.rule, step.reason) == ("aborted", "aborted", "wrong sensor map")
    for op in ("pause", "resume", "advance", "abort"):
        with pytest.raises(ValueError, match=r"it is aborted \(wrong sensor map"):
            getattr(w, op)("x", 1002.0)


def test_state_round_trips_through_json_and_refuses_a_broken_record() -> None:
    w = _walk()
    w.update(12.0, ENOUGH, 1012.0)
    w.pause("a", 1012.0)
    back = WalkState.from_dict(json.loads(json.dumps(w.state.to_dict())))
    assert back == w.state and back.current is not None and back.current.share == 0.05
    with pytest.raises(ValueError, match="status 'maybe'"):
        WalkState.from_dict({**w.state.to_dict(), "status": "maybe"})
    with pytest.raises(TypeError):
        WalkState.from_dict({**w.state.to_dict(), "surprise": 1})


def test_history_is_bounded() -> None:
    w = _walk()
    for i in range(HISTORY_MAX):
        w.pause("a", float(i))
        w.resume("a", float(i))
    assert len(w.state.history) == HISTORY_MAX and w.state.n == 2 * HISTORY_MAX
    assert w.state.history[-1]["n"] == 2 * HISTORY_MAX


def test_plan_refuses_shrinking_shares_and_an_empty_walk() -> None:
    assert [s.label for s in plan(0, [(0.1, 1)])] == ["canary 10 %"]
    with pytest.raises(ValueError, match="must grow"):
        plan(1, [(0.2, 1), (0.2, 1)])
    with pytest.raises(ValueError, match=r"1\.0 is the promotion"):
        plan(1, [(1.0, 1)])
    with pytest.raises(ValueError, match="at least one stage"):
        plan(0, [])


# -- the store and the person's controls, on a real registry --------------------------

def _registry(tmp_path: Path) -> Registry:
    from edge.core.audit import AuditLog

    v1, pub = make_bundle(tmp_path / "b", signals=["a"], version="1")
    v2, _ = make_bundle(tmp_path / "b", signals=["a"], version="2")
    reg = Registry(tmp_path / "models", [pub], audit=AuditLog(tmp_path / "audit.jsonl"))
    reg.install(v1)
    reg.install(v2)
    reg.set_candidate("test-model", "2")
    return reg


def test_controls_are_saved_audited_and_move_the_pointers(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    store = WalkStore(reg)
    with pytest.raises(BundleError, match="no staged rollout"):
        control(reg, "test-model", "pause", "cli:ana")
    store.save(WalkState.begin("test-model", "2", plan(1, [(0.5, 1)]), now=1.0))
    control(reg, "test-model", "pause", "cli:ana", "look first")
    assert store.load("test-model").paused  # type: ignore[union-attr]
    with pytest.raises(BundleError, match="already paused"):
        control(reg, "test-model", "pause", "cli:bob")
    control(reg, "test-model", "advance", "cli:ana")
    st, step = control(reg, "test-model", "advance", "cli:ana")
    assert step.event == "promoted" and st.status == "promoted"
    assert reg.pointers("test-model").active == "2" and reg.pointers("test-model").candidate is None
    entries = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    rollout = [(e["actor"], e["action"], e["details"].get("result")) for e in entries
               if e["action"].startswith("model.rollout")]
    assert rollout == [("cli:ana", "model.rollout.pause", "refused"),
                       ("cli:ana", "model.rollout.paused", "ok"),
                       ("cli:bob", "model.rollout.pause", "refused"),
                       ("cli:ana", "model.rollout.advanced", "ok"),
                       ("cli:ana", "model.rollout.promoted", "ok")]
    assert ("cli:ana", "model.promote") in [(e["actor"], e["action"]) for e in entries]
    assert verify(tmp_path / "audit.jsonl").ok


def test_abort_clears_the_candidate_and_keeps_the_active_model(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    WalkStore(reg).save(WalkState.begin("test-model", "2", STAGES, now=1.0))
    st, _ = control(reg, "test-model", "abort", "api:ana", "bad sensor map")
    ptr = reg.pointers("test-model")
    assert (ptr.active, ptr.candidate, st.status) == ("1", None, "aborted")
    log = (tmp_path / "audit.jsonl").read_text()
    assert "rollout aborted: bad sensor map" in log  # the registry's own entry says why


def test_a_corrupt_walk_file_names_the_file(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    path = tmp_path / "models" / "test-model" / WALK_FILE
    path.write_text('{"name": "test-model"')
    with pytest.raises(StorageError, match=f"{path}: cannot read the staged rollout"):
        WalkStore(reg).load("test-model")
    path.write_text('{"name": "test-model"}')
    with pytest.raises(StorageError, match="not a staged rollout record"):
        WalkStore(reg).load("test-model")
