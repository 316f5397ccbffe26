"""A flood of malformed and oversized messages beside a steady good stream.

Shared by the hostile-input fault test (what must hold: nothing good lost, the junk
counted and shed) and ``python -m bench.flood`` (how much the flood slows the good
readings, against the quiet figure of the same run). The flooder runs on a CPU of
its own, as a device on the plant network would; agent, broker and the good stream
share the others.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edge.app import Agent
from tests.agentkit import agent_config, wait_until
from tests.conftest import Broker
from tests.faults.conftest import Publisher, Recorder, Stream, median

FLOODER = r"""
import sys, time, paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port, seconds = int(sys.argv[1]), float(sys.argv[2])
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="flooder")
c.max_queued_messages_set(0)
c.connect("127.0.0.1", port)
c.loop_start()
junk = [b"{not json", b'{"ts": "x", "values": {"temp": "hot"}}', b"\xff\xfe\x00" * 10,
        b"[" * 500, b'{"ts": 1, "values": {"../../etc": 1}}', b"x" * 70_000]
end, n = time.monotonic() + seconds, 0
while time.monotonic() < end:
    c.publish(f"forewarn/site1/junk-{n % 50}", junk[n % len(junk)], qos=0)
    n += 1
c.disconnect(); c.loop_stop()
print(n)
"""


@dataclass(frozen=True)
class Flood:
    sent: int                       # junk messages the flooder published
    by_reason: dict[str, float]     # forewarn_decode_errors_total by reason
    n_good: int                     # good windows the stream made
    keys: list[tuple[str, float]]   # (asset, end ts) of every window scored
    quiet: list[float]              # publish -> scored latency (s) before the flood
    flooded: list[float]            # ... while it ran

    @property
    def errors(self) -> float:
        return sum(self.by_reason.values())

    @property
    def ratio(self) -> float:
        """Median good-reading latency under the flood over the quiet median."""
        return median(self.flooded) / median(self.quiet)


def split_cpus() -> tuple[set[int], set[int]] | None:
    """(gateway CPUs, the flooder's CPU), or None with fewer than 2 CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return set(cpus[:-1]), {cpus[-1]}


def _pin_self(cpus: set[int]) -> None:
    """Every thread of this process (threads started later inherit the caller's set)."""
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cpus)


def run_flood(state: Path, broker: Broker, bundle: tuple[Path, Path], *,
              quiet_s: float = 4.0, flood_s: float = 5.0) -> Flood:
    """Good readings at 50 Hz for ``quiet_s``, then junk at full speed for ``flood_s``."""
    split = split_cpus()
    if split is None:
        raise RuntimeError("the flood needs 2 CPUs: one plays the remote flooding device")
    gateway, remote = split
    cfg = agent_config(state, *bundle, broker.port, api={"enabled": False},
                       drift={"enabled": False}, ingest={"max_payload_bytes": 65536})
    everything = os.sched_getaffinity(0)
    _pin_self(gateway)
    os.sched_setaffinity(broker.proc.pid, gateway)
    agent = Agent(cfg)
    rec = Recorder()
    agent.pipeline.sinks.append(rec)
    agent.start()
    pub = Publisher(broker.port, f"flood-good-{time.monotonic_ns()}")
    try:
        wait_until(agent.conn.connected.is_set, what="agent connected")
        stream = Stream(pub, "press-9", 50.0).start()
        time.sleep(quiet_s)
        quiet_until = float(max(stream.sent_at))
        flood = subprocess.run([sys.executable, "-c", FLOODER, str(broker.port), str(flood_s)],
                               capture_output=True, text=True, timeout=60 + flood_s,
                               preexec_fn=lambda: os.sched_setaffinity(0, remote))
        flood_until = float(max(stream.sent_at))
        stream.stop()
        n_good = len(stream.sent_at) - 3  # window 4, hop 1
        wait_until(lambda: len(rec.keys()) >= n_good, timeout=60,
                   what="every good window scored after the flood")
    finally:
        pub.close()
        agent.stop()
        _pin_self(everything)
    by_reason = {s.labels["reason"]: s.value for m in agent.metrics.registry.collect()
                 if m.name == "forewarn_decode_errors" for s in m.samples
                 if s.name.endswith("_total")}
    return Flood(sent=int(flood.stdout.strip() or 0), by_reason=by_reason, n_good=n_good,
                 keys=rec.keys(), quiet=stream.latencies(rec, until_ts=quiet_until),
                 flooded=stream.latencies(rec, since_ts=quiet_until, until_ts=flood_until))
