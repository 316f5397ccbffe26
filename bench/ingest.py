"""Ingest figures: the agent draining a backlog vs a bare paho counter vs mosquitto_sub.

Each run uses a fresh Mosquitto (same binary and config) so that no other
session shares the stream: the consumer's persistent session is created, the
stream is published while it is away, and the consumer is timed from its first
received reading to its last (agent: until every reading is counted and every
expected window scored).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import (
    Broker,
    mosquitto_sub_drain,
    mosquitto_sub_session,
    publish_packet,
    raw_publish,
    start_broker,
)
from edge.app import Agent
from edge.core.config import parse_config
from edge.ingest.proto.sparkplug_b_pb2 import Payload

T0 = 1_700_000_000


@dataclass
class Stream:
    name: str
    packets: list[bytes]
    readings: int
    windows: int  # windows the bundle must score for the stream
    topic: str  # subscription filter for the ceilings
    sparkplug: bool = False


def single_json(assets: int = 500, signals: int = 4, slots: int = 60,
                window: int = 16, hop: int = 4) -> Stream:
    pk = [publish_packet(f"forewarn/site1/a{a}/s{s}",
                         orjson.dumps({"ts": T0 + t, "value": 10.0 + (a + s + t) % 7}))
          for t in range(slots) for a in range(assets) for s in range(signals)]
    return Stream("single JSON", pk, len(pk), assets * ((slots - window) // hop + 1),
                  "forewarn/#")


def batched_json(assets: int = 16, msgs_per_asset: int = 25, samples: int = 4000,
                 window: int = 1000, hop: int = 1000, dt: float = 0.001) -> Stream:
    vals = [round(0.5 + (i % 97) * 0.01, 2) for i in range(samples)]
    pk = [publish_packet(f"forewarn/site1/a{a}/v",
                         orjson.dumps({"t0": T0 + m * samples * dt, "dt": dt, "values": vals}))
          for m in range(msgs_per_asset) for a in range(assets)]
    n = msgs_per_asset * samples
    return Stream("batched JSON", pk, len(pk) * samples, assets * ((n - window) // hop + 1),
                  "forewarn/#")


def sparkplug(nodes: int = 10, devices: int = 10, metrics: int = 10, instants: int = 200,
              window: int = 16, hop: int = 4) -> Stream:
    pk: list[bytes] = []
    seq = dict.fromkeys(range(nodes), 0)

    def payload(n: int, ts: int, ms: list[tuple[str | None, int, float]]) -> bytes:
        p = Payload(timestamp=ts, seq=seq[n])
        seq[n] = (seq[n] + 1) % 256
        for name, alias, v in ms:
            m = p.metrics.add()
            if name:
                m.name, m.datatype = name, 10
            m.alias, m.double_value = alias, v
        return p.SerializeToString()

    for n in range(nodes):
        p = Payload(timestamp=T0 * 1000, seq=0)
        bd = p.metrics.add()
        bd.name, bd.datatype, bd.long_value = "bdSeq", 8, 0
        pk.append(publish_packet(f"spBv1.0/g/NBIRTH/n{n}", p.SerializeToString()))
        seq[n] = 1
        for d in range(devices):
            pk.append(publish_packet(f"spBv1.0/g/DBIRTH/n{n}/d{n}_{d}", payload(
                n, T0 * 1000 - 1000, [(f"s{k}", k, 0.0) for k in range(metrics)])))
    for t in range(instants):
        for n in range(nodes):
            for d in range(devices):
                pk.append(publish_packet(f"spBv1.0/g/DDATA/n{n}/d{n}_{d}", payload(
                    n, (T0 + t) * 1000, [(None, k, 1.0 + (t + k) % 5) for k in range(metrics)])))
    readings = nodes * devices * metrics * (instants + 1)  # BIRTH values are readings too
    return Stream("Sparkplug B", pk, readings,
                  nodes * devices * ((instants + 1 - window) // hop + 1), "spBv1.0/#", True)


# -- consumers ---------------------------------------------------------------------------

def _drain_paho(broker: Broker, stream: Stream, timeout: float) -> float:
    """Bare paho client that only counts: the client library's floor."""
    count = [0]
    first = [0.0]
    done = threading.Event()

    def on_message(c: Any, u: Any, m: Any) -> None:
        if not count[0]:
            first[0] = time.perf_counter()
        count[0] += 1
        if count[0] >= len(stream.packets):
            done.set()

    def client() -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-count",
                        clean_session=False)
        c.on_message = on_message
        return c

    c = client()
    c.on_connect = lambda c, *_: c.subscribe(stream.topic, 0)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    time.sleep(0.3)
    c.disconnect()
    c.loop_stop()
    raw_publish(broker.port, stream.packets)
    c = client()
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    ok = done.wait(timeout)
    end = time.perf_counter()
    c.disconnect()
    c.loop_stop()
    if not ok:
        raise TimeoutError(f"paho counter got {count[0]} of {len(stream.packets)}")
    return stream.readings / (end - first[0])


def _drain_sub(broker: Broker, stream: Stream, timeout: float) -> float:
    mosquitto_sub_session(broker.port, "msub", stream.topic)
    raw_publish(broker.port, stream.packets)
    return stream.readings / mosquitto_sub_drain(broker.port, "msub", stream.topic,
                                                 len(stream.packets), timeout)


def agent_cfg(state: Path, bundle: Path, pub: Path, port: int, **over: Any) -> Any:
    raw: dict[str, Any] = {
        "site": "site1", "state_dir": str(state),
        "mqtt": {"host": "127.0.0.1", "port": port, "client_id": f"bench-{state.name}"},
        "bundle": {"path": str(bundle), "trusted_keys": [str(pub)]},
        "api": {"enabled": False},
        "ingest": {"queue_size": 2_000_000, "max_lateness_slots": 8},
        "storage": {"flush_interval_s": 1.0},
    }
    for k, v in over.items():
        raw.setdefault(k, {}).update(v)
    return parse_config(raw)


def readings_of(agent: Agent) -> float:
    # The counter's own value: a registry scrape every millisecond would cost the agent.
    return float(agent.metrics.readings_received._value.get())


def _wait_subscribed(agent: Agent, processes: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if agent.conn.connected.is_set() and (
                agent.workers is None or agent.workers.subscribed >= processes):
            time.sleep(0.2)
            return
        time.sleep(0.02)
    raise TimeoutError("agent did not subscribe")


def _worker_received(agent: Agent) -> bool:
    return agent.workers is not None and any(
        s.watermark > float("-inf") for s in agent.workers.merge.sources)


def drain_agent(broker: Broker, stream: Stream, bundle: tuple[Path, Path], state: Path,
                timeout: float, processes: int = 1, cpu: bool = False,
                **over: Any) -> dict[str, float]:
    """Create the agent's sessions, publish the backlog, time a fresh agent draining it."""
    over.setdefault("ingest", {})["processes"] = processes
    if stream.sparkplug:
        over.setdefault("mqtt", {})["sparkplug"] = True
    cfg = agent_cfg(state, *bundle, broker.port, **over)
    a = Agent(cfg)
    a.start()
    _wait_subscribed(a, processes)
    a.stop()
    raw_publish(broker.port, stream.packets)
    a = Agent(cfg)
    c0 = time.process_time()
    # Before start(): the backlog may drain while start() is still running (its gc
    # freeze and library-page unmap come after the sources connect).
    started = time.perf_counter()
    a.start()
    try:
        deadline = time.perf_counter() + timeout
        first = 0.0
        last, changed = -1, 0.0
        while True:
            now = time.perf_counter()
            n = readings_of(a)
            if not first and (n or _worker_received(a)):
                # Several processes: time from the first batch any worker decoded, not
                # from the first reading the merge released (the backlog a worker
                # decoded while another was still connecting is part of the work).
                first, n_first = now, n
            scored = a.pipeline.scored_total
            if scored != last:
                last, changed = scored, now
            # All windows, or (several processes) all readings in and nothing new for
            # 0.5 s: windows lost to reordering beyond the lateness bound are reported.
            if n >= stream.readings and (scored >= stream.windows or now - changed > 0.5):
                if scored < stream.windows:
                    now = changed
                break
            if now > deadline:  # bounded: report the rate over what did arrive
                break
            time.sleep(0.001)
        end = now
    finally:
        a.stop()
    cpu_s = time.process_time() - c0
    dropped = a.metrics.registry.get_sample_value("forewarn_ingest_queue_dropped_total") or 0
    # The first poll saw n_first readings already; count them out of the timed span.
    # A backlog drained within a few polls leaves too short a span to divide by
    # (one run reported 1.3e15 readings/s): then time from the agent's start instead,
    # which also counts its connect (a lower, safe figure).
    rate = (n - n_first) / (end - first) if end - first >= 0.05 else n / (end - started)
    late = a.metrics.registry.get_sample_value("forewarn_readings_dropped_total",
                                                {"reason": "late"}) or 0
    return {"rate": rate, "cpu_s": cpu_s, "wall_s": end - first, "queue_dropped": dropped,
            "windows": a.pipeline.scored_total, "windows_expected": stream.windows,
            "late": late, "complete": float(n >= stream.readings)}


def drain_naive(broker: Broker, stream: Stream, bundle: Path, timeout: float) -> float:
    args = [sys.executable, "-m", "bench.naive_baseline", "--port", str(broker.port),
            "--bundle", str(bundle), "--count", str(len(stream.packets)),
            "--timeout", str(timeout)]
    setup = subprocess.run([*args, "--setup"], capture_output=True, text=True, check=True,
                           timeout=30)
    del setup
    raw_publish(broker.port, stream.packets)
    out = subprocess.run(args, capture_output=True, text=True, check=True,
                         timeout=timeout + 30)
    return float(out.stdout.strip().splitlines()[-1]) * stream.readings / len(stream.packets)


def on_fresh_broker(work: Path, fn: Callable[[Broker], Any]) -> Any:
    shutil.rmtree(work, ignore_errors=True)
    b = start_broker(work)
    try:
        return fn(b)
    finally:
        b.stop()
        shutil.rmtree(work, ignore_errors=True)


def ceilings(work: Path, stream: Stream, timeout: float) -> tuple[float, float]:
    paho = on_fresh_broker(work / "b", lambda b: _drain_paho(b, stream, timeout))
    sub = on_fresh_broker(work / "b", lambda b: _drain_sub(b, stream, timeout))
    return paho, sub


def fresh(work: Path, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """``fn(broker, *args, **kw)`` on a fresh broker."""
    return on_fresh_broker(work / "b", lambda br: fn(br, *args, **kw))
