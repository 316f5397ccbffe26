"""Scenario 8 (CI variant): the agent under steady load stays flat in memory, files, threads.

``FOREWARN_SOAK_S`` sets the duration (default 300 s in CI; ``bench/soak.py`` runs the
one-hour version). The agent runs as its own process with storage, drift and alerts
on; a publisher thread streams 50 assets x 2 signals at 200 messages/s, with an
alert opening and clearing every few seconds. Every 5 s we read the agent's RSS,
open file descriptors and threads from /proc; after a warm-up third, the last third
must not grow beyond noise.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from statistics import mean

import pytest

from tests.agentkit import Client, wait_until
from tests.conftest import Broker
from tests.faults.conftest import agent_process_config, report

SOAK_S = float(os.environ.get("FOREWARN_SOAK_S", "300"))


def proc_stats(pid: int) -> tuple[float, int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS:"))
    threads = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("Threads:"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss_kb / 1024, fds, threads


@pytest.mark.timeout(SOAK_S + 120)
def test_memory_files_and_threads_stay_flat_under_load(
        tmp_path: Path, mosquitto: Broker, drift_bundle: tuple[Path, Path],
        agent_process: object) -> None:
    cfg = agent_process_config(tmp_path / "state", *drift_bundle, mosquitto.port,
                               drift={"interval_windows": 200})
    agent = agent_process(cfg)  # type: ignore[operator]
    agent.start()
    wait_until(agent.up, timeout=30, what="agent up")
    stop = threading.Event()
    sent = [0]

    def publish() -> None:
        c = Client(mosquitto.port)
        t = 0
        try:
            while not stop.is_set():
                t0 = time.monotonic()
                for a in range(50):
                    # asset 0 crosses the alert level for 5 of every 20 slots
                    v = 90.0 if a == 0 and t % 20 < 5 else 10.0
                    c.c.publish(f"forewarn/site1/m{a}", f'{{"ts": {1_700_000_000 + t}, '
                                f'"values": {{"temp": {v}, "vib": 1.0}}}}', qos=1)
                sent[0] += 50
                t += 1
                time.sleep(max(0.0, 0.25 - (time.monotonic() - t0)))
        finally:
            c.close()

    pub = threading.Thread(target=publish, daemon=True)
    pub.start()
    samples: list[tuple[float, int, int]] = []
    try:
        end = time.monotonic() + SOAK_S
        while time.monotonic() < end:
            time.sleep(5)
            assert agent.alive(), agent.log_text()[-2000:]
            samples.append(proc_stats(agent.proc.pid))
        metrics = agent.metrics()
    finally:
        stop.set()
        pub.join(10)
        agent.stop()
    third = max(1, len(samples) // 3)
    warm, last = samples[third:2 * third], samples[-third:]
    rss_warm, rss_last = mean(s[0] for s in warm), mean(s[0] for s in last)
    report("8 soak", seconds=SOAK_S, messages=sent[0],
           windows=int(metrics.get("forewarn_windows_scored_total", 0)),
           rss_mb_warm=round(rss_warm, 1), rss_mb_last=round(rss_last, 1),
           fds=sorted({s[1] for s in samples}), threads=sorted({s[2] for s in samples}))
    assert metrics.get("forewarn_windows_scored_total", 0) > 0.9 * (sent[0] - 50 * 3)
    assert rss_last <= rss_warm * 1.05 + 5, (rss_warm, rss_last)
    assert max(s[1] for s in last) <= max(s[1] for s in warm) + 2
    assert max(s[2] for s in last) <= max(s[2] for s in warm) + 1
