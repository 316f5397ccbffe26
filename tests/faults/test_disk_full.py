"""Scenario 4: the Parquet history sits on a 2 MB tmpfs that a filler file fills up.

Storage pauses (``forewarn_storage_paused 1``; deploy/prometheus has the IT alert
on it), scoring and crew alerts go on, and when the filler is deleted the held
rows are written: nothing is lost while the pause fits the in-memory buffer.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from edge.app import Agent
from edge.history.history import read_history
from tests.agentkit import agent_config, wait_until
from tests.conftest import REPO, Broker
from tests.faults.conftest import T0, Publisher, Recorder, Stream, report


def fill(path: Path) -> int:
    """Fill the filesystem of ``path`` with one file; returns bytes written."""
    n = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65536, 512):  # big blocks, then the last partial ones
            while True:
                try:
                    n += os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    return n


@pytest.fixture
def tiny_history(tmp_path: Path) -> Path:
    d = tmp_path / "state" / "history"
    d.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(d)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (needs root / CAP_SYS_ADMIN): {r.stderr}")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


def test_disk_full_pauses_storage_only(tmp_path: Path, mosquitto: Broker,
                                       bundle: tuple[Path, Path], tiny_history: Path) -> None:
    cfg = agent_config(tmp_path / "state", *bundle, mosquitto.port, api={"enabled": False},
                       drift={"enabled": False})
    agent = Agent(cfg)
    rec = Recorder()
    agent.pipeline.sinks.append(rec)
    agent.start()
    pub = Publisher(mosquitto.port, "fault-pub-4")
    reg = agent.metrics.registry
    filler = tiny_history / "filler"
    hot = {"on": False}
    stream = Stream(pub, "kiln-1", 100.0, lambda i: 100.0 if hot["on"] else 10.0)
    try:
        wait_until(agent.conn.connected.is_set, what="agent connected")
        stream.start()
        wait_until(lambda: agent.parquet and agent.parquet.rows_written > 100,
                   what="history written")
        filled = fill(filler)
        wait_until(lambda: reg.get_sample_value("forewarn_storage_paused") == 1, timeout=10,
                   what="forewarn_storage_paused == 1")
        scored_at_pause = len(rec.keys())
        hot["on"] = True  # a crew alert must still open while storage is paused
        wait_until(lambda: agent.alert_store.unresolved(), timeout=10, what="alert while full")
        assert agent.parquet is not None
        # Rows wait in memory while the disk is full (sampled over a second: a flush
        # can still squeeze into space that compaction freed, emptying the buffer).
        held, until = 0, time.monotonic() + 1.0
        while time.monotonic() < until:
            held = max(held, agent.parquet.buffered_rows)
            time.sleep(0.02)
        assert agent.parquet.paused
        scored_while_paused = len(rec.keys()) - scored_at_pause
        hot["on"] = False
        filler.unlink()
        wait_until(lambda: reg.get_sample_value("forewarn_storage_paused") == 0, timeout=10,
                   what="storage resumed")
        stream.stop()
        last = max(stream.sent_at)
        time.sleep(1.0)
    finally:
        pub.close()
        agent.stop()
    table = read_history(tiny_history, T0 - 1, last + 1)
    got = {(s, t) for s, t in zip(table["signal"].to_pylist(), table["ts"].to_pylist(),
                                  strict=True)}
    want = {(s, t) for t in stream.sent_at for s in ("temp", "vib")}
    report("4 disk full", injected=f"2 MB tmpfs filled with {filled // 1024} KiB filler",
           flush_errors=agent.parquet.flush_errors, rows_held_in_memory=held,
           windows_scored_while_full=scored_while_paused,
           rows_dropped=agent.parquet.rows_dropped, readings_missing=len(want - got))
    assert agent.parquet.flush_errors > 0 and held > 0
    assert scored_while_paused > 50
    assert want - got == set() and agent.parquet.rows_dropped == 0
    rules = (REPO / "deploy/prometheus/rules/forewarn-alerts.yml").read_text()
    assert "forewarn_storage_paused == 1" in rules, "the IT alert on a paused store"
    assert os.path.ismount(tiny_history)
