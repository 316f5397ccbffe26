"""Shared bench plumbing: a loopback Mosquitto, a raw MQTT publisher, timing helpers.

Ingest figures drain a *backlog*: the subscriber's persistent session is created,
the stream is published while it is away (``queue_qos0_messages``), then the
subscriber reconnects and is timed until it has everything. The publisher then
never competes for the two cores with the client being measured, and every
client (agent, bare paho, ``mosquitto_sub``) gets byte-identical input.
"""

from __future__ import annotations

import shutil
import signal
import socket
import statistics
import struct
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.broker import wait_listening

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_broker(workdir: Path, port: int | None = None) -> Broker:
    """Mosquitto on loopback, no persistence, unbounded queues (stock ones drop when behind)."""
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                    "max_queued_messages 0\nmax_inflight_messages 0\n"
                    "queue_qos0_messages true\nset_tcp_nodelay true\npersistence false\n")
    log = (workdir / "mosquitto.log").open("ab")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, proc, "mosquitto", timeout=10)
    except RuntimeError:
        proc.kill()
        raise
    return Broker(port, proc, workdir)


def _remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def publish_packet(topic: str, payload: bytes) -> bytes:
    """One QoS 0 PUBLISH packet (MQTT 3.1.1), pre-built so publishing costs nothing."""
    body = _utf8(topic) + payload
    return b"\x30" + _remaining(len(body)) + body


def raw_publish(port: int, packets: Iterable[bytes], chunk: int = 1 << 20) -> int:
    """Send pre-built PUBLISH packets on one connection as fast as the socket takes them."""
    var = _utf8("MQTT") + b"\x04\x02" + struct.pack("!H", 60)  # clean session, keepalive 60
    cid = _utf8(f"bench-pub-{time.monotonic_ns()}")
    n = 0
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"\x10" + _remaining(len(var) + len(cid)) + var + cid)
        if s.recv(4)[:1] != b"\x20":
            raise RuntimeError("no CONNACK")
        buf = bytearray()
        for p in packets:
            buf += p
            n += 1
            if len(buf) >= chunk:
                s.sendall(buf)
                buf.clear()
        s.sendall(bytes(buf) + b"\xe0\x00")  # DISCONNECT after the last one
        s.shutdown(socket.SHUT_WR)
        while s.recv(4096):
            pass
    return n


def mosquitto_sub_session(port: int, cid: str, topic: str) -> None:
    """Create a persistent QoS 0 session for ``mosquitto_sub`` (subscribe and leave)."""
    subprocess.run(["mosquitto_sub", "-p", str(port), "-h", "127.0.0.1", "-c", "-i", cid,
                    "-q", "0", "-t", topic, "-E"], check=True, timeout=10)


def mosquitto_sub_drain(port: int, cid: str, topic: str, count: int, timeout: float) -> float:
    t0 = time.perf_counter()
    subprocess.run(["mosquitto_sub", "-p", str(port), "-h", "127.0.0.1", "-c", "-i", cid,
                    "-q", "0", "-t", topic, "-C", str(count), "-W", str(int(timeout))],
                   check=True, stdout=subprocess.DEVNULL, timeout=timeout + 5)
    return time.perf_counter() - t0


def wait_for(cond: Callable[[], Any], timeout: float, what: str, poll: float = 0.002) -> float:
    t0 = time.perf_counter()
    deadline = t0 + timeout
    while not cond():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)
    return time.perf_counter() - t0


def summary(values: list[float]) -> dict[str, float]:
    """Median and spread (min, max, and relative half-range) of repeated runs."""
    med = statistics.median(values)
    return {"median": med, "min": min(values), "max": max(values), "runs": len(values),
            "spread_pct": 100.0 * (max(values) - min(values)) / 2 / med if med else 0.0}
