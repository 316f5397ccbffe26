"""Outbox: bound + merge policy on real SQLite; delivery in order across a cloud outage."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge.core.config import CloudMQTTConfig, EgressConfig
from edge.core.errors import EgressError
from edge.drift.monitor import DriftInterval, FeatureDrift
from edge.egress.ledger import Ledger
from edge.egress.outbox import Outbox
from edge.egress.schema import build_report, merge_payloads, parse
from edge.egress.uplink import Uplink
from tests.conftest import Broker


def report(index: int, windows: int = 20, alarm: bool = False) -> bytes:
    f = FeatureDrift(0, "x", psi=0.01 * index, ks=0.1, mean_shift=0.0, threshold=0.3,
                     alarm=alarm, counts=(windows,))
    iv = DriftInterval("m", "1", "ab" * 32, 0, index, windows, (f,), None, 0.0, 0.0,
                       closed_at=1_700_000_000.0)
    out = build_report(iv, EgressConfig(site_id="s1", k=20))
    assert out is not None
    return out


def test_bound_merges_oldest_and_keeps_order(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", max_rows=3, merge=merge_payloads)
    for i in range(5):
        ob.put(report(i, alarm=(i == 0)))
    assert ob.depth() == 3 and ob.merged == 2 and ob.dropped == 0
    rows = [parse(r.payload) for r in ob.peek_batch(10)]
    assert [(r.interval_first, r.interval_last) for r in rows] == [(0, 2), (3, 3), (4, 4)]
    assert rows[0].windows == 60 and rows[0].intervals == 3
    assert rows[0].alarm  # an alarm survives merging
    assert rows[0].features[0].psi == pytest.approx(0.01, abs=1e-4)  # mean of 0, .01, .02


def test_leased_rows_are_not_merged_and_survive_restart(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", max_rows=3, merge=merge_payloads)
    for i in range(3):
        ob.put(report(i))
    (leased,) = ob.peek_batch(1)  # row 0 is being published
    ob.put(report(3))  # full: merges 1 and 2, never the leased row 0
    assert ob.depth() == 3
    ob.close()
    ob2 = Outbox(tmp_path / "o.sqlite", max_rows=3, merge=merge_payloads)
    rows = [parse(r.payload) for r in ob2.peek_batch(10)]
    assert [(r.interval_first, r.interval_last) for r in rows] == [(0, 0), (1, 2), (3, 3)]
    ob2.mark_sent([leased.id])
    assert ob2.depth() == 2


def test_unmergeable_overflow_is_counted(tmp_path: Path) -> None:
    def refuse(a: bytes, b: bytes) -> bytes:
        raise EgressError("different models")

    ob = Outbox(tmp_path / "o.sqlite", max_rows=2, merge=refuse)
    for i in range(3):
        ob.put(report(i))
    assert ob.depth() == 2 and ob.dropped == 1


def test_depth_age_and_drain(tmp_path: Path) -> None:
    clock = [1000.0]
    ob = Outbox(tmp_path / "o.sqlite", clock=lambda: clock[0])
    assert ob.oldest_age_s() == 0.0 and ob.drain_eta_s() == 0.0
    ob.put(b"{}")
    ob.put(b"{}")
    clock[0] += 30
    assert ob.oldest_age_s() == pytest.approx(30)
    assert ob.drain_eta_s() is None  # no rate measured yet
    (a,) = ob.peek_batch(1)
    ob.mark_sent([a.id])
    time.sleep(0.01)
    (b,) = ob.peek_batch(1)
    ob.mark_sent([b.id])
    assert ob.drain_rate > 0 and ob.depth() == 0


def test_reports_arrive_once_in_order_after_cloud_outage(tmp_path: Path,
                                                         mosquitto: Broker) -> None:
    got: list[bytes] = []
    lock = threading.Lock()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cloud-consumer",
                      clean_session=False)

    def on_msg(c: object, u: object, m: mqtt.MQTTMessage) -> None:
        with lock:
            got.append(m.payload)

    sub.on_message = on_msg
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("forewarn/s1/drift", qos=1)
    sub.reconnect_delay_set(1, 1)
    sub.connect(mosquitto.host, mosquitto.port)
    sub.loop_start()
    time.sleep(0.5)
    ob = Outbox(tmp_path / "o.sqlite", merge=merge_payloads)
    led = Ledger(tmp_path / "ledger.sqlite")
    up = Uplink(ob, led, CloudMQTTConfig(host=mosquitto.host, port=mosquitto.port,
                                         reconnect_min_s=1, reconnect_max_s=1), "s1")
    up.start()
    try:
        ob.put(report(0))
        up.notify()
        _wait(lambda: len(got) == 1)
        mosquitto.stop()
        _wait(lambda: not up.connected.is_set())
        for i in range(1, 8):
            ob.put(report(i))
        time.sleep(1.0)
        assert ob.depth() == 7  # nothing was lost or marked sent while the cloud was down
        mosquitto.restart()
        _wait(lambda: len(got) == 8, timeout=20)
        time.sleep(0.5)
        order = [json.loads(p)["interval_first"] for p in got]
        assert order == list(range(8))  # every report once, in order
        assert ob.depth() == 0
        assert [e.payload for e in led.entries()] == got
    finally:
        up.stop()
        sub.loop_stop()


def _wait(cond: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")
