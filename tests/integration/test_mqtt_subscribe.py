"""The site link counts as up only once the broker acknowledged the subscriptions.

A real Mosquitto whose dynamic-security plugin refuses one of the agent's
filters (a SUBACK failure code; Mosquitto's plain ``acl_file`` grants every
subscription and filters on delivery instead): the refused filter is logged by
name and ``/healthz`` says so, instead of a link that looks fine while half the
readings can never arrive.
"""

from __future__ import annotations

import glob
import json
import logging
from pathlib import Path

import httpx
import pytest

from edge.app import Agent
from tests.agentkit import agent_config, wait_until
from tests.bundlefactory import make_bundle
from tests.conftest import Broker, start_mosquitto


def _broker_refusing(workdir: Path, pattern: str) -> Broker:
    """Mosquitto that refuses anonymous subscriptions to ``pattern`` and grants the rest."""
    found = sorted(glob.glob("/usr/lib/*/mosquitto_dynamic_security.so")
                   + glob.glob("/usr/lib/mosquitto_dynamic_security.so"))
    if not found:
        pytest.fail("Mosquitto's dynamic security plugin is missing (it ships in Debian's "
                    "mosquitto package)")
    workdir.mkdir(parents=True)
    dynsec = workdir / "dynamic-security.json"
    dynsec.write_text(json.dumps({
        "defaultACLAccess": {"publishClientSend": True, "publishClientReceive": True,
                             "subscribe": True, "unsubscribe": True},
        "clients": [], "anonymousGroup": "anonymous",
        "groups": [{"groupname": "anonymous", "roles": [{"rolename": "limited"}]}],
        "roles": [{"rolename": "limited", "acls": [
            {"acltype": "subscribePattern", "topic": pattern, "priority": 0,
             "allow": False}]}]}))
    return start_mosquitto(workdir, f"plugin {found[0]}\nplugin_opt_config_file {dynsec}\n")


def _healthz(port: int) -> tuple[int, str]:
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    except httpx.HTTPError:
        return 0, ""
    return r.status_code, r.text


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_a_subscription_the_broker_refuses_is_logged_and_fails_health(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, protocol: str) -> None:
    # The per-signal filter is refused, the JSON readings' one granted.
    broker = _broker_refusing(tmp_path / "b", "forewarn/site1/+/+")
    bundle, pub = make_bundle(tmp_path / "models", signals=["temp"], window=4, warning=50.0)
    cfg = agent_config(tmp_path / "state", bundle, pub, broker.port,
                       mqtt={"protocol": protocol})
    agent = Agent(cfg)
    caplog.set_level(logging.INFO, logger="edge.ingest.mqtt")
    agent.start()
    try:
        wait_until(agent.conn.connected.is_set, what="the broker's SUBACK")
        refused = set(agent.conn.refused)
        assert refused == {"forewarn/site1/+/+"}, agent.conn.refused
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        for topic in refused:
            assert any(f"refused the subscription to {topic}" in e for e in errors), errors
        assert any(r.getMessage() == "subscribed to forewarn/site1/+"
                   for r in caplog.records), [r.getMessage() for r in caplog.records]
        status, body = wait_until(lambda: (s := _healthz(cfg.api.port))[0] and s,
                                  what="/healthz answering")
        assert status == 503 and "site broker refused the subscription to" in body, body
        assert agent.status()["ok"] is False
    finally:
        agent.stop()
        broker.stop()


def test_every_filter_granted_reads_as_a_healthy_link(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    broker = start_mosquitto(tmp_path / "b")
    bundle, pub = make_bundle(tmp_path / "models", signals=["temp"], window=4, warning=50.0)
    cfg = agent_config(tmp_path / "state", bundle, pub, broker.port)
    agent = Agent(cfg)
    caplog.set_level(logging.INFO, logger="edge.ingest.mqtt")
    agent.start()
    try:
        wait_until(agent.conn.connected.is_set, what="the broker's SUBACK")
        assert agent.conn.refused == []
        assert agent.conn.health().connected
        assert agent.metrics.registry.get_sample_value("forewarn_mqtt_connected") == 1
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert any(r.getMessage().startswith("subscribed to ") for r in caplog.records)
    finally:
        agent.stop()
        broker.stop()
