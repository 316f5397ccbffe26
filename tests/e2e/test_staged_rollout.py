"""A health-gated staged rollout with ansible-playbook across several local appliances.

Four real agents (each its own state directory, registry and appliance key) score
a live stream from a real Mosquitto and send signed health reports every 0.5 s to
the fleet service (real collector, SQLite, HTTP API). `rollout-bundle.yml` runs
against them with ``ansible_connection=local`` in stages (1, 1, 2 gateways of
four), and between stages asks ``/api/gate`` whether the stage has been healthy on
the new version for the hold time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge.app import Agent
from edge.egress.envelope import PUB_FILE
from edge.models.registry import Registry
from fleet.service import FleetService
from tests.agentkit import agent_config, wait_until
from tests.bundlefactory import make_bundle, tar_bundle
from tests.conftest import REPO, Broker
from tests.faults.conftest import Publisher, Stream, toml
from tests.fleetkit import TOKEN, fleet_config

PLAY = REPO / "deploy/ansible/rollout-bundle.yml"
GATEWAYS = ["gw-1", "gw-2", "gw-3", "gw-4"]
HOLD_S = 2


@dataclass
class Fleet:
    tmp: Path
    broker: Broker
    agents: dict[str, Agent]
    configs: dict[str, Path]
    pub: Path
    bundle_v2: Path
    service: FleetService

    def registry(self, gw: str) -> Registry:
        return Registry(self.tmp / gw / "models", [self.pub])

    def active(self) -> dict[str, str | None]:
        return {gw: self.registry(gw).pointers("test-model").active for gw in GATEWAYS}

    def audit(self, gw: str) -> list[dict[str, Any]]:
        lines = (self.tmp / gw / "audit.jsonl").read_text().splitlines()
        return [json.loads(x) for x in lines]

    def rollout(self, **extra: Any) -> subprocess.CompletedProcess[str]:
        exe = shutil.which("ansible-playbook")
        if exe is None:
            pytest.fail("ansible-playbook is not installed; install it with: "
                        "apt-get install -y ansible-core")
        wrapper = self.tmp / "forewarn"
        wrapper.write_text(f"#!{sys.executable}\nimport sys\nfrom edge.cli.models import main\n"
                           "sys.exit(main())\n")
        wrapper.chmod(0o755)
        token = self.tmp / "fleet-token"
        token.write_text(TOKEN + "\n")
        inventory = {"gateways": {"hosts": {gw: {
            "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
            "forewarn_site_id": gw,
            "forewarn_registry_args": ["--config", str(self.configs[gw])]}
            for gw in GATEWAYS}}}
        inv = self.tmp / "inventory.yml"
        inv.write_text(json.dumps(inventory))
        api = f"http://127.0.0.1:{self.service.cfg.api.port}"
        args = {"bundle_file": str(self.bundle_v2), "forewarn_become": False,
                "forewarn_bin": str(wrapper), "forewarn_user": "root",
                "forewarn_incoming": str(self.tmp / "incoming"),
                "fleet_url": api, "fleet_token_file": str(token),
                "rollout_hold_s": HOLD_S, "rollout_gate_timeout_s": 8,
                "rollout_gate_poll_s": 1, **extra}
        env = {**os.environ, "PYTHONPATH": str(REPO), "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_LOCALHOST_WARNING": "0", "ANSIBLE_HOST_KEY_CHECKING": "0"}
        return subprocess.run([exe, "-i", str(inv), str(PLAY), "-e", json.dumps(args)],
                              capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture
def fleet(tmp_path: Path, mosquitto: Broker) -> Iterator[Fleet]:
    models = tmp_path / "models"
    v1, pub = make_bundle(models, signals=["temp", "vib"], window=4, version="1",
                          warning=50.0)
    v2, _ = make_bundle(models, signals=["temp", "vib"], window=4, version="2",
                        warning=50.0)
    enrol = tmp_path / "enrol"
    enrol.mkdir()
    agents: dict[str, Agent] = {}
    configs: dict[str, Path] = {}
    for gw in GATEWAYS:
        cfg = agent_config(
            tmp_path / gw, v1, pub, mosquitto.port, api={"enabled": False},
            drift={"enabled": False},
            bundle={"name": "test-model", "registry_poll_s": 0.2},
            egress={"enabled": True, "site_id": gw, "health_interval_s": 0.5,
                    "cloud": {"host": "127.0.0.1", "port": mosquitto.port, "protocol": "5",
                              "reconnect_min_s": 1, "reconnect_max_s": 1,
                              "ack_timeout_s": 2}})
        configs[gw] = tmp_path / f"{gw}.toml"
        configs[gw].write_text(toml(cfg.model_dump(mode="json", exclude_none=True)))
        agents[gw] = Agent(cfg)
        shutil.copy(tmp_path / gw / PUB_FILE, enrol / f"{gw}.pub")
    service = FleetService(fleet_config(tmp_path / "fleet", mosquitto.port, enrol=enrol))
    service.start()
    pub_client = Publisher(mosquitto.port, "rollout-stream")
    stream: Stream | None = None
    try:
        wait_until(service.collector.subscribed.is_set, what="fleet subscribed")
        for a in agents.values():
            a.start()
        stream = Stream(pub_client, "pump-1", 20.0).start()
        wait_until(lambda: all(service.store.reports(gw, "health", 1) for gw in GATEWAYS),
                   timeout=30, what="a health report from every gateway")
        yield Fleet(tmp_path, mosquitto, agents, configs, pub,
                    tar_bundle(v2, tmp_path / "test-model-2.tar.gz", "test-model/2"), service)
    finally:
        if stream:
            stream.stop()
        pub_client.close()
        for a in agents.values():
            a.stop()
        service.stop()


def _promoted_at(f: Fleet, gw: str) -> float:
    return next(float(e["ts"]) for e in f.audit(gw)
                if e["action"] == "model.promote" and e["details"].get("version") == "2")


def test_a_healthy_bundle_goes_out_in_gated_stages(fleet: Fleet) -> None:
    r = fleet.rollout()
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert fleet.active() == dict.fromkeys(GATEWAYS, "2")
    # the running agents follow the registry: their health reports say version 2
    wait_until(lambda: all(json.loads(fleet.service.store.reports(gw, "health", 1)[0].body)
                           ["models"][0]["version"] == "2" for gw in GATEWAYS),
               what="every agent reports version 2")
    # 5 %, 20 %, 50 %, 100 % of four gateways: stages of 1, 1 and 2, and a stage
    # starts only after the one before held for the hold time
    at = {gw: _promoted_at(fleet, gw) for gw in GATEWAYS}
    assert at["gw-2"] - at["gw-1"] >= HOLD_S
    assert at["gw-3"] - at["gw-2"] >= HOLD_S and at["gw-4"] - at["gw-2"] >= HOLD_S
    assert abs(at["gw-4"] - at["gw-3"]) < HOLD_S
    assert r.stdout.count('"ok": true') >= 3  # the gate's verdict, shown per stage


def test_a_failing_gate_rolls_the_stage_back_and_stops_the_rollout(fleet: Fleet) -> None:
    # gw-2 (the second stage) stops reporting: it never shows health on version 2
    fleet.agents["gw-2"].stop()
    r = fleet.rollout()
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "health gate failed" in out and "not on version 2" in out, out[-4000:]
    # the first stage passed its gate and keeps the new version; the second is
    # rolled back; the rest were never touched
    assert fleet.active() == {"gw-1": "2", "gw-2": "1", "gw-3": "1", "gw-4": "1"}
    assert not any(e.version == "2" for gw in ("gw-3", "gw-4")
                   for e in fleet.registry(gw).list())
    (rb,) = [e for e in fleet.audit("gw-2") if e["action"] == "model.rollback"]
    assert rb["actor"].startswith("ansible:")
    assert "health gate failed" in json.dumps(rb["details"])
