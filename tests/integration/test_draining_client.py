"""DrainingClient and the topic quarantine against a real Mosquitto.

The client overrides paho 2.x internals (edge/ingest/draining_client.py): these
tests fail if a paho upgrade changes what it relies on.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.ingest.draining_client import DrainingClient
from edge.ingest.quarantine import TopicQuarantine
from tests.agentkit import wait_until
from tests.conftest import Broker


class _Rx:
    def __init__(self, port: int, protocol: int, qos: int, **kw: Any) -> None:
        self.got: list[tuple[str, bytes, int]] = []
        self.lock = threading.Lock()
        v5 = protocol == mqtt.MQTTv5
        self.c = DrainingClient(CallbackAPIVersion.VERSION2, client_id=f"rx-{protocol}-{qos}",
                                protocol=protocol, clean_session=None if v5 else True, **kw)
        self.c.on_message = self._on_message
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe("t/#", qos)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_message(self, c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.got.append((m.topic, m.payload, m.qos))

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _publisher(port: int) -> mqtt.Client:
    p = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="tx", protocol=mqtt.MQTTv5)
    p.max_queued_messages_set(0)
    p.connect("127.0.0.1", port)
    p.loop_start()
    return p


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311])
@pytest.mark.parametrize("qos", [0, 1])
def test_every_message_arrives_intact_in_order(mosquitto: Broker, protocol: int,
                                               qos: int) -> None:
    rx = _Rx(mosquitto.port, protocol, qos)
    tx = _publisher(mosquitto.port)
    try:
        time.sleep(0.3)
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = ("k", "v" * 300)  # a property section the client must skip
        # Sizes across buffer boundaries: tiny, around the 64 KiB read chunk, and 200 kB.
        sizes = [0, 1, 127, 128, 16_383, 16_384, 65_535, 65_536, 65_537, 200_000] * 3
        sent = [(f"t/{i % 7}/{'x' * (i % 3)}", bytes([i % 251]) * n) for i, n in
                enumerate(sizes + [50] * 3000)]
        for i, (topic, payload) in enumerate(sent):
            tx.publish(topic, payload, qos=qos, properties=props if i % 2 else None)
        wait_until(lambda: len(rx.got) >= len(sent), timeout=30, what="all messages")
        time.sleep(0.2)
        assert [(t, p) for t, p, _ in rx.got] == sent
        assert {q for _, _, q in rx.got} == {qos}
    finally:
        tx.disconnect()
        tx.loop_stop()
        rx.close()


def test_shed_topics_are_counted_acked_and_others_pass(mosquitto: Broker) -> None:
    q = TopicQuarantine(after=1, probe_every=10)
    q.rejected("t/junk")
    shed: list[int] = []
    rx = _Rx(mosquitto.port, mqtt.MQTTv5, 1, admit=q.admit, on_shed=shed.append)
    tx = _publisher(mosquitto.port)
    try:
        time.sleep(0.3)
        # More QoS 1 junk than Mosquitto's in-flight window: unacked sheds would stall it.
        for i in range(500):
            tx.publish("t/junk", b"bad", qos=1)
            tx.publish("t/good", str(i).encode(), qos=1)
        wait_until(lambda: sum(1 for t, _, _ in rx.got if t == "t/good") >= 500, timeout=30,
                   what="every good message past the shed junk")
        time.sleep(0.2)
        probes = [p for t, p, _ in rx.got if t == "t/junk"]
        assert len(probes) == 50  # 1 in probe_every still reaches the decoder
        assert sum(shed) == 450
        assert [p for t, p, _ in rx.got if t == "t/good"] == [str(i).encode()
                                                              for i in range(500)]
    finally:
        tx.disconnect()
        tx.loop_stop()
        rx.close()


def test_quarantine_lifts_on_a_good_message_and_bounds_topics() -> None:
    q = TopicQuarantine(after=3, probe_every=2, max_topics=4)
    for _ in range(3):
        q.rejected("a")
    assert not q.admit("a") and q.admit("a")
    q.accepted("a")
    assert all(q.admit("a") for _ in range(5))
    for i in range(100):  # a flood of distinct topics cannot grow the tables unbounded
        for _ in range(3):
            q.rejected(f"t{i}")
    assert q.quarantined() <= 4


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311])
def test_publishes_written_by_their_threads_arrive_whole_and_are_all_acknowledged(
        mosquitto: Broker, protocol: int) -> None:
    # send_now() writes from the publishing thread while paho's network thread also
    # writes and reads; the fast PUBACK path releases the in-flight window.
    rx = _Rx(mosquitto.port, mqtt.MQTTv5, 1)
    v5 = protocol == mqtt.MQTTv5
    tx = DrainingClient(CallbackAPIVersion.VERSION2, client_id=f"tx-now-{protocol}",
                        protocol=protocol, clean_session=None if v5 else True)
    tx.max_inflight_messages_set(20)  # most publishes queue until an ack frees a slot
    tx.max_queued_messages_set(0)
    tx.connect("127.0.0.1", mosquitto.port)
    tx.loop_start()
    infos: list[mqtt.MQTTMessageInfo] = []
    lock = threading.Lock()

    def publish(k: int) -> None:
        for i in range(600):
            # Some bigger than a socket buffer, so a write stops part-way.
            payload = f"{k}:{i}:".encode() + b"p" * (300_000 if i % 97 == 0 else i % 50)
            info = tx.publish(f"t/{k}", payload, qos=1 if i % 5 else 0)
            tx.send_now()
            with lock:
                infos.append(info)

    try:
        time.sleep(0.3)
        threads = [threading.Thread(target=publish, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_until(lambda: len(rx.got) >= 1800, timeout=30, what="every publish")
        wait_until(lambda: all(i.is_published() for i in infos), timeout=10,
                   what="every publish acknowledged")
        for k in range(3):
            got = [int(p.split(b":")[1]) for t, p, _ in rx.got if t == f"t/{k}"]
            assert sorted(got) == list(range(600))
            # QoS 0 goes out at once while QoS 1 waits for a slot: order holds per QoS.
            assert [i for i in got if i % 5] == [i for i in range(600) if i % 5]
        assert all(len(p) == len(p.split(b":")[0]) + len(p.split(b":")[1]) + 2
                   + (300_000 if int(p.split(b":")[1]) % 97 == 0
                      else int(p.split(b":")[1]) % 50) for _, p, _ in rx.got)
        assert tx._inflight_messages == 0 and not tx._out_messages
    finally:
        tx.disconnect()
        tx.loop_stop()
        rx.close()
