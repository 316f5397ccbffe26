"""deploy/mosquitto/cloud-acl on a real Mosquitto: appliances write only their own
report topic, the fleet's account only reads (through its shared subscription).

Denials are read from MQTT 5 reason codes (PUBACK 0x87 Not authorized; a refused
subscription is a SUBACK 0x87 or, from Mosquitto 2.0, a dropped connection), so no
test waits for something not to arrive.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleet.service import FleetService
from tests.agentkit import wait_until
from tests.conftest import REPO, Broker, start_mosquitto
from tests.fleetkit import appliance, drift_body, fleet_config

ACL = REPO / "deploy" / "mosquitto" / "cloud-acl"
PASSWORDS = {"s-01": "site-one-password", "s-02": "site-two-password",
             "forewarn-fleet": "fleet-password-123"}
NOT_AUTHORIZED = 0x87


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Broker]:
    exe = shutil.which("mosquitto_passwd")
    if exe is None:
        pytest.fail("mosquitto_passwd missing (apt-get install -y mosquitto)")
    etc = tmp_path / "cloud-etc"
    etc.mkdir()
    shutil.copy(ACL, etc / "acl")
    for i, (user, pw) in enumerate(PASSWORDS.items()):
        subprocess.run([exe, *(["-c"] if i == 0 else []), "-b", str(etc / "passwd"), user, pw],
                       check=True, capture_output=True)
    broker = start_mosquitto(tmp_path / "cloud", f"allow_anonymous false\n"
                             f"password_file {etc / 'passwd'}\nacl_file {etc / 'acl'}\n")
    try:
        yield broker
    finally:
        broker.stop()


class V5:
    """An MQTT 5 client that records PUBACK and SUBACK reason codes."""

    def __init__(self, port: int, user: str | None, client_id: str) -> None:
        self.pubacks: dict[int, int] = {}
        self.subacks: list[int] = []
        self.got: list[str] = []
        self.connected = threading.Event()
        self.dropped = threading.Event()
        self.refused: int | None = None
        c = self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                 protocol=mqtt.MQTTv5)
        if user:
            c.username_pw_set(user, PASSWORDS[user])
        c.on_connect = self._on_connect
        c.on_publish = lambda _c, _u, mid, rc, _p: self.pubacks.__setitem__(mid, rc.value)
        c.on_subscribe = lambda _c, _u, _m, rcs, _p: self.subacks.extend(r.value for r in rcs)
        c.on_message = lambda _c, _u, msg: self.got.append(msg.topic)
        c.on_disconnect = lambda *_: self.dropped.set()
        c.connect("127.0.0.1", port)
        c.loop_start()

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self.refused = rc.value
        else:
            self.connected.set()

    def publish(self, topic: str) -> int:
        mid = self.c.publish(topic, b"{}", qos=1).mid
        wait_until(lambda: mid in self.pubacks, what=f"PUBACK for {topic}")
        return self.pubacks[mid]

    def subscribe(self, topic: str) -> int:
        """The SUBACK reason code; NOT_AUTHORIZED when the broker dropped us instead."""
        n = len(self.subacks)
        self.c.subscribe(topic, qos=1)
        wait_until(lambda: len(self.subacks) > n or self.dropped.is_set(),
                   what=f"SUBACK for {topic}")
        return self.subacks[n] if len(self.subacks) > n else NOT_AUTHORIZED

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def connected(port: int, user: str | None, client_id: str) -> V5:
    c = V5(port, user, client_id)
    wait_until(lambda: c.connected.is_set() or c.refused is not None, what="CONNACK")
    return c


def test_the_fleet_reads_reports_through_its_shared_subscription(
        tmp_path: Path, cloud: Broker) -> None:
    pw = tmp_path / "fleet-password"
    pw.write_text(PASSWORDS["forewarn-fleet"])
    site_pw = tmp_path / "s-01-password"
    site_pw.write_text(PASSWORDS["s-01"])
    cfg = fleet_config(tmp_path / "fleet", cloud.port, enrol=tmp_path / "enrol",
                       broker={"host": "127.0.0.1", "port": cloud.port,
                               "client_id": "fleet-1", "username": "forewarn-fleet",
                               "password_file": str(pw)})
    app = appliance(tmp_path / "site", "s-01", cloud.port, protocol="5", username="s-01",
                    password_file=site_pw)
    app.enrol(tmp_path / "enrol")
    svc = FleetService(cfg)
    svc.start()
    try:
        wait_until(svc.collector.subscribed.is_set, what="fleet subscribed")
        app.drift().put(drift_body("s-01", 0))
        app.uplink.start()
        wait_until(lambda: len(svc.store.reports("s-01")) == 1, what="report stored")
    finally:
        app.uplink.stop()
        svc.stop()


def test_an_appliance_writes_only_its_own_topic_and_reads_nothing(cloud: Broker) -> None:
    s1 = connected(cloud.port, "s-01", "acl-s-01")
    try:
        assert s1.publish("forewarn/s-01/drift") < 0x80  # 0x10: no subscribers yet
        assert s1.publish("forewarn/s-02/drift") == NOT_AUTHORIZED  # forging another site
        assert s1.publish("forewarn/s-01/alerts") == NOT_AUTHORIZED
        assert s1.subscribe("forewarn/+/drift") == NOT_AUTHORIZED
    finally:
        s1.close()
    # Not checked here: Mosquitto 2.0.11 grants a *shared* subscription without the
    # ACL (docs/fleet.md, "Cloud broker ACL"); delivery to it is still refused.


def test_the_fleet_account_is_read_only(cloud: Broker) -> None:
    fleet = connected(cloud.port, "forewarn-fleet", "acl-fleet")
    try:
        assert fleet.subscribe("$share/fleet/forewarn/+/drift") == 1  # granted QoS 1
        assert fleet.publish("forewarn/s-01/drift") == NOT_AUTHORIZED
    finally:
        fleet.close()


def test_anonymous_clients_are_refused(cloud: Broker) -> None:
    anon = connected(cloud.port, None, "acl-anon")
    try:
        assert anon.refused is not None and not anon.connected.is_set()
    finally:
        anon.close()
