"""A real agent's cloud link is down while it keeps producing reports; when the link
returns, the fleet service stores the whole backlog in order, every report verified
against the key the agent generated on its first start (enrolled through the CLI).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from edge.app import Agent
from fleet.service import FleetService
from tests.agentkit import agent_config, wait_until
from tests.conftest import REPO, Broker, start_mosquitto
from tests.faults.conftest import Publisher, Stream, report
from tests.fleetkit import fleet_config


def test_site_offline_reappears_with_its_backlog_in_order(
        tmp_path: Path, mosquitto: Broker, drift_bundle: tuple[Path, Path]) -> None:
    cloud = start_mosquitto(tmp_path / "cloud")
    cfg = agent_config(
        tmp_path / "state", *drift_bundle, mosquitto.port, api={"enabled": False},
        drift={"interval_windows": 20},
        egress={"enabled": True, "site_id": "s-20", "k": 20, "health_interval_s": 0.5,
                "cloud": {"host": "127.0.0.1", "port": cloud.port, "protocol": "5",
                          # The collector (1 s) must be back on its shared subscription
                          # before the uplink drains: Mosquitto queues nothing for a shared
                          # group with no member connected (docs/fleet.md).
                          "reconnect_min_s": 5, "reconnect_max_s": 5, "ack_timeout_s": 2}})
    cfg_path = tmp_path / "agent.toml"
    from tests.faults.conftest import toml

    cfg_path.write_text(toml(cfg.model_dump(mode="json", exclude_none=True)))
    # Enrolment as central IT does it: the appliance prints its public key.
    out = subprocess.run([sys.executable, "-m", "edge.cli", "egress", "pubkey", "--config",
                          str(cfg_path)], capture_output=True, text=True, cwd=REPO,
                         check=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.stdout.startswith("-----BEGIN PUBLIC KEY-----") and "s-20" in out.stderr
    (tmp_path / "enrol").mkdir()
    (tmp_path / "enrol" / "s-20.pub").write_text(out.stdout)
    # The fleet's persistent session exists before the outage (the broker keeps it).
    fleet = FleetService(fleet_config(tmp_path / "fleet", cloud.port, enrol=tmp_path / "enrol"))
    fleet.start()
    wait_until(fleet.collector.subscribed.is_set, what="fleet subscribed")
    cloud.stop()  # the site is offline from its start
    agent = Agent(cfg)
    agent.start()
    pub = Publisher(mosquitto.port, "offline-pub")
    try:
        wait_until(agent.conn.connected.is_set, what="agent connected")
        stream = Stream(pub, "pump-1", 100.0, lambda i: 10.0 + (i % 7) / 10).start()
        assert agent.outbox is not None
        # Health reports come every 0.5 s; a drift report needs 20 scored windows, which
        # a loaded machine can take longer to score than 12 health reports take to queue.
        reg = agent.metrics.registry
        wait_until(lambda: agent.outbox is not None and agent.outbox.depth() >= 12
                   and (reg.get_sample_value("forewarn_drift_intervals_total") or 0) >= 2,
                   timeout=60, what="a backlog of health and drift reports in the outbox")
        stream.stop()
        time.sleep(1.0)
        backlog = agent.outbox.depth()
        cloud.restart()
        wait_until(lambda: agent.outbox is not None and agent.outbox.depth() == 0,
                   timeout=60, what="outbox drained")
        sealer = agent.sealer
        assert sealer is not None
        last = sealer.sequence.last
        wait_until(lambda: len(fleet.store.reports("s-20", limit=10_000)) >= last,
                   timeout=30, what="every report stored")
    finally:
        pub.close()
        agent.stop()
    try:
        time.sleep(1.0)
        rows = sorted(fleet.store.reports("s-20", limit=10_000), key=lambda r: r.received)
        kinds = {r.kind for r in rows}
        refused = fleet.metrics.registry.get_sample_value(
            "forewarn_fleet_reports_refused_total", {"reason": "bad_signature"})
    finally:
        fleet.stop()
        cloud.stop()
    seqs = [r.seq for r in rows]
    report("site offline", injected="cloud link down while the agent reported",
           backlog=backlog, stored=len(rows), last_seq=last, kinds=sorted(kinds))
    assert kinds == {"drift", "health"}
    # every number from 1, none missing, in the order the site numbered them (health
    # reports kept coming after the drain: more than the backlog may be stored)
    assert len(seqs) >= last >= backlog
    assert seqs == list(range(1, len(seqs) + 1))
    assert refused == 0
