"""Model lifecycle in a running agent: hot swap under a live stream, canary rollbacks."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from edge.app import Agent
from edge.core.audit import verify
from edge.models.infer import ScoredWindow
from tests.agentkit import Client, agent_config, wait_until
from tests.bundlefactory import make_bundle
from tests.conftest import Broker


class Recorder:
    def __init__(self) -> None:
        self.windows: list[ScoredWindow] = []
        self.lock = threading.Lock()

    def on_scores(self, windows: list[ScoredWindow]) -> None:
        with self.lock:
            self.windows.extend(windows)


def start_agent(tmp_path: Path, port: int, **bundle_cfg: object) -> tuple[Agent, Recorder, Path]:
    models = tmp_path / "models"
    v1, pub = make_bundle(models, signals=["a", "b"], window=4, version="1", warning=50.0)
    cfg = agent_config(tmp_path / "state", v1, pub, port,
                       bundle={"name": "test-model", "registry_poll_s": 0.1, **bundle_cfg})
    agent = Agent(cfg)
    rec = Recorder()
    agent.pipeline.sinks.append(rec)
    agent.start()
    wait_until(agent.conn.connected.is_set, what="agent connected")
    return agent, rec, models


def stream(port: int, assets: list[str], n: int, value: float = 10.0,
           delay: float = 0.0) -> int:
    c = Client(port)
    sent = 0
    try:
        for t in range(n):
            if delay:
                time.sleep(delay)
            for asset in assets:
                c.publish(f"forewarn/site1/{asset}", {"ts": 1_700_000_000 + t,
                                                      "values": {"a": value, "b": 1.0}})
            sent += 1
    finally:
        c.close()
    return sent


def test_promote_swaps_models_at_a_window_boundary_without_losing_a_window(
        tmp_path: Path, mosquitto: Broker) -> None:
    agent, rec, models = start_agent(tmp_path, mosquitto.port)
    try:
        v2, _ = make_bundle(models, signals=["a", "b"], window=4, version="2", warning=50.0)
        assert agent.registry is not None
        agent.registry.install(v2, actor="test")
        n = 400
        box: dict[str, int] = {}
        t = threading.Thread(target=lambda: box.update(sent=stream(mosquitto.port, ["m"], n,
                                                                       delay=0.005)))
        t.start()
        wait_until(lambda: len(rec.windows) > 50, what="some windows on v1")
        agent.registry.promote("test-model", "2", actor="test")
        t.join(60)
        wait_until(lambda: len(rec.windows) >= n - 3, what="every window scored")
    finally:
        agent.stop()
    ends = [w.ts for w in rec.windows]
    assert len(ends) == len(set(ends)) == n - 3  # none lost, none twice (window 4, hop 1)
    models_seen = [w.model for w in sorted(rec.windows, key=lambda w: w.ts)]
    switch = models_seen.index("test-model/2")
    assert set(models_seen[:switch]) == {"test-model/1"}
    assert set(models_seen[switch:]) == {"test-model/2"}
    assert 0 < switch < len(models_seen)
    ok, _, _, reason = verify(tmp_path / "state" / "audit.jsonl")
    assert ok, reason
    assert agent.metrics.registry.get_sample_value("forewarn_model_swaps_total") == 1


def _canary_rollback(tmp_path: Path, port: int, candidate: Path, **cfg: object) -> Agent:
    agent, rec, _ = start_agent(tmp_path, port, rollout="canary", canary_share=0.5,
                                canary_min_windows=20, **cfg)
    assert agent.registry is not None
    agent.registry.install(candidate, actor="test")
    agent.registry.set_candidate("test-model", candidate.name, actor="test")
    wait_until(lambda: agent.pipeline.rollout is not None, what="candidate running")
    assets = [f"m{i}" for i in range(8)]
    n = 120
    try:
        stream(port, assets, n)
        wait_until(lambda: agent.lifecycle is not None and agent.lifecycle.rollbacks,
                   timeout=30, what="automatic rollback")
        wait_until(lambda: len(rec.windows) >= len(assets) * (n - 3), timeout=30,
                   what="every window scored")
    finally:
        agent.stop()
    # Nothing lost: each asset's windows scored once, by whichever model.
    keys = [(w.asset, w.ts) for w in rec.windows]
    assert len(keys) == len(set(keys)) == len(assets) * (n - 3)
    assert agent.registry.pointers("test-model").candidate is None
    assert agent.registry.pointers("test-model").active == "1"
    return agent


def test_canary_that_outputs_nan_is_rolled_back(tmp_path: Path, mosquitto: Broker) -> None:
    bad, _ = make_bundle(tmp_path / "models", signals=["a", "b"], window=4, version="nan",
                         nan=True)
    agent = _canary_rollback(tmp_path, mosquitto.port, bad)
    assert agent.lifecycle is not None
    assert agent.lifecycle.rollbacks[0]["rule"] == "error_rate"
    assert agent.metrics.registry.get_sample_value(
        "forewarn_canary_rollbacks_total", {"rule": "error_rate"}) == 1
    log = (tmp_path / "state" / "audit.jsonl").read_text()
    assert "automatic rollback" in log


def test_slow_canary_is_rolled_back(tmp_path: Path, mosquitto: Broker) -> None:
    slow, _ = make_bundle(tmp_path / "models", signals=["a", "b"], window=4, version="slow",
                          slow_matmuls=20)
    agent = _canary_rollback(tmp_path, mosquitto.port, slow, canary_p99_bound_s=0.03)
    assert agent.lifecycle is not None
    assert agent.lifecycle.rollbacks[0]["rule"] == "latency_p99"
