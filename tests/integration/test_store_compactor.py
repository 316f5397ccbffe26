"""The history store's compactor: compaction off the pipeline thread, in a child process.

A gate holds a compaction in the middle (some partition files written, its segments
not yet deleted) for as long as a test needs, so what happens meanwhile is asserted
on counts, not on timings: SIGSTOP for the agent's compaction child (a real process
running unchanged code), a gate on ``pyarrow.parquet.write_table`` for the in-thread
compaction the trainer and the thread mode use.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from edge.app import Agent
from edge.history import compact as compact_mod
from edge.history import wal as wal_mod
from edge.history.history import read_history
from edge.history.parquet import ParquetStore
from edge.ingest.message import Message
from tests.agentkit import agent_config, wait_until
from tests.bundlefactory import make_bundle
from tests.conftest import REPO

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


class Gate:
    """Lets ``open_files`` partition files through, then holds the next writer."""

    def __init__(self, open_files: int) -> None:
        self.left = open_files
        self.held = threading.Event()
        self.release = threading.Event()
        self._real: Callable[..., Any] = pq.write_table
        self._lock = threading.Lock()

    def __call__(self, *a: Any, **k: Any) -> Any:
        with self._lock:
            hold = self.left == 0
            self.left -= 1
        if hold:
            self.held.set()
            assert self.release.wait(60), "gate never released"
        return self._real(*a, **k)


class ChildGate:
    """Freezes the compaction child with SIGSTOP once it has written a file.

    The child is a real process running the real code: nothing in it is replaced.
    """

    def __init__(self, st: ParquetStore) -> None:
        self.st = st
        self.pid = 0
        self.release_sent = False

    def wait_held(self, timeout: float = 30) -> None:
        def writing() -> int:
            child = self.st._child
            return child.pid if child is not None and self.st.bytes_written > 0 else 0
        self.pid = wait_until(writing, timeout, what="the compaction child writing")
        os.kill(self.pid, signal.SIGSTOP)

    def release(self) -> None:
        if self.pid and not self.release_sent:
            self.release_sent = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)


class ThreadGate:
    """Holds the in-thread compaction in its ``open_files``+1-th partition write."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, open_files: int) -> None:
        self.gate = Gate(open_files)
        monkeypatch.setattr(compact_mod.pq, "write_table", self.gate)

    def wait_held(self, timeout: float = 30) -> None:
        assert self.gate.held.wait(timeout), "the compaction never started"

    def release(self) -> None:
        self.gate.release.set()


def _store_and_gate(mode: str, root: Path, monkeypatch: pytest.MonkeyPatch,
                    assets: int) -> tuple[ParquetStore, ChildGate | ThreadGate, int]:
    st = ParquetStore(root, background=True, wal_max_rows=100, child=mode == "child")
    n = _prefill(st, assets=assets, seconds=5)
    gate: ChildGate | ThreadGate = (ChildGate(st) if mode == "child"
                                    else ThreadGate(monkeypatch, open_files=min(5, assets - 1)))
    return st, gate, n


def _rows(root: Path, dedupe: bool = True) -> list[tuple[str, str, float, float]]:
    t = read_history(root, 0, 2e9, dedupe=dedupe)
    return list(zip(t["asset"].to_pylist(), t["signal"].to_pylist(), t["ts"].to_pylist(),
                    t["value"].to_pylist(), strict=True))


def _prefill(st: ParquetStore, assets: int, seconds: int) -> int:
    for a in range(assets):
        st.append(f"m{a}", ["temp", "vib"] * seconds, np.repeat(T0 - 3600 + np.arange(
            float(seconds)), 2), np.arange(2.0 * seconds))
    return st.flush()


def test_pipeline_keeps_scoring_and_storing_while_a_compaction_is_in_flight(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = make_bundle(tmp_path / "models", signals=["temp", "vib"], window=4, warning=1e9)
    cfg = agent_config(tmp_path / "state", *bundle, 1, api={"enabled": False},
                       drift={"enabled": False})
    agent = Agent(cfg)  # its MQTT side is never started: messages go into the inbox
    st = agent.parquet
    assert st is not None and st.background
    scored: list[int] = []
    agent.pipeline.sinks.append(type("Count", (), {
        "on_scores": lambda self, w: scored.append(len(w))})())
    assert st.child, "the agent compacts in a child process"
    # 1,000 partitions: the child is still writing when the test freezes it.
    prefilled = _prefill(st, assets=1000, seconds=10)
    gate = ChildGate(st)
    st.wal_max_rows = 100  # the prefilled segment is due at once
    st.wal_keep_s = 0.0  # the agent keeps its newest segments for the warm start; not here
    taken = wal_mod.segments(st.root)
    try:
        st.start()
        gate.wait_held()
        agent.pipeline.start()
        for t in range(40):
            for a in range(5):
                agent.inbox.put(Message(f"forewarn/site1/p{a}", json.dumps(
                    {"ts": T0 + t, "values": {"temp": 10.0 + t, "vib": 1.0}}).encode(),
                    time.time(), 0, 0))
        # The compaction is frozen mid-way; the pipeline thread must not be.
        wait_until(lambda: sum(scored) >= 5 * 30 and st.rows_written >= prefilled + 400,
                   timeout=30, what="windows scored and readings stored during compaction")
        assert st._child is not None and st.compactions == 0
        assert not st._compacting.acquire(blocking=False), "retention could run meanwhile"
        during = wal_mod.segments(st.root)
        assert set(taken) < set(during), "flushes go on into new segments"
        # The segments appended meanwhile are due too (wal_max_rows 100): were a second
        # compaction allowed, it could finish between two polls and take them.
        st.wal_max_rows = 10**9
        gate.release()
        wait_until(lambda: st.compactions >= 1, timeout=60, what="compaction finished")
        assert st.compactions == 1
        after = wal_mod.segments(st.root)
        assert not set(taken) & set(after), "compacted segments are deleted"
        assert set(during) - set(taken) <= set(after), "segments appended meanwhile stay"
        raw = _rows(st.root, dedupe=False)
        assert len(raw) == len(set(raw)) == prefilled + 5 * 40 * 2  # each row exactly once
    finally:
        gate.release()
        agent.pipeline._stop.set()
        if agent.pipeline._thread is not None:
            agent.pipeline._thread.join(10)
        st.close(compact=False)
        agent.alert_store.close()


@pytest.mark.parametrize("mode", ["thread", "child"])
def test_close_abandons_a_compaction_in_flight_without_loss_or_duplicates(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    st, gate, n = _store_and_gate(mode, tmp_path, monkeypatch,
                                  assets=1000 if mode == "child" else 30)
    segs = wal_mod.segments(tmp_path)
    st.start()
    gate.wait_held()
    closer = threading.Thread(target=st.close, kwargs={"compact": False})
    closer.start()
    wait_until(st._closing.is_set, what="close asked the compactor to stop")
    gate.release()  # the file being written completes, then the compaction gives up
    closer.join(30)
    assert not closer.is_alive()
    if isinstance(gate, ChildGate):
        assert not Path(f"/proc/{gate.pid}").exists(), "the child exited"
    assert st.compactions == 0 and st.compactions_abandoned == 1
    assert list(tmp_path.rglob("*.parquet")) == [], "files of the abandoned compaction undone"
    assert list(tmp_path.glob("date=*")) == [] and list(tmp_path.rglob("*.tmp")) == []
    assert wal_mod.segments(tmp_path) == segs
    raw = _rows(tmp_path, dedupe=False)
    assert len(raw) == len(set(raw)) == n
    monkeypatch.undo()
    st2 = ParquetStore(tmp_path)  # the next start compacts the log
    assert st2.compactions == 1 and wal_mod.segments(tmp_path) == []
    assert sorted(_rows(tmp_path, dedupe=False)) == sorted(raw)


@pytest.mark.parametrize("mode", ["thread", "child"])
def test_exclusive_waits_for_a_compaction_in_flight(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   mode: str) -> None:
    st, gate, _ = _store_and_gate(mode, tmp_path, monkeypatch,
                                  assets=1000 if mode == "child" else 10)
    order: list[str] = []

    def retention_job() -> None:
        with st.exclusive():
            order.append(f"retention after {st.compactions} compaction(s)")
    try:
        st.start()
        gate.wait_held()
        t = threading.Thread(target=retention_job)
        t.start()
        t.join(0.5)
        assert order == [], "entered while a compaction was writing"
        gate.release()
        t.join(60)
        assert order == ["retention after 1 compaction(s)"]
    finally:
        gate.release()
        st.close(compact=False)


CHILD = r"""
import sys, time
from pathlib import Path
import pyarrow.parquet as pq
from edge.history.parquet import ParquetStore

real = pq.write_table
def slow(*a, **k):  # widens the compaction window the parent kills in
    time.sleep(0.005)
    return real(*a, **k)
pq.write_table = slow
st = ParquetStore(Path(sys.argv[1]), background=True, wal_max_rows=20_000)
st.start()
for t in range(1_000_000):
    for a in range(200):
        st.append(f"m{a}", "s", [1_700_000_000.0 + t], [float(t)])
    st.flush()
    print(t, flush=True)  # durable: what an agent would acknowledge now
    time.sleep(0.002)
"""


def test_sigkill_during_background_compaction_loses_no_flushed_row(tmp_path: Path) -> None:
    root = tmp_path / "history"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(root)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    acked: list[int] = []
    reader = threading.Thread(target=lambda: acked.extend(
        int(line) for line in proc.stdout or []))
    reader.start()

    def mid_compaction() -> bool:
        # 100 flushes of 200 assets within one date: a finished compaction leaves a
        # multiple of 200 files, one in flight anything else.
        return len(list(root.rglob("part-*.parquet"))) % 200 != 0

    try:
        wait_until(mid_compaction, timeout=60, what="a compaction in flight")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(10)
        reader.join(10)
    assert mid_compaction(), "the kill missed the compaction"
    last = acked[-1]
    st = ParquetStore(root)  # the next start: stray temp files go, the log is compacted
    assert wal_mod.segments(root) == [] and list(root.rglob("*.tmp")) == []
    for f in root.rglob("*.parquet"):
        pq.read_table(f)  # no corrupt file
    rows = _rows(root)
    got = {(a, ts) for a, _, ts, _ in rows}
    want = {(f"m{a}", T0 + t) for a in range(200) for t in range(last + 1)}
    assert want <= got, f"{len(want - got)} flushed rows lost"
    # Beyond the last acknowledged flush at most the one the kill interrupted.
    assert got - want <= {(f"m{a}", T0 + last + 1) for a in range(200)}
    assert len(rows) == len(got)
    # The interrupted compaction's files and their re-compaction both hold rows:
    # stored twice on disk, read once.
    assert len(_rows(root, dedupe=False)) > len(rows)
    assert st.compactions == 1
