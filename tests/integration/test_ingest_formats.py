"""Every payload format through a real Mosquitto: publish, receive, map the topic, decode."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import orjson
import paho.mqtt.client as mqtt
import pytest

from edge.core.errors import DecodeError
from edge.ingest.deadletter import DeadLetter
from edge.ingest.decode import decode_json
from edge.ingest.proto.sparkplug_b_pb2 import Payload
from edge.ingest.readings import Reading, Series
from edge.ingest.sparkplug import REBIRTH_METRIC, SparkplugDecoder, rebirth_command
from edge.ingest.topics import TopicMap
from tests.conftest import Broker

pytestmark = pytest.mark.mqtt
NOW = 1_718_000_100.0
T = 1_718_000_000.0
TS_MS = 1_718_000_000_000
INT32, UINT32, FLOAT, DOUBLE, BOOLEAN = 3, 7, 9, 10, 11


class Client:
    """A paho client that records every message it receives, in order."""

    def __init__(self, broker: Broker, subscribe: list[str] | None = None) -> None:
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"test-{uuid.uuid4().hex[:8]}")
        self.c.on_message = lambda c, u, m: self.inbox.put((m.topic, bytes(m.payload)))
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        for topic in subscribe or []:
            self.c.subscribe(topic, qos=1)
        if subscribe:
            # a round trip through our own subscription proves it is active
            probe = f"probe/{uuid.uuid4().hex}"
            self.c.subscribe(probe, qos=1)
            self.publish(probe, b"")
            assert self.take(1)[0][0] == probe

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.c.publish(topic, payload, qos=qos).wait_for_publish(5)

    def take(self, n: int, timeout: float = 5.0) -> list[tuple[str, bytes]]:
        return [self.inbox.get(timeout=timeout) for _ in range(n)]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def test_json_formats_end_to_end(mosquitto: Broker, tmp_path: Path) -> None:
    tm = TopicMap(["forewarn/{site}/{asset}/{signal}", "forewarn/{site}/{asset}",
                   "plant/{asset}/sensors/{signal}"], "s1")
    sub = Client(mosquitto, tm.subscriptions())  # "+/+" also carries our alerts topic
    pub = Client(mosquitto)
    batch = np.round(np.sin(np.arange(2000) / 7.0), 6)
    sent = [
        ("forewarn/s1/press-4/temp", b'{"ts": 1718000000, "value": 71.3}'),
        ("forewarn/s1/press-4", b'{"ts": "2024-06-10T06:13:20Z", '
                                b'"values": {"temp": 71.3, "vib_rms": 0.42}}'),
        ("forewarn/s1/press-4/vib", orjson.dumps({"t0": TS_MS, "dt": 0.0005,
                                                   "values": batch.tolist()})),
        ("forewarn/s1/press-4/temp", b'[{"ts": 1718000000, "value": 1},'
                                     b' {"ts": 1718000001000, "value": 2}]'),
        ("forewarn/s1/press-4", b'[{"ts": 1718000000, "values": {"a": 1, "b": NaN}}]'),
        ("plant/press-5/sensors/temp", b'{"ts": 1718000000, "value": 60}'),
        ("forewarn/s1/alerts/press-4", b'{"state": "open"}'),  # our own output
        ("forewarn/s1/press-4/temp", b'{"ts": 1718000000, "value": tru'),
    ]
    for topic, payload in sent:
        pub.publish(topic, payload)
    # a bare number the way a shell script or a PLC's simple client sends it
    if shutil.which("mosquitto_pub"):
        subprocess.run(["mosquitto_pub", "-h", mosquitto.host, "-p", str(mosquitto.port),
                        "-q", "1", "-t", "forewarn/s1/press-4/temp", "-m", "71.3"],
                       check=True, timeout=10)
    else:
        pub.publish("forewarn/s1/press-4/temp", b"71.3")

    dead = DeadLetter(tmp_path / "dead.jsonl", max_bytes=100_000)
    got: list[list[Reading | Series]] = []
    ignored, rejected = [], []
    for topic, payload in sub.take(len(sent) + 1):
        match = tm.match(topic)
        if match is None:
            ignored.append(topic)
            continue
        try:
            got.append(decode_json(match, payload, NOW, 1 << 20).items)
        except DecodeError as exc:
            rejected.append(exc.reason)
            dead.write(NOW, topic, exc.reason, payload, exc.detail)
    sub.close()
    pub.close()
    dead.close()

    assert ignored == ["forewarn/s1/alerts/press-4"]
    assert rejected == ["malformed_json"]
    single, multi, series, listed, listed_multi, plant, bare = got
    assert single == [Reading("press-4", "temp", T, 71.3)]
    assert multi == [Reading("press-4", "temp", T, 71.3), Reading("press-4", "vib_rms", T, 0.42)]
    (s,) = series
    assert isinstance(s, Series) and (s.t0, s.dt, len(s.values)) == (T, 0.0005, 2000)
    np.testing.assert_array_equal(s.values, batch)
    assert listed == [Reading("press-4", "temp", T, 1.0), Reading("press-4", "temp", T + 1, 2.0)]
    assert listed_multi == [Reading("press-4", "a", T, 1.0)]  # NaN dropped, rest kept
    assert plant == [Reading("press-5", "temp", T, 60.0)]
    assert bare == [Reading("press-4", "temp", NOW, 71.3)]
    (rec,) = [json.loads(x) for x in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert rec["topic"] == "forewarn/s1/press-4/temp" and rec["reason"] == "malformed_json"
    assert rec["head"] == '{"ts": 1718000000, "value": tru'


def spb(metrics: list[dict[str, object]], seq: int | None) -> bytes:
    p = Payload(timestamp=TS_MS)
    if seq is not None:
        p.seq = seq
    for m in metrics:
        p.metrics.add(**m)  # type: ignore[arg-type]
    return p.SerializeToString()


def test_sparkplug_end_to_end(mosquitto: Broker, tmp_path: Path) -> None:
    sub = Client(mosquitto, ["spBv1.0/#"])
    node = Client(mosquitto)  # plays the edge node

    def send_rebirth(group: str, edge_node: str) -> None:
        topic, payload = rebirth_command(group, edge_node)
        sub.c.publish(topic, payload, qos=1)

    cache = tmp_path / "state" / "sparkplug.json"
    dec = SparkplugDecoder(cache, send_rebirth, persist_interval_s=0.0)
    node.publish("spBv1.0/plant/NBIRTH/gw1", spb([
        {"name": "bdSeq", "datatype": 4, "long_value": 0},
        {"name": "Node Control/Rebirth", "datatype": BOOLEAN, "boolean_value": False},
        {"name": "Uptime", "alias": 1, "datatype": UINT32, "int_value": 42}], seq=0))
    node.publish("spBv1.0/plant/DBIRTH/gw1/press-4", spb([
        {"name": "Sensors/Temp", "alias": 10, "datatype": DOUBLE, "double_value": 70.0},
        {"name": "Offset", "alias": 11, "datatype": INT32, "int_value": 0},
        {"name": "Running", "alias": 12, "datatype": BOOLEAN, "boolean_value": True}], seq=1))
    node.publish("spBv1.0/plant/DDATA/gw1/press-4", spb([
        {"alias": 10, "double_value": 71.5, "timestamp": TS_MS + 250},
        {"alias": 11, "int_value": 4294967284},  # Int32 -12 on the wire
        {"alias": 12, "boolean_value": False}], seq=2))
    node.publish("spBv1.0/plant/NDATA/gw1", spb([{"alias": 99, "int_value": 1}], seq=3))

    results = []
    for topic, payload in sub.take(4):
        try:
            results.append(dec.decode(topic, payload, NOW))
        except DecodeError as exc:
            results.append(exc.reason)  # type: ignore[arg-type]
    nbirth, dbirth, ddata, unknown = results
    assert nbirth.items == [Reading("gw1", "Uptime", T, 42.0)]
    assert dbirth.items == [Reading("gw1.press-4", "Sensors.Temp", T, 70.0),
                            Reading("gw1.press-4", "Offset", T, 0.0)]
    assert ddata.items == [Reading("gw1.press-4", "Sensors.Temp", T + 0.25, 71.5),
                           Reading("gw1.press-4", "Offset", T, -12.0)]
    assert ddata.skipped == 1  # the boolean
    assert unknown == "unknown_alias"

    # the unknown alias made the host ask the node for a Rebirth, on the wire
    topic, payload = sub.take(1)[0]
    assert topic == "spBv1.0/plant/NCMD/gw1"
    (m,) = Payload.FromString(payload).metrics
    assert (m.name, m.datatype, m.boolean_value) == (REBIRTH_METRIC, BOOLEAN, True)
    assert dec.decode(topic, payload, NOW).items == []  # our own command is not data

    # the BIRTH cache survives the agent restarting
    dec.close()
    dec2 = SparkplugDecoder(cache, send_rebirth)
    node.publish("spBv1.0/plant/DDATA/gw1/press-4", spb([{"alias": 11, "int_value": 4294967295}],
                                                        seq=4))
    node.publish("spBv1.0/plant/NDEATH/gw1", spb([{"name": "bdSeq", "datatype": 4,
                                                  "long_value": 0}], seq=None))
    (t1, p1), (t2, p2) = sub.take(2)
    assert dec2.decode(t1, p1, NOW).items == [Reading("gw1.press-4", "Offset", T, -1.0)]
    dec2.decode(t2, p2, NOW)
    assert dec2.is_stale("gw1") and dec2.is_stale("gw1.press-4")
    sub.close()
    node.close()
