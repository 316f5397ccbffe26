"""The network thread's hand-over to the bounded ingest queue, against a real broker.

Nothing consumes the queue in the first test, so it fills: what does not fit is shed,
counted and, for QoS 1, acknowledged, so the broker's in-flight window keeps the
stream moving. With a wait for room (``ingest.queue_wait_s``) and a byte bound
(``ingest.queue_bytes``), a slow consumer pushes back instead: nothing is shed and the
queue never holds much more than its bound; a stop during that wait sheds nothing
either, and the broker redelivers what was never queued.
"""

from __future__ import annotations

import queue
import threading
import time
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
    # No wait for room: this test is about what a full queue sheds.
    conn = SiteConnection(cfg, "site1", ["forewarn/site1/#"], inbox, metrics, queue_wait_s=0.0)
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


def _drain(inbox: MessageQueue) -> list[Message]:
    out: list[Message] = []
    while True:
        try:
            it = inbox.get_nowait()
        except queue.Empty:
            return out
        out.extend(it if isinstance(it, list) else [it])


def test_a_byte_bound_pushes_back_on_the_broker_instead_of_shedding(
        tmp_path: Path, mosquitto: Broker) -> None:
    bound = 16_384  # ~60 of these messages
    inbox = MessageQueue(100_000, max_bytes=bound)
    metrics = Metrics()
    cfg = MQTTConfig(port=mosquitto.port, client_id="queue-bytes", qos=1, receive_maximum=200)
    conn = SiteConnection(cfg, "site1", ["forewarn/site1/#"], inbox, metrics, queue_wait_s=30.0)
    got: list[Message] = []
    peak = [0]
    stop = threading.Event()

    def consume() -> None:  # a slow pipeline: a few messages at a time, acked as it goes
        while not stop.is_set():
            peak[0] = max(peak[0], inbox.bytes)
            try:
                it = inbox.get(timeout=0.05)
            except queue.Empty:
                continue
            msgs = it if isinstance(it, list) else [it]
            got.extend(msgs)
            conn.ack(msgs)
            time.sleep(0.002)

    consumer = threading.Thread(target=consume, daemon=True)
    conn.start()
    try:
        wait_until(conn.connected.is_set, what="connected")
        consumer.start()
        n = 3000
        pub = Client(mosquitto.port)
        try:
            sent = [pub.c.publish(f"forewarn/site1/a{i}", b'{"v": %d, "pad": "%s"}'
                                  % (i, b"x" * 150), qos=1) for i in range(n)]
            for info in sent:
                info.wait_for_publish(30)
        finally:
            pub.close()
        wait_until(lambda: len(got) >= n, timeout=60, what="every message consumed")
    finally:
        stop.set()
        consumer.join(10)
        conn.stop()
    assert (metrics.registry.get_sample_value("forewarn_ingest_queue_dropped_total") or 0) == 0
    assert [m.topic for m in got] == [f"forewarn/site1/a{i}" for i in range(n)]
    # One burst may go over the bound (it is never split), never more.
    one = max(len(m.payload) + len(m.topic) for m in got) + 240
    assert peak[0] <= bound + BURST_MAX * one, peak[0]
    assert inbox.bytes == 0


def test_a_stop_while_waiting_for_room_sheds_nothing_and_the_broker_redelivers(
        tmp_path: Path, mosquitto: Broker) -> None:
    inbox = MessageQueue(100_000, max_bytes=4096)  # nothing consumes: full at once
    metrics = Metrics()
    cfg = MQTTConfig(port=mosquitto.port, client_id="queue-stop", qos=1, receive_maximum=50)
    conn = SiteConnection(cfg, "site1", ["forewarn/site1/#"], inbox, metrics, queue_wait_s=30.0)
    conn.start()
    n = 300
    try:
        wait_until(conn.connected.is_set, what="connected")
        pub = Client(mosquitto.port)
        try:
            sent = [pub.c.publish(f"forewarn/site1/a{i}", b'{"v": %d}' % i, qos=1)
                    for i in range(n)]
            for info in sent:
                info.wait_for_publish(30)
        finally:
            pub.close()
        wait_until(lambda: inbox.full(), what="queue full")
    finally:
        t0 = time.monotonic()
        conn.stop()
        stopped_in = time.monotonic() - t0
    assert stopped_in < 10, f"stop waited {stopped_in:.1f} s for a hand-over"
    assert (metrics.registry.get_sample_value("forewarn_ingest_queue_dropped_total") or 0) == 0
    first = _drain(inbox)  # queued, never acked (no pipeline): all come back too
    assert first and len(first) < n
    # The same persistent session again: whatever was not acked is delivered again.
    inbox2 = MessageQueue(100_000)
    conn2 = SiteConnection(cfg, "site1", ["forewarn/site1/#"], inbox2, Metrics())
    got: list[Message] = []

    def have_all() -> bool:
        msgs = _drain(inbox2)
        got.extend(msgs)
        conn2.ack(msgs)
        return len({m.topic for m in got}) >= n

    conn2.start()
    try:
        wait_until(have_all, timeout=30, what="every message redelivered")
    finally:
        conn2.stop()
    assert {m.topic for m in got} == {f"forewarn/site1/a{i}" for i in range(n)}
