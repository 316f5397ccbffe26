"""Multi-process ingest on a real Mosquitto: same windows as one process, QoS 1 acked."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from edge.app import Agent
from edge.core.config import parse_config
from edge.core.errors import ConfigError
from tests.agentkit import Client, agent_config, wait_until
from tests.bundlefactory import make_bundle
from tests.conftest import Broker

ASSETS, SLOTS, WINDOW = 30, 40, 4
T0 = 1_700_000_000


class Recorder:
    def __init__(self) -> None:
        self.windows: list[tuple[str, float, float]] = []

    def on_scores(self, windows: list[Any]) -> None:
        self.windows.extend((w.asset, w.ts, w.score) for w in windows if w.asset != "probe")


@pytest.fixture
def bundle(tmp_path: Path) -> tuple[Path, Path]:
    return make_bundle(tmp_path / "models", signals=["temp", "vib"], window=WINDOW,
                       warning=1e9)


def _stream(pub: Client) -> None:
    # Slot-major, one reading per message: consecutive readings of one asset land on
    # different workers, the case where cross-process order matters.
    for t in range(SLOTS):
        for a in range(ASSETS):
            for sig, v in (("temp", a + t * 0.5), ("vib", (a * t) % 7)):
                pub.c.publish(f"forewarn/site1/m{a}/{sig}",
                              json.dumps({"ts": T0 + t, "value": v}), qos=1)


def _run(tmp_path: Path, name: str, broker: Broker, bundle: tuple[Path, Path],
         processes: int) -> tuple[Agent, Recorder]:
    # The default lateness bound: a worker lagging behind the others on a loaded
    # 2-core machine is the watermark merge's job, not a wide bound's.
    cfg = agent_config(tmp_path / name, *bundle, broker.port,
                       ingest={"processes": processes}, api={"enabled": False})
    agent = Agent(cfg)
    rec = Recorder()
    agent.pipeline.sinks.append(rec)
    agent.start()
    return agent, rec


def _probe(agent: Agent, pub: Client) -> None:
    """Wait until some ingest connection (worker or main) has subscribed."""
    def seen() -> bool:
        pub.publish("forewarn/site1/probe/temp", {"ts": T0, "value": 1.0})
        return (agent.metrics.registry.get_sample_value("forewarn_readings_received_total")
                or 0) > 0
    wait_until(seen, timeout=20, what="ingest subscribed")
    if agent.workers is not None:
        n = agent.cfg.ingest.processes
        wait_until(lambda: agent.workers.subscribed >= n,  # type: ignore[union-attr]
                   timeout=20, what="every worker subscribed")


def test_three_ingest_processes_give_the_same_whole_windows_as_one(
        tmp_path: Path, mosquitto: Broker, bundle: tuple[Path, Path]) -> None:
    expected = ASSETS * (SLOTS - WINDOW + 1)
    results = {}
    pub = Client(mosquitto.port)
    try:
        for processes in (1, 3):
            agent, rec = _run(tmp_path, f"p{processes}", mosquitto, bundle, processes)
            try:
                _probe(agent, pub)
                if processes > 1:
                    wait_until(lambda a=agent, n=processes: a.workers.subscribed >= n,  # type: ignore
                               what="workers subscribed")
                    time.sleep(0.5)  # let every worker join the share group
                _stream(pub)
                wait_until(lambda r=rec: len(r.windows) >= expected, timeout=30,
                           what=f"{expected} windows with {processes} processes")
                time.sleep(0.3)  # nothing more may arrive
                reg = agent.metrics.registry
                assert reg.get_sample_value("forewarn_readings_dropped_total",
                                            {"reason": "late"}) in (None, 0.0)
                results[processes] = sorted(rec.windows)
            finally:
                agent.stop()
    finally:
        pub.close()
    assert len(results[1]) == expected
    assert results[3] == results[1]  # every window whole, none twice, same values


def test_worker_qos1_messages_are_acked_and_not_redelivered(
        tmp_path: Path, mosquitto: Broker, bundle: tuple[Path, Path]) -> None:
    pub = Client(mosquitto.port)
    agent, rec = _run(tmp_path, "acks", mosquitto, bundle, 2)
    try:
        _probe(agent, pub)
        _stream(pub)
        wait_until(lambda: len(rec.windows) >= ASSETS * (SLOTS - WINDOW + 1), timeout=30,
                   what="all windows")
        time.sleep(1.0)  # storage flush (0.2 s) then the acks travel back to the workers
    finally:
        agent.stop()
    # Same persistent sessions again: anything not acked would be redelivered now.
    again, _ = _run(tmp_path, "acks", mosquitto, bundle, 2)
    try:
        wait_until(lambda: again.workers.subscribed >= 2,  # type: ignore[union-attr]
                   what="workers subscribed")
        time.sleep(2.0)
        got = again.metrics.registry.get_sample_value("forewarn_readings_received_total")
        assert got in (None, 0.0)
    finally:
        again.stop()
        pub.close()


def test_several_processes_need_mqtt5(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ingest\.processes=2 needs mqtt\.protocol"):
        parse_config({"bundle": {"path": str(tmp_path)}, "ingest": {"processes": 2},
                      "mqtt": {"protocol": "3.1.1"}})


class WindowTap:
    """The windows handed to the scorer, with their values (wraps the window stage)."""

    def __init__(self, agent: Agent) -> None:
        self.windows: list[tuple[str, float, list[list[float]]]] = []
        ws = agent.pipeline.windows
        drain = ws.drain

        def tapped() -> list[Any]:
            out = drain()
            self.windows.extend((w.asset, w.end_ts, w.values.tolist()) for w in out
                                if w.asset != "probe")
            return out

        ws.drain = tapped  # type: ignore[method-assign]


def _backlog_run(tmp_path: Path, broker: Broker, bundle: tuple[Path, Path],
                 processes: int) -> tuple[list[Any], float]:
    """Create the sessions, stop, publish while down, restart: the windows and late count."""
    # The default lateness bound on purpose: the merge, not a wide bound, keeps order.
    cfg = agent_config(tmp_path / f"backlog{processes}", *bundle, broker.port,
                       ingest={"processes": processes}, api={"enabled": False})
    agent = Agent(cfg)
    agent.start()
    try:
        wait_until(lambda: agent.conn.connected.is_set() and (
            agent.workers is None or agent.workers.subscribed >= processes),
            timeout=30, what="sessions created")
        time.sleep(0.3)
    finally:
        agent.stop()
    pub = Client(broker.port)
    try:
        infos = [pub.c.publish(f"forewarn/site1/m{a}/{sig}",
                               json.dumps({"ts": T0 + t, "value": v}), qos=1)
                 for t in range(SLOTS) for a in range(ASSETS)
                 for sig, v in (("temp", a + t * 0.5), ("vib", (a * t) % 7))]
        for info in infos:
            info.wait_for_publish(10)  # the broker holds all of it before the restart
    finally:
        pub.close()
    agent = Agent(cfg)
    tap = WindowTap(agent)
    expected = ASSETS * (SLOTS - WINDOW + 1)
    agent.start()
    try:
        reg = agent.metrics.registry
        wait_until(lambda: (reg.get_sample_value("forewarn_readings_received_total") or 0)
                   >= 2 * ASSETS * SLOTS, timeout=60, what="the backlog drained")
        with contextlib.suppress(AssertionError):  # the asserts below say what is missing
            wait_until(lambda: len(tap.windows) >= expected, timeout=10, what="windows")
        time.sleep(0.3)  # nothing more may arrive
        late = reg.get_sample_value("forewarn_readings_dropped_total", {"reason": "late"})
    finally:
        agent.stop()
    return sorted(tap.windows), late or 0.0


def test_restart_with_a_backlog_gives_three_processes_the_windows_of_one(
        tmp_path: Path, mosquitto: Broker, bundle: tuple[Path, Path]) -> None:
    one, late_one = _backlog_run(tmp_path, mosquitto, bundle, 1)
    three, late_three = _backlog_run(tmp_path, mosquitto, bundle, 3)
    assert len(one) == ASSETS * (SLOTS - WINDOW + 1) and late_one == 0
    assert late_three == 0  # each worker's session drained its share at its own pace
    assert three == one  # every window whole, none twice, same values


def test_a_dead_worker_process_makes_the_agent_unhealthy(tmp_path: Path, mosquitto: Broker,
                                                         bundle: tuple[Path, Path]) -> None:
    """A worker that dies takes its share of the topics with it while the site link
    stays up: /healthz (Agent.health) and the status name it."""
    import os
    import signal

    agent, _ = _run(tmp_path, "dead", mosquitto, bundle, 2)
    try:
        wait_until(lambda: agent.health()[0], timeout=20, what="agent healthy")
        assert agent.workers is not None
        victim = agent.workers._procs[0]
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(5)
        wait_until(lambda: not agent.health()[0], timeout=10, what="agent unhealthy")
        reason = agent.health()[1]
        assert reason == "ingest-workers down: 1 of 2 ingest worker processes not running"
        assert {"name": "ingest-workers", "connected": False,
                "detail": "1 of 2 ingest worker processes not running"
                } in agent.status()["sources"]
    finally:
        agent.stop()
