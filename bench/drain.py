"""Uplink drain: drift reports/s delivered from the outbox once the cloud is back.

The outbox is filled while no cloud broker is reachable (the outage), then a
loopback Mosquitto plays the cloud and the agent's own ``Uplink`` drains the
outbox into it; a counting subscriber confirms every report arrived. The
ceiling in the same run is a bare paho client publishing the same payloads at
QoS 1 to the same broker and waiting for every PUBACK, with paho's default
in-flight window (what the uplink uses). Plain TCP on loopback: TLS would add
the same cost to both sides.

Run alone: ``.venv/bin/python -m bench.drain --help``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import Broker, start_broker
from edge.core.config import CloudMQTTConfig
from edge.egress.ledger import Ledger
from edge.egress.outbox import Outbox
from edge.egress.uplink import Uplink

TOPIC = "forewarn/{site_id}/drift"


def _payloads(n: int) -> list[bytes]:
    """Report-sized payloads (~700 bytes, the size of a 14-feature drift report)."""
    feats = [{"i": j, "psi": 0.01 * j, "psi_threshold": 0.2, "ks": 0.02, "mean_shift": 0.1,
              "alarm": False} for j in range(14)]
    return [json.dumps({"seq": i, "windows": 20, "features": feats}).encode() for i in range(n)]


class _Counter:
    """A QoS 1 subscriber on the cloud broker counting distinct reports."""

    def __init__(self, port: int, topic: str) -> None:
        self.seen: set[int] = set()
        self.done = threading.Event()
        self.want = 0
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="drain-counter")
        self.c.on_message = self._on_message
        ready = threading.Event()
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.c.subscribe(topic, qos=1)
        if not ready.wait(10):
            raise RuntimeError(f"drain counter: no SUBACK from 127.0.0.1:{port}")

    def _on_message(self, client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self.seen.add(json.loads(msg.payload)["seq"])
        if len(self.seen) >= self.want:
            self.done.set()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def uplink_drain(broker: Broker, work: Path, n: int) -> dict[str, float]:
    payloads = _payloads(n)
    outbox = Outbox(work / "outbox.sqlite", max_rows=n + 10)
    ledger = Ledger(work / "ledger.sqlite")
    for p in payloads:  # the outage: reports accumulate with no cloud reachable
        outbox.put(p)
    counter = _Counter(broker.port, TOPIC.format(site_id="bench"))
    counter.want = n
    cfg = CloudMQTTConfig(host="127.0.0.1", port=broker.port, topic=TOPIC,
                          client_id="drain-uplink")
    up = Uplink(outbox, ledger, cfg, "bench")
    try:
        up.start()
        if not up.connected.wait(10):
            raise RuntimeError("uplink did not connect")
        t0 = time.perf_counter()
        deadline = time.monotonic() + 120
        while outbox.depth() > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        t_outbox = time.perf_counter() - t0
        counter.done.wait(max(0.0, deadline - time.monotonic()))
        t = time.perf_counter() - t0
        return {"rate": n / t, "reports": n, "arrived": len(counter.seen),
                "outbox_left": outbox.depth(), "ledger_rows": len(ledger.entries()),
                "outbox_empty_s": t_outbox}
    finally:
        up.stop()
        counter.close()
        outbox.close()
        ledger.close()


def paho_ceiling(broker: Broker, n: int) -> float:
    payloads = _payloads(n)
    counter = _Counter(broker.port, "ceiling/drift")
    counter.want = n
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="drain-ceiling")
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        t0 = time.perf_counter()
        infos = [c.publish("ceiling/drift", p, qos=1) for p in payloads]
        for i in infos:
            i.wait_for_publish(60)
        counter.done.wait(60)
        return n / (time.perf_counter() - t0)
    finally:
        c.disconnect()
        c.loop_stop()
        counter.close()


def figure(work: Path, runs: int = 3, n: int = 3000) -> dict[str, object]:
    broker = start_broker(work / "cloud")
    try:
        ours, ceil = [], []
        for r in range(runs):
            d = work / f"drain-{r}"
            d.mkdir(parents=True)
            ours.append(uplink_drain(broker, d, n))
            ceil.append(paho_ceiling(broker, n))
    finally:
        broker.stop()
    rate = statistics.median(x["rate"] for x in ours)
    return {"reports": n, "uplink_rate": rate,
            "uplink_spread": (max(x["rate"] for x in ours) - min(x["rate"] for x in ours)) / 2,
            "paho_qos1_rate": statistics.median(ceil), "vs_paho": rate / statistics.median(ceil),
            "arrived_min": min(x["arrived"] for x in ours),
            "ledger_rows_min": min(x["ledger_rows"] for x in ours),
            "outbox_left_max": max(x["outbox_left"] for x in ours), "runs": runs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reports", type=int, default=3000, help="reports in the outbox")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="forewarn-drain-") as tmp:
        print(json.dumps(figure(Path(tmp), args.runs, args.reports), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
