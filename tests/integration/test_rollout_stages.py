"""The staged rollout in a running agent on a real Mosquitto: walk, rollback, controls, restart.

Each test runs a real agent (registry, audit log, API) fed by a live stream of 24
assets, with stage holds of about a second. The share of assets a stage puts on
the candidate is checked window by window against ``canary_assets``; every step
must be in the hash-chained audit log, the metrics and the MQTT events.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.app import Agent
from edge.core.audit import verify
from edge.egress.health import validate_health
from edge.egress.health_report import HealthReporter
from edge.models.canary import canary_assets
from edge.models.walkstore import WALK_FILE
from tests.agentkit import Client, ScoreLog, agent_config, wait_until
from tests.bundlefactory import make_bundle
from tests.conftest import REPO, Broker, free_port

ASSETS = [f"m{i}" for i in range(24)]  # 1, 5 and 15 of them at 5, 20 and 50 %
TOKEN = "ana-0123456789abcdef"
ANA = {"Authorization": f"Bearer {TOKEN}"}
EVENTS = "forewarn/site1/events/_rollout"
FAST = {"shadow_hold_s": 1.0, "canary": [{"share": 0.05, "hold_s": 1.0},
                                         {"share": 0.2, "hold_s": 1.0},
                                         {"share": 0.5, "hold_s": 1.0}]}


class Streamer(threading.Thread):
    """One reading per asset every 0.1 s (data time steps 1 s) until stopped."""

    def __init__(self, port: int, value: float = 10.0) -> None:
        super().__init__(daemon=True)
        self.client = Client(port)
        self.value = value
        self.stop_event = threading.Event()
        self.t = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            for a in ASSETS:
                body = json.dumps({"ts": 1_700_000_000 + self.t,
                                   "values": {"a": self.value, "b": 1.0}}).encode()
                self.client.c.publish(f"forewarn/site1/{a}", body, qos=1)
            self.t += 1
            self.stop_event.wait(0.1)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)
        self.client.close()


@dataclass
class Site:
    tmp: Path
    broker: Broker
    stages: dict[str, Any]
    agent: Agent | None = None
    rec: ScoreLog = field(default_factory=ScoreLog)
    api_port: int = 0
    models: Path = Path()
    pub: Path = Path()
    v1: Path = Path()

    @property
    def state(self) -> Path:
        return self.tmp / "state"

    def start(self) -> Agent:
        tokens = self.tmp / "tokens"
        tokens.write_text(f"ana:{TOKEN}\n")
        self.api_port = free_port()
        cfg = agent_config(self.state, self.v1, self.pub, self.broker.port,
                           bundle={"name": "test-model", "registry_poll_s": 0.1,
                                   "rollout": "staged", "canary_min_windows": 5,
                                   "rollout_stages": self.stages},
                           api={"port": self.api_port, "tokens_file": str(tokens)})
        self.agent = Agent(cfg)
        self.rec = ScoreLog()
        self.agent.pipeline.sinks.append(self.rec)
        self.agent.start()
        wait_until(self.agent.conn.connected.is_set, what="agent connected")
        return self.agent

    def candidate(self, **bundle: Any) -> str:
        v, _ = make_bundle(self.models, signals=["a", "b"], window=4, version="2",
                           warning=50.0, **bundle)
        assert self.agent is not None and self.agent.registry is not None
        self.agent.registry.install(v, actor="test")
        self.agent.registry.set_candidate("test-model", "2", actor="test")
        return "test-model/2"

    def walk(self) -> dict[str, Any]:
        """The saved walk ({} before the agent started one)."""
        path = self.state / "models" / "test-model" / WALK_FILE
        return dict(json.loads(path.read_text())) if path.exists() else {}

    def audit(self) -> list[dict[str, Any]]:
        lines = (self.state / "audit.jsonl").read_text().splitlines()
        return [json.loads(x) for x in lines]

    def rollout_audit(self) -> list[tuple[str, str]]:
        return [(e["actor"], e["action"].removeprefix("model.rollout."))
                for e in self.audit() if e["action"].startswith("model.rollout.")]

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        assert self.agent is not None
        return self.agent.metrics.registry.get_sample_value(name, labels or {})

    def cli(self, *args: str) -> str:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        out = subprocess.run([sys.executable, "-m", "edge.cli", "model", *args,
                              "--state-dir", str(self.state), "--key", str(self.pub),
                              "--actor", "cli:ana"],
                             capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def api(self, op: str, **body: Any) -> httpx.Response:
        return httpx.post(f"http://127.0.0.1:{self.api_port}/api/models/test-model/rollout/{op}",
                          json=body or None, headers=ANA, timeout=30)


@pytest.fixture
def site(tmp_path: Path, mosquitto: Broker) -> Iterator[Site]:
    s = Site(tmp_path, mosquitto, FAST)
    s.models = tmp_path / "models"
    s.v1, s.pub = make_bundle(s.models, signals=["a", "b"], window=4, version="1",
                              warning=50.0)
    yield s
    if s.agent is not None:
        s.agent.stop()


def _events(client: Client) -> list[dict[str, Any]]:
    with client.lock:
        return [json.loads(p) for p in client.received.get(EVENTS, [])]


def on_candidate(share: float) -> set[str]:
    return {a for a in ASSETS if canary_assets(a, share, "test-model")}


def test_a_candidate_walks_every_stage_and_is_promoted(site: Site) -> None:
    agent = site.start()
    events = Client(site.broker.port, subscribe=[EVENTS])
    stream = Streamer(site.broker.port)
    stream.start()
    try:
        ident = site.candidate()
        reg = agent.registry
        assert reg is not None
        # What the site tells the fleet mid-walk: the stage, in the report's vocabulary.
        report = HealthReporter(site_id="site1", k=1, registry=agent.metrics.registry,
                                store_path=site.state / "alerts.sqlite", models=list,
                                state_dir=site.state, operators=1, put=lambda _b: None,
                                interval_s=0)
        wait_until(lambda: site.metric("forewarn_rollout_share") == 0.2, timeout=30,
                   what="the canary 20 % stage")
        canary = validate_health(report.build(), 1).canary
        assert canary.stage in ("canary_20", "canary_50") and canary.passed >= 2
        assert canary.failed == 0
        wait_until(lambda: reg.pointers("test-model").active == "2", timeout=60,
                   what="the candidate promoted by its walk")
        wait_until(lambda: validate_health(report.build(), 1).canary.stage is None,
                   what="no stage reported once promoted")
        t_end = time.time()
        wait_until(lambda: {w.asset for w in site.rec.between(t_end, time.time())
                            if w.model == ident} == set(ASSETS), what="every asset on v2")
    finally:
        stream.stop()
    walk = site.walk()
    assert walk["status"] == "promoted"
    steps = [(e["event"], e["stage"], e["to"]) for e in walk["history"]]
    assert steps == [("started", "shadow", None), ("passed", "shadow", "canary-5"),
                     ("passed", "canary-5", "canary-20"), ("passed", "canary-20", "canary-50"),
                     ("promoted", "canary-50", "promoted")]
    ts = [e["ts"] for e in walk["history"]]  # when each stage began (before its rollout)
    holds = [FAST["shadow_hold_s"]] + [c["hold_s"] for c in FAST["canary"]]
    for k, hold in enumerate(holds):  # no stage passed before its hold had run
        assert ts[k + 1] - ts[k] >= hold - 0.02, f"stage {k} passed after {ts[k + 1] - ts[k]} s"
    # Window by window: before a stage began, only the previous stage's assets were
    # ever scored by the candidate; within each stage, every one of its assets was.
    sets = [set(), on_candidate(0.05), on_candidate(0.2), on_candidate(0.5)]
    assert len(sets[1]) == 1 and len(sets[2]) == 5 and len(sets[3]) == 15
    assert sets[1] < sets[2] < sets[3]
    for k, assets in enumerate(sets):
        start, end = ts[k], ts[k + 1]
        cand = {w.asset for w in site.rec.between(0, end) if w.model == ident}
        assert cand <= assets, f"stage {k}: {sorted(cand - assets)} on the candidate too early"
        during = {w.asset for w in site.rec.between(start, end) if w.model == ident}
        assert during == assets, f"stage {k}: {sorted(assets - during)} never on the candidate"
    # Every step in the audit log, in order, by the rollout; the promotion itself too.
    assert site.rollout_audit() == [("agent", "started"), ("rollout", "passed"),
                                    ("rollout", "passed"), ("rollout", "passed"),
                                    ("rollout", "promoted")]
    actions = [(e["actor"], e["action"]) for e in site.audit()]
    assert actions.index(("rollout", "model.promote")) < actions.index(
        ("rollout", "model.rollout.promoted"))
    assert verify(site.state / "audit.jsonl").ok
    wait_until(lambda: len(_events(events)) >= 5, what="five rollout events")
    told = _events(events)
    events.close()
    assert [(e["event"], e["stage"], e["share"]) for e in told] == [
        ("started", "shadow", 0.0), ("passed", "shadow", 0.05), ("passed", "canary-5", 0.2),
        ("passed", "canary-20", 0.5), ("promoted", "canary-50", 1.0)]
    assert {e["schema"] for e in told} == {"forewarn.rollout-event/1"}
    assert site.metric("forewarn_rollout_stages_passed_total") == 4
    assert site.metric("forewarn_rollout_stage") == -1
    # Counted once the swap's follow-up (the trim and the library-page unmap) is through,
    # a moment after the candidate already scores every asset.
    wait_until(lambda: site.metric("forewarn_model_swaps_total") == 1, what="the swap counted")


def test_an_always_breaching_candidate_is_rolled_back_at_the_first_canary_stage(
        site: Site) -> None:
    site.stages = {"shadow_hold_s": 0.0, "canary": [{"share": 0.05, "hold_s": 30.0},
                                                    {"share": 0.5, "hold_s": 1.0}]}
    agent = site.start()
    events = Client(site.broker.port, subscribe=[EVENTS])
    stream = Streamer(site.broker.port)
    stream.start()
    try:
        ident = site.candidate(score_offset=100.0)  # 110 against a warning level of 50
        wait_until(lambda: site.walk().get("status") == "rolled_back", timeout=30,
                   what="the automatic rollback")
        t_back = time.time()
        wait_until(lambda: {w.asset for w in site.rec.between(t_back + 0.5, time.time())
                            if w.model == "test-model/1"} == set(ASSETS),
                   what="every asset back on the active model")
    finally:
        stream.stop()
    walk = site.walk()
    assert [e["event"] for e in walk["history"]] == ["started", "rolled_back"]
    assert walk["stage"] == 0 and walk["rule"] == "alert_rate"
    assert walk["reason"].startswith("canary 5 %: candidate alert rate 100.000%")
    assert {w.asset for w in site.rec.between(0, t_back) if w.model == ident} \
        == on_candidate(0.05)
    reg = agent.registry
    assert reg is not None
    assert (reg.pointers("test-model").active, reg.pointers("test-model").candidate) == ("1", None)
    # Why, in the audit log (the walk's entry and the registry's), the metric, the event.
    audit = site.audit()
    back = [e for e in audit if e["action"] == "model.rollout.rolled_back"]
    assert len(back) == 1 and back[0]["actor"] == "rollout"
    assert back[0]["details"]["rule"] == "alert_rate"
    assert back[0]["details"]["reason"] == walk["reason"]
    cleared = [e for e in audit if e["action"] == "model.candidate" and e["details"]["version"]
               is None]
    assert cleared[-1]["details"]["reason"] == f"automatic rollback: {walk['reason']}"
    wait_until(lambda: site.metric("forewarn_rollout_rollbacks_total",
                                   {"reason": "alert_rate"}) == 1, what="the rollback counted")
    assert site.metric("forewarn_canary_rollbacks_total", {"rule": "alert_rate"}) == 1
    assert site.metric("forewarn_rollout_stage") == -1
    wait_until(lambda: len(_events(events)) >= 2, what="the rollback event")
    told = _events(events)[-1]
    events.close()
    assert (told["event"], told["rule"], told["stage"], told["actor"]) == (
        "rolled_back", "alert_rate", "canary-5", "rollout")
    assert told["reason"] == walk["reason"] and told["version"] == "2"
    assert verify(site.state / "audit.jsonl").ok


def test_a_nan_candidate_fails_its_shadow_stage_and_no_asset_ever_sees_it(site: Site) -> None:
    agent = site.start()
    stream = Streamer(site.broker.port)
    stream.start()
    try:
        ident = site.candidate(nan=True)
        wait_until(lambda: site.walk().get("status") == "rolled_back", timeout=30,
                   what="the automatic rollback")
    finally:
        stream.stop()
    walk = site.walk()
    assert walk["stage"] == 0 and walk["rule"] == "error_rate"
    assert walk["reason"].startswith("shadow: candidate error rate 100.00%")
    with site.rec.lock:
        assert not [w for _, w in site.rec.rows if w.model == ident]
    wait_until(lambda: site.metric("forewarn_rollout_rollbacks_total",
                                   {"reason": "error_rate"}) == 1, what="the rollback counted")
    assert agent.pipeline.rollout is None


def test_a_template_candidate_is_refused_saying_why(site: Site) -> None:
    """Its assets have no parameters learned for it: it would score nothing and no
    stage could be judged, so the walk never starts and the audit log says why."""
    from tests.bundlefactory import make_template

    agent = site.start()
    tpl, _ = make_template(site.models, name="test-model", version="2", signals=["a", "b"],
                           window=4, key_dir=site.pub.parent)
    assert agent.registry is not None
    agent.registry.install(tpl, actor="test")
    agent.registry.set_candidate("test-model", "2", actor="test")
    wait_until(lambda: [e for e in site.audit() if e["action"] == "model.candidate"
                        and e["actor"] == "agent"], what="the refusal audited")
    refusal = next(e for e in site.audit() if e["action"] == "model.candidate"
                   and e["actor"] == "agent")
    assert refusal["details"]["result"] == "refused"
    assert "template bundle" in refusal["details"]["error"]
    assert site.walk() == {} and agent.pipeline.rollout is None
    assert agent.scorer.bundle.ident == "test-model/1"


def test_a_person_pauses_resumes_advances_and_aborts_from_the_cli_and_the_api(
        site: Site) -> None:
    site.stages = {"shadow_hold_s": 1.5, "canary": [{"share": 0.05, "hold_s": 600.0},
                                                    {"share": 0.2, "hold_s": 600.0},
                                                    {"share": 0.5, "hold_s": 600.0}]}
    agent = site.start()
    events = Client(site.broker.port, subscribe=[EVENTS])
    stream = Streamer(site.broker.port)
    stream.start()
    try:
        site.candidate()
        wait_until(lambda: (site.state / "models/test-model" / WALK_FILE).exists(),
                   what="the walk started")
        r = httpx.post(f"http://127.0.0.1:{site.api_port}/api/models/test-model/rollout/pause")
        assert r.status_code == 401  # changes need a token
        r = site.api("pause", reason="look first")
        assert r.status_code == 200 and r.json()["walk"]["paused_by"] == "ana"
        # The agent took the step in before the API answered: no poll to wait for.
        assert site.metric("forewarn_rollout_paused") == 1
        assert agent.lifecycle is not None and agent.lifecycle.walker is not None
        shown = agent.lifecycle.snapshot()["walk"]
        assert (shown["paused"], shown["paused_by"]) == (True, "ana")
        time.sleep(2.5)  # longer than the whole shadow hold
        walk = site.walk()
        assert (walk["stage"], walk["paused"], walk["paused_by"]) == (0, True, "ana")
        assert walk["held_s"] < 1.5
        assert "resumed" in site.cli("rollout", "resume", "test-model", "--reason", "looked")
        wait_until(lambda: site.walk().get("stage") == 1, what="shadow passed after the resume")
        out = site.cli("rollout", "advance", "test-model")
        assert "advanced (canary-5 -> canary-20)" in out
        wait_until(lambda: agent.pipeline.rollout is not None
                   and agent.pipeline.rollout.share == 0.2, what="the agent on 20 %")
        r = site.api("advance")
        assert r.status_code == 200 and r.json()["walk"]["label"] == "canary 50 %"
        assert agent.pipeline.rollout is not None and agent.pipeline.rollout.share == 0.5
        r = site.api("resume")
        assert r.status_code == 409 and "not paused" in r.json()["detail"]
        site.cli("rollout", "abort", "test-model", "--reason", "wrong sensor map")
        wait_until(lambda: agent.pipeline.rollout is None, what="the candidate stopped")
    finally:
        stream.stop()
    reg = agent.registry
    assert reg is not None
    assert (reg.pointers("test-model").active, reg.pointers("test-model").candidate) == ("1", None)
    assert "aborted: wrong sensor map" in site.cli("rollout", "status", "test-model")
    assert site.rollout_audit() == [
        ("agent", "started"), ("ana", "paused"), ("cli:ana", "resumed"), ("rollout", "passed"),
        ("cli:ana", "advanced"), ("ana", "advanced"), ("ana", "resume"), ("cli:ana", "aborted")]
    refused = [e for e in site.audit() if e["action"] == "model.rollout.resume"]
    assert refused[0]["details"]["result"] == "refused"
    wait_until(lambda: site.metric("forewarn_rollout_rollbacks_total", {"reason": "aborted"})
               == 1, what="the abort counted")
    wait_until(lambda: len(_events(events)) >= 7, what="seven rollout events")
    told = [(e["event"], e["actor"]) for e in _events(events)]
    events.close()
    assert told == [("started", "agent"), ("paused", "ana"), ("resumed", "cli:ana"),
                    ("passed", "rollout"), ("advanced", "cli:ana"), ("advanced", "ana"),
                    ("aborted", "cli:ana")]
    assert verify(site.state / "audit.jsonl").ok


def test_a_restart_mid_stage_resumes_the_stage_and_its_hold(site: Site) -> None:
    site.stages = {"shadow_hold_s": 1.0, "canary": [{"share": 0.05, "hold_s": 1.0},
                                                    {"share": 0.2, "hold_s": 600.0},
                                                    {"share": 0.5, "hold_s": 1.0}]}
    agent = site.start()
    stream = Streamer(site.broker.port)
    stream.start()
    try:
        site.candidate()
        wait_until(lambda: site.walk().get("stage") == 2, timeout=30, what="canary 20 %")
        time.sleep(1.5)
        agent.stop()
        held = site.walk()["held_s"]
        assert site.walk()["stage"] == 2 and held >= 1.0  # the hold run so far was kept
        site.agent = None
        agent = site.start()
        wait_until(lambda: site.walk()["history"][-1]["event"] == "restored",
                   what="the walk restored")
        walk = site.walk()
        assert walk["stage"] == 2 and walk["held_s"] >= held and walk["status"] == "running"
        wait_until(lambda: agent.pipeline.rollout is not None, what="the candidate back")
        rollout = agent.pipeline.rollout
        assert rollout is not None and (rollout.mode, rollout.share) == ("canary", 0.2)
        t0 = time.time()
        wait_until(lambda: {w.asset for w in site.rec.between(t0, time.time())
                            if w.model == "test-model/2"} == on_candidate(0.2),
                   what="the 20 % assets on the candidate again")
        assert site.api("advance").status_code == 200  # the resumed walk goes on to the end
        reg = agent.registry
        assert reg is not None
        wait_until(lambda: reg.pointers("test-model").active == "2", timeout=30,
                   what="promoted after the restart")
        wait_until(lambda: site.walk()["status"] == "promoted", what="the walk closed")
    finally:
        stream.stop()
    assert [a for _, a in site.rollout_audit()] == [
        "started", "passed", "passed", "restored", "advanced", "promoted"]
