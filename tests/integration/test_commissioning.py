"""Commissioning end to end: a template bundle, a real agent and Mosquitto, the learner's CLI.

An asset under a template is `learning` (API, metrics) and raises no model alert
while its limit alerts still work; `forewarn commission --once` (a child process,
as the systemd unit runs it) fits its parameters on its own first rows, verifies,
signs with the site key and installs them; the agent picks them up, scores the
asset against its own normal and alerts on an injected fault. A stuck sensor's
asset is refused as `insufficient_data` with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edge.app import Agent
from edge.core.config import parse_config
from edge.models.signing import generate_keypair
from tests.agentkit import Client, wait_until
from tests.commissionkit import REPO, ROWS, pump, train_template
from tests.conftest import Broker, free_port

T0 = 1_770_000_000
SIGNALS = ["bearing_temp_C", "flow_l_min", "vibration_mm_s"]


def toml_text(d: dict[str, Any], prefix: str = "") -> str:
    """Nested dicts of scalars and lists as TOML (enough for an agent config)."""
    scalars = [f"{k} = {json.dumps(v)}" for k, v in d.items() if not isinstance(v, dict)]
    out = ([f"[{prefix}]"] if prefix and scalars else []) + scalars
    for k, v in d.items():
        if isinstance(v, dict):
            out.append(toml_text(v, f"{prefix}.{k}" if prefix else k))
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return train_template(tmp_path_factory.mktemp("template"))


def publish(c: Client, asset: str, rows: np.ndarray, start: int) -> None:
    for i in range(rows.shape[1]):
        c.publish(f"forewarn/site1/{asset}", {"ts": T0 + start + i, "values": {
            s: round(float(rows[j, i]), 4) for j, s in enumerate(SIGNALS)}})


def _api(base: str, path: str) -> Any:
    return httpx.get(base + path, timeout=5).json()


def _asset(base: str, name: str) -> dict[str, Any]:
    return next((a for a in _api(base, "/api/commissioning")["assets"] if a["asset"] == name),
                {})


def _gauge(text: str, state: str) -> float:
    for line in text.splitlines():
        if line.startswith(f'forewarn_commissioning_assets{{state="{state}"}}'):
            return float(line.split()[-1])
    return float("nan")


def test_an_asset_learns_its_normal_then_alerts_on_a_fault(
        tmp_path: Path, mosquitto: Broker, template: tuple[Path, Path]) -> None:
    bundle, central_pub = template
    state = tmp_path / "state"
    site_key, site_pub = state / "keys" / "site.key", state / "keys" / "site.pub"
    generate_keypair(site_key, site_pub)
    raw: dict[str, Any] = {
        "site": "site1", "state_dir": str(state),
        "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "client_id": "agent-commission"},
        "bundle": {"path": str(bundle), "name": "plant-template",
                   "trusted_keys": [str(central_pub)], "site_keys": [str(site_pub)],
                   "registry_poll_s": 0.3},
        "alerts": {"k": 3, "n": 5, "clear_after": 5},  # the template's recommended rule
        "api": {"host": "127.0.0.1", "port": free_port()},
        "storage": {"flush_interval_s": 0.2},
    }
    (tmp_path / "agent.toml").write_text(toml_text(raw))
    cfg = parse_config(raw)
    base = f"http://127.0.0.1:{cfg.api.port}"
    agent = Agent(cfg)
    agent.start()
    pub = Client(mosquitto.port)
    healthy = pump(3, 400, fault_from=300)
    try:
        wait_until(agent.conn.connected.is_set, what="agent connected")
        publish(pub, "pump-9", healthy[:, :ROWS + 20], 0)
        publish(pub, "pump-stuck", pump(4, ROWS + 20, stuck_flow=True), 0)
        wait_until(lambda: _asset(base, "pump-9").get("progress") == 1.0, timeout=30,
                   what="pump-9's commissioning windows counted")
        a = _asset(base, "pump-9")
        assert a["state"] == "learning" and a["since"] == float(T0)
        assert a["reason"] == "commissioning data complete; waiting for the learner"
        rows = {r["asset"]: r for r in _api(base, "/api/assets")["items"]}
        assert rows["pump-9"]["commissioning"]["state"] == "learning"  # listed, unscored
        wait_until(lambda: _gauge(httpx.get(base + "/metrics").text, "learning") == 2.0,
                   what="forewarn_commissioning_assets{state=learning} 2")
        # Data-quality alerts work while learning: a flow far outside the training range.
        pub.publish("forewarn/site1/pump-stuck", {"ts": T0 + ROWS + 20, "values": {
            "bearing_temp_C": 46.0, "flow_l_min": 400.0, "vibration_mm_s": 2.2}})
        wait_until(lambda: agent.alert_store.unresolved(), what="limit alert while learning")
        assert {x.kind for x in agent.alert_store.unresolved()} == {"limit"}
        assert agent.pipeline.scored_total == 0  # nothing scored, so no model alert

        learner = subprocess.run(
            [sys.executable, "-m", "trainer.commission_cli", "--config",
             str(tmp_path / "agent.toml"), "--once"],
            capture_output=True, text=True, timeout=300, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        assert learner.returncode == 0, learner.stderr
        assert "pump-9: ready" in learner.stderr
        assert "pump-stuck: insufficient_data" in learner.stderr
        wait_until(lambda: _asset(base, "pump-9").get("state") == "ready",
                   what="the agent uses pump-9's parameters")
        stuck = wait_until(lambda: _asset(base, "pump-stuck").get("state")
                           == "insufficient_data" and _asset(base, "pump-stuck"),
                           what="pump-stuck refused")
        assert stuck["reason"].startswith("flow_l_min constant at 100 over its first 120 rows")
        wait_until(lambda: [_gauge(httpx.get(base + "/metrics").text, s) for s in
                            ("ready", "insufficient_data", "learning")] == [1.0, 1.0, 0.0],
                   what="the commissioning gauge: 1 ready, 1 insufficient, 0 learning")
        ready = _asset(base, "pump-9")
        assert ready["evidence"]["rows"] == ROWS and ready["evidence"]["tail_alarm_share"] <= 0.5
        entries = [json.loads(x) for x in (state / "audit.jsonl").read_text().splitlines()]
        actions = [(e["action"], e["details"].get("asset"), e["details"].get("result"))
                   for e in entries]
        assert ("model.site_params.install", "pump-9", "ok") in actions
        assert ("model.site_params.refused", "pump-stuck", "insufficient_data") in actions

        # Its own normal scores quietly; the fault opens a model alert.
        publish(pub, "pump-9", healthy[:, ROWS + 20:300], ROWS + 20)
        wait_until(lambda: agent.pipeline.scored_total >= 150, what="healthy windows scored")
        assert not [x for x in agent.alert_store.unresolved() if x.kind == "model"]
        publish(pub, "pump-9", healthy[:, 300:], 300)
        alert = wait_until(lambda: next((x for x in agent.alert_store.unresolved()
                                         if x.kind == "model"), None), timeout=30,
                           what="a model alert on the fault")
        assert alert.asset == "pump-9" and alert.data_ts >= T0 + 300
        assert "vibration_mm_s" in alert.top_signals
    finally:
        pub.close()
        agent.stop()
    # A restarted agent knows pump-9's parameters and progress at once.
    again = Agent(cfg)
    try:
        assert again.commissioning is not None
        assert again.commissioning.asset("pump-9")["state"] == "ready"
    finally:
        again.alert_store.close()
