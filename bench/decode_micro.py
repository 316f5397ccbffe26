"""Decode microbenchmark: JSON payloads/s through decode_json, per payload format.

    .venv/bin/python -m bench.decode_micro

Clean payloads only (the hot path): a single reading, a 10-signal object, a
list of 10 readings and a 1,000-sample batch. No MQTT, no pipeline.
"""

from __future__ import annotations

import time

import orjson

from edge.ingest.decode import decode_json
from edge.ingest.topics import TopicMatch

SIGNAL = TopicMatch("site1", "pump-1", "s1")
ASSET = TopicMatch("site1", "pump-1", None)
PAYLOADS = {
    "single": (SIGNAL, {"ts": 1718000000.25, "value": 71.3}),
    "multi10": (ASSET, {"ts": 1718000000.25,
                        "values": {f"s{i}": 70.0 + i * 0.1 for i in range(10)}}),
    "list10": (SIGNAL, [{"ts": 1718000000.0 + i, "value": 71.3 + i} for i in range(10)]),
    "batch1000": (SIGNAL, {"t0": 1718000000.0, "dt": 0.0005,
                           "values": [0.001 * i for i in range(1000)]}),
}


def run(match: TopicMatch, payload: bytes, seconds: float = 1.0) -> float:
    n, t0 = 0, time.perf_counter()
    while True:
        for _ in range(200):
            decode_json(match, payload, 1718000001.0, 1 << 20)
        n += 200
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n / dt


if __name__ == "__main__":
    for name, (match, obj) in PAYLOADS.items():
        print(f"{name:10s} {run(match, orjson.dumps(obj)):>12,.0f} msg/s")
