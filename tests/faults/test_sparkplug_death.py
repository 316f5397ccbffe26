"""Sparkplug B: a dead device is not scored and is shown as stale.

Injected, through a real Mosquitto into the real agent: an edge node's NDEATH,
then DDATA from its device without a new BIRTH (31 messages, as in the field
report), then the node's NBIRTH/DBIRTH and DATA again.

What must hold: no window is scored between the DEATH and the BIRTH; every value
in that gap is counted as ``after_death``; ``/api/assets`` shows the device as
stale (``stale: true``, ``stale_reason: "source_died"``) until its BIRTH.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from edge.app import Agent
from edge.ingest.proto.sparkplug_b_pb2 import Payload
from tests.agentkit import Client, agent_config, wait_until
from tests.conftest import Broker
from tests.faults.conftest import T0, report


def _spb(metrics: list[dict[str, Any]], seq: int | None, ts_ms: int) -> bytes:
    p = Payload(timestamp=ts_ms)
    if seq is not None:
        p.seq = seq
    for m in metrics:
        p.metrics.add(**m)
    return p.SerializeToString()


class Node:
    """Edge node gw1 with device motor, publishing through the real broker."""

    def __init__(self, port: int) -> None:
        self.c = Client(port)
        self.seq = 0

    def send(self, kind: str, metrics: list[dict[str, Any]], ts: float,
             device: bool = True) -> None:
        topic = f"spBv1.0/plant/{kind}/gw1" + ("/motor" if device else "")
        seq = None if kind == "NDEATH" else self.seq % 256
        self.c.publish(topic, _spb(metrics, seq, int(ts * 1000)))
        if seq is not None:
            self.seq += 1

    def birth(self, ts: float) -> None:
        self.seq = 0
        self.send("NBIRTH", [{"name": "bdSeq", "datatype": 8, "long_value": 1}], ts,
                  device=False)
        self.send("DBIRTH", [{"name": "temp", "alias": 1, "datatype": 10, "double_value": 10.0},
                             {"name": "vib", "alias": 2, "datatype": 10, "double_value": 1.0}],
                  ts)

    def data(self, ts: float) -> None:
        self.send("DDATA", [{"alias": 1, "double_value": 10.0},
                            {"alias": 2, "double_value": 1.0}], ts)


def _asset(api: str) -> dict[str, Any]:
    items = httpx.get(f"{api}/api/assets", timeout=5).json()["items"]
    return next(a for a in items if a["asset"] == "gw1.motor")


def test_data_after_death_is_not_scored_and_the_device_shows_stale(
        tmp_path: Path, mosquitto: Broker, bundle: tuple[Path, Path]) -> None:
    cfg = agent_config(tmp_path / "state", *bundle, mosquitto.port,
                       mqtt={"sparkplug": True})
    agent = Agent(cfg)
    agent.start()
    api = f"http://127.0.0.1:{cfg.api.port}"
    node = Node(mosquitto.port)
    after_death = agent.metrics.decode_errors.labels("after_death")
    try:
        wait_until(agent.conn.connected.is_set, what="agent connected")
        time.sleep(0.2)
        node.birth(T0)
        for i in range(1, 10):
            node.data(T0 + i)
        wait_until(lambda: agent.pipeline.scored_total >= 6, what="alive device scored")
        live = _asset(api)
        node.send("NDEATH", [{"name": "bdSeq", "datatype": 8, "long_value": 1}], T0 + 10,
                  device=False)
        wait_until(lambda: _asset(api)["stale"], what="device stale after NDEATH")
        dead = _asset(api)
        scored_at_death = agent.pipeline.scored_total
        for i in range(11, 42):  # 31 DDATA with no BIRTH in between
            node.data(T0 + i)
        wait_until(lambda: after_death._value.get() >= 62, what="values dropped after death")
        scored_in_gap = agent.pipeline.scored_total - scored_at_death
        node.birth(T0 + 42)
        for i in range(43, 52):
            node.data(T0 + i)
        wait_until(lambda: agent.pipeline.scored_total - scored_at_death >= 6,
                   what="scored again after the BIRTH")
        reborn = _asset(api)
    finally:
        node.c.close()
        agent.stop()
    report("sparkplug death", injected="NDEATH, then 31 DDATA without BIRTH, then BIRTH",
           windows_scored_in_gap=scored_in_gap, values_dropped_after_death=after_death._value.get(),
           shown_while_dead=f"stale={dead['stale']} reason={dead['stale_reason']} "
                            f"freshness={dead['freshness']}", lost=0)
    assert live["stale"] is False and live["stale_reason"] is None
    assert dead["stale"] is True and dead["stale_reason"] == "source_died"
    assert dead["freshness"] == "stale"
    assert scored_in_gap == 0
    assert after_death._value.get() == 62  # 31 messages x 2 values, each counted
    assert reborn["stale"] is False and reborn["freshness"] == "fresh"
