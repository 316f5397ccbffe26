"""The network thread's hand-over to the bounded ingest queue, against a real broker.

Nothing consumes the queue here, so it fills: what does not fit is shed, counted and,
for QoS 1, acknowledged, so the broker's in-flight window keeps the stream moving.
"""

from __future__ import annotations

import queue
from pathlib import Path

import pytest

from edge.core.config import MQTTConfig
from edge.core.metrics import Metrics
from edge.ingest.message import Message, MessageQueue
from edge.ingest.mqtt import BURST_MAX, SiteConnection
from tests.agentkit import Client, wait_until
from tests.conftest import Broker


@pytest.mark.parametrize("qos", [0, 1])
def test_a_full_queue_sheds_whole_bursts_counts_them_and_acks_qos1(
        tmp_path: Path, mosquitto: Broker, qos: int) -> None:
    inbox = MessageQueue(100)
    metrics = Metrics()
    # A window of 200 in flight: were shed QoS 1 messages not acknowledged, the broker
    # would stop after 200 and the counts below would never reach 2,000.
    cfg = MQTTConfig(port=mosquitto.port, client_id=f"queue-{qos}", qos=qos,
                     receive_maximum=200)
    conn = SiteConnection(cfg, "site1", ["forewarn/site1/#"], inbox, metrics)
    conn.start()
    try:
        wait_until(conn.connected.is_set, what="connected")
        n = 2000
        pub = Client(mosquitto.port)
        try:  # back to back, so that the agent reads them in bursts
            sent = [pub.c.publish(f"forewarn/site1/a{i}", b'{"v": %d}' % i, qos=qos)
                    for i in range(n)]
            for info in sent:
                info.wait_for_publish(10)
        finally:
            pub.close()
        dropped = metrics.registry.get_sample_value
        wait_until(lambda: (dropped("forewarn_ingest_queue_dropped_total") or 0)
                   + inbox.qsize() == n, timeout=30, what="every message queued or shed")
    finally:
        conn.stop()
    kept = inbox.qsize()
    assert 100 <= kept < 100 + BURST_MAX, kept
    items = []
    while True:
        try:
            items.append(inbox.get_nowait())
        except queue.Empty:
            break
    msgs: list[Message] = [m for it in items for m in (it if isinstance(it, list) else [it])]
    assert len(msgs) == kept
    assert any(isinstance(it, list) and len(it) > 1 for it in items), "bursts handed over"
    # The queue keeps the oldest messages, in order; what came after was shed.
    assert [m.topic for m in msgs] == [f"forewarn/site1/a{i}" for i in range(kept)]
    assert all(m.qos == qos for m in msgs)
