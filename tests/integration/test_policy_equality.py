"""The deployed alert behaviour is the evaluated one.

A C-MAPSS FD001 bundle is trained here (small and fast) with a non-default alert
rule (k=2 of n=3, clear after 2) in its training config. The same labelled test
engines are replayed (a) through ``forewarn evaluate --bundle ... --json`` and (b)
live, one MQTT message per cycle, through a real Mosquitto into a real agent
process whose config sets no alert rule; the agent's alert events (MQTT) open,
escalate and clear at the same window timestamps as the evaluation's, window for
window. Then the policy in a running agent: a schema 2 bundle keeps the old
defaults, a promoted bundle brings its own policy, a config override is applied
only when set, and a promoted bundle the override contradicts is refused.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.alerts.rules import RuleSpec
from edge.app import Agent
from edge.models.bundle import load_bundle
from edge.models.infer import Scorer
from tests.agentkit import Client, agent_config, wait_until
from tests.bundlefactory import make_bundle
from tests.conftest import Broker, TrainedBundle, free_port
from trainer.bulkfeed import replay
from trainer.cmapss import load_cmapss
from trainer.evaljson import event_json
from trainer.evaluate import _padded

REPO = Path(__file__).resolve().parents[2]
FD001 = REPO / "trainer" / "configs" / "cmapss_fd001.toml"
RULE = "[alerts]\nk = 2\nn = 3\nclear_after = 2\ncooldown_s = 0.0\n"


@pytest.fixture(scope="module")
def policy_bundle(tmp_path_factory: pytest.TempPathFactory) -> TrainedBundle:
    """FD001 with 30 trees at a high learning rate (~8 s) and the k=2 n=3 clear_after=2
    rule in the training config's [alerts]."""
    from edge.models.signing import generate_keypair
    from trainer.cli import train_from_config

    root = tmp_path_factory.mktemp("policy")
    generate_keypair(root / "k.key", root / "k.pub")
    text = FD001.read_text()
    alerts = re.search(r"\[alerts\]\n(?:#.*\n)*(?:\w+ = .*\n)+", text)
    assert alerts is not None and "n_estimators = " in text
    text = (text.replace(alerts.group(0), RULE)
            .replace("n_estimators = ", "n_estimators = 30 #")
            .replace("learning_rate = ", "learning_rate = 0.3 #"))
    (root / "policy.toml").write_text(text)
    path = train_from_config(root / "policy.toml", root / "models", root / "k.key",
                             version="p1", progress=None)
    return TrainedBundle(path, root / "k.pub")


Event = tuple[str, str, float]  # (event, severity, data_ts)


def _evaluate_events(bundle: TrainedBundle, out: Path) -> dict[str, Any]:
    run = subprocess.run([sys.executable, "-m", "edge.cli", "evaluate", "--bundle",
                          str(bundle.path), "--key", str(bundle.public_key), "--json",
                          str(out)], capture_output=True, text=True, timeout=300,
                         check=False, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert "k=2 n=3 clear_after=2 cooldown_s=0" in run.stdout
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def _toml(d: dict[str, Any]) -> str:
    lines = [f"{k} = {json.dumps(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for k, v in d.items():
        if isinstance(v, dict):
            lines += [f"[{k}]", *(f"{kk} = {json.dumps(vv)}" for kk, vv in v.items())]
    return "\n".join(lines) + "\n"


@pytest.fixture
def agent_process(tmp_path: Path, mosquitto: Broker, policy_bundle: TrainedBundle
                  ) -> Iterator[tuple[str, Path]]:
    """``forewarn agent`` as its own process; no [alerts] rule in its config."""
    port = free_port()
    cfg = {"site": "site1", "state_dir": str(tmp_path / "state"), "log_level": "INFO",
           "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "client_id": "agent-policy"},
           "bundle": {"path": str(policy_bundle.path),
                      "trusted_keys": [str(policy_bundle.public_key)]},
           "api": {"host": "127.0.0.1", "port": port},
           "storage": {"flush_interval_s": 0.2}}
    (tmp_path / "agent.toml").write_text(_toml(cfg))
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "agent", "--config",
                                 str(tmp_path / "agent.toml")], stdout=out,
                                stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(lambda: up() or proc.poll() is not None, 60, "agent process up")
        assert proc.poll() is None, log.read_text()
        wait_until(lambda: "subscribed to" in log.read_text(), 10, "agent subscribed")
        yield base, log
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _scored(base: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=2).text.splitlines():
        if line.startswith("forewarn_windows_scored_total "):
            return float(line.split()[1])
    return 0.0


def test_evaluate_and_the_live_agent_raise_the_same_alerts_window_for_window(
        tmp_path: Path, mosquitto: Broker, policy_bundle: TrainedBundle,
        agent_process: tuple[str, Path]) -> None:
    base, log = agent_process
    bundle = load_bundle(policy_bundle.path, [policy_bundle.public_key])
    m = bundle.manifest
    assert m.schema_version == 3 and m.alert_policy is not None
    assert m.alert_policy.rule() == {"k": 2, "n": 3, "clear_after": 2, "cooldown_s": 0.0}
    # The crew page's model card reads the rule the agent applies.
    assert httpx.get(f"{base}/api/model", timeout=5).json()["alert_rule"] == m.alert_policy.rule()

    # (a) forewarn evaluate --bundle: every official test engine, the events as JSON.
    doc = _evaluate_events(policy_bundle, tmp_path / "eval.json")
    assert doc["alert_rule"]["k"] == 2 and doc["alert_rule"]["clear_after"] == 2
    evaluated = {a["asset"]: a for a in doc["assets"]}
    assert len(evaluated) == 100
    # The engines whose alerts open, clear and open again (the rule shows), one that
    # escalates without clearing, one without any alert.
    cleared = [a for a, r in evaluated.items()
               if "auto_cleared" in [e["event"] for e in r["events"]]][:3]
    assert cleared, "no evaluated alert clears: the test would not see clear_after"
    escalated = next(a for a, r in evaluated.items() if a not in cleared
                     and "escalated" in [e["event"] for e in r["events"]])
    quiet = next(a for a, r in evaluated.items() if not r["events"])
    assets = [*cleared, escalated, quiet]

    # (b) the same series, live: one message per cycle through Mosquitto to the agent.
    test = {f"engine-{u.unit:03d}": u for u in load_cmapss("FD001").test}
    series = [_padded(test[a].unit, test[a].signals(m.signal_names), m.window, m.hop,
                      m.sample_period_s) for a in assets]
    watcher = Client(mosquitto.port, ["forewarn/site1/events/+"])
    pub = Client(mosquitto.port)
    try:
        for s in series:
            for j in range(len(s.ts)):
                pub.publish(f"forewarn/site1/{s.asset}", {
                    "ts": float(s.ts[j]),
                    "values": {n: float(s.values[i, j])
                               for i, n in enumerate(m.signal_names)}})
        windows = sum(evaluated[a]["windows"] for a in assets)
        wait_until(lambda: _scored(base) >= windows, 60, f"{windows} windows scored")
        expected = {a: [(e["event"], e["severity"], e["data_ts"])
                        for e in evaluated[a]["events"]] for a in assets}
        n_events = sum(len(v) for v in expected.values())

        def live() -> dict[str, list[dict[str, Any]]]:
            out: dict[str, list[dict[str, Any]]] = {a: [] for a in assets}
            with watcher.lock:
                for topic, msgs in watcher.received.items():
                    for e in map(json.loads, msgs):
                        if e["kind"] == "model":  # limit alerts are not the rule's
                            out[topic.rsplit("/", 1)[1]].append(e)
            return out

        wait_until(lambda: sum(len(v) for v in live().values()) >= n_events, 20,
                   f"{n_events} alert events from the agent")
        time.sleep(0.5)  # and no more than those
        assert _scored(base) == windows
        got = live()
        assert {a: [(e["event"], e["severity"], e["data_ts"]) for e in v]
                for a, v in got.items()} == expected
        for a in assets:
            assert [e["score"] for e in got[a]] == pytest.approx(
                [e["score"] for e in evaluated[a]["events"]], abs=1e-3)
    finally:
        pub.close()
        watcher.close()
    text = log.read_text()
    assert "k=2 n=3 clear_after=2 cooldown_s=0" in text and "from its alert_policy" in text
    assert "the agent config overrides" not in text

    # The check can fail: the old 1-of-1 rule on the same scores gives other events.
    legacy = RuleSpec.from_manifest(m.model_copy(update={"alert_policy": None,
                                                          "schema_version": 2}))
    old = {r.asset: [(e["event"], e["severity"], e["data_ts"])
                     for e in map(event_json, r.events)]
           for r in replay(bundle, Scorer(bundle), legacy, series)}
    assert old != expected


# -- the policy in a running agent -------------------------------------------------

def _publish(c: Client, asset: str, t0: int, values: list[float]) -> None:
    for i, v in enumerate(values):
        c.publish(f"forewarn/site1/{asset}", {"ts": 1_700_000_000 + t0 + i,
                                              "values": {"a": v, "b": 1.0}})


def test_a_promoted_bundle_brings_its_policy_and_an_override_stays_on_top(
        tmp_path: Path, mosquitto: Broker, caplog: pytest.LogCaptureFixture) -> None:
    models = tmp_path / "models"
    # v1: a schema 2 bundle (no alert_policy): the old 1-of-1 rule.
    v1, pub = make_bundle(models, signals=["a", "b"], window=2, version="1", warning=50.0)
    cfg = agent_config(tmp_path / "state", v1, pub, mosquitto.port,
                       bundle={"name": "test-model", "registry_poll_s": 0.1},
                       alerts={"cooldown_s": 0.0})
    caplog.set_level(logging.INFO, logger="edge.app")
    agent = Agent(cfg)
    agent.start()
    c = Client(mosquitto.port)
    try:
        wait_until(agent.conn.connected.is_set, what="agent connected")
        r = agent.alerts.rules
        assert (r.k, r.n, r.clear_after) == (1, 1, 3)
        assert "the legacy defaults (schema_version 2 bundle without alert_policy)" \
            in caplog.text and "overrides alerts.cooldown_s=0" in caplog.text
        # v2 (schema 3): open on 3 of 4 windows, clear after 1.
        v2, _ = make_bundle(models, signals=["a", "b"], window=2, version="2", warning=50.0,
                            policy={"k": 3, "n": 4, "clear_after": 1, "cooldown_s": 60.0})
        assert agent.registry is not None
        agent.registry.install(v2, actor="test")
        agent.registry.promote("test-model", "2", actor="test")
        wait_until(lambda: agent.alerts.rules.k == 3, what="v2's policy applied")
        r = agent.alerts.rules
        # The config's explicit cooldown_s = 0 still wins over the bundle's 60.
        assert (r.n, r.clear_after, r.cooldown_s) == (4, 1, 0.0)
        # One high reading breaches two windows (window 2): 2 of 4, no alert under v2.
        _publish(c, "m1", 0, [10.0, 10.0, 100.0, 10.0, 10.0, 10.0])
        wait_until(lambda: agent.pipeline.scored_total >= 5, what="windows scored")
        assert agent.alert_store.unresolved() == []
        _publish(c, "m1", 6, [100.0, 100.0, 100.0])  # 3 of 4: opens
        wait_until(lambda: agent.alert_store.unresolved(), what="alert under v2's rule")
    finally:
        c.close()
        agent.stop()


def test_a_promoted_bundle_the_config_override_contradicts_is_refused(
        tmp_path: Path, mosquitto: Broker, caplog: pytest.LogCaptureFixture) -> None:
    models = tmp_path / "models"
    policy = {"k": 2, "n": 4, "clear_after": 2, "cooldown_s": 0.0}
    v1, pub = make_bundle(models, signals=["a", "b"], window=2, version="1", warning=50.0,
                          policy=policy)
    cfg = agent_config(tmp_path / "state", v1, pub, mosquitto.port,
                       bundle={"name": "test-model", "registry_poll_s": 0.1},
                       alerts={"k": 3})
    agent = Agent(cfg)
    agent.start()
    try:
        wait_until(agent.conn.connected.is_set, what="agent connected")
        assert (agent.alerts.rules.k, agent.alerts.rules.n) == (3, 4)
        v2, _ = make_bundle(models, signals=["a", "b"], window=2, version="2", warning=50.0,
                            policy={**policy, "n": 2})
        assert agent.registry is not None
        agent.registry.install(v2, actor="test")
        agent.registry.promote("test-model", "2", actor="test")
        wait_until(lambda: "not switching to test-model/2" in caplog.text,
                   what="v2 refused")
        assert "alerts.k=3" in caplog.text and "bundle test-model/2" in caplog.text
        assert agent.scorer.bundle.ident == "test-model/1"
        assert (agent.alerts.rules.k, agent.alerts.rules.n) == (3, 4)
    finally:
        agent.stop()


def test_evaluate_takes_one_protocol_at_a_time(policy_bundle: TrainedBundle) -> None:
    run = subprocess.run([sys.executable, "-m", "edge.cli", "evaluate", "--bundle",
                          str(policy_bundle.path), "--key", str(policy_bundle.public_key),
                          "--config", str(REPO / "trainer" / "configs" / "skab_pca.toml")],
                         capture_output=True, text=True, timeout=120, check=False, cwd=REPO)
    assert run.returncode == 2 and "two protocols; give one" in run.stderr
    assert "test_rmse" not in run.stdout
