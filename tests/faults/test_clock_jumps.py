"""Scenario 5: clock jumps and slews, in the readings' timestamps and in the agent's clock.

No window is scored twice whatever the timestamps do (tracked by (asset, end_ts)
through a score sink), and a wall-clock step of the agent does not let retention
delete fresh history (edge/history/retention.AgentClock + recent partitions).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from edge.app import Agent
from edge.history import retention
from tests.agentkit import agent_config, wait_until
from tests.conftest import Broker
from tests.faults.conftest import T0, Publisher, Recorder, report


def test_timestamp_jumps_never_score_a_window_twice(
        tmp_path: Path, mosquitto: Broker, bundle: tuple[Path, Path]) -> None:
    cfg = agent_config(tmp_path / "state", *bundle, mosquitto.port, api={"enabled": False},
                       drift={"enabled": False})
    agent = Agent(cfg)
    rec = Recorder()
    agent.pipeline.sinks.append(rec)
    agent.start()
    pub = Publisher(mosquitto.port, "fault-pub-5")
    stamps = ([T0 + i for i in range(60)]  # steady
              + [T0 + 3600 + i for i in range(40)]  # gateway clock steps 1 h forward
              + [T0 + 30 + i for i in range(60)]  # ... and back (overlaps what was scored)
              + [T0 + 3640 + i * 1.004 for i in range(200)]  # NTP slew: 0.4 % fast
              + [T0 + 3840 + i * 0.996 for i in range(200)])  # and slow
    try:
        wait_until(agent.conn.connected.is_set, what="agent connected")
        for ts in stamps:
            pub.reading("oven-1", ts, 10.0)
        assert pub.wait_all_acked(30) == 0
        wait_until(lambda: agent.pipeline.windows.assets["oven-1"].head > 0, what="ingested")
        time.sleep(1.5)
    finally:
        pub.close()
        agent.stop()
    keys = rec.keys()
    twice = [k for k, n in Counter(keys).items() if n > 1]
    late = agent.metrics.registry.get_sample_value("forewarn_readings_dropped_total",
                                                   {"reason": "late"}) or 0
    report("5 clock jumps (readings)",
           injected="+1 h step, -1 h step, +0.4 % and -0.4 % slew",
           readings=len(stamps), windows_scored=len(keys), windows_scored_twice=len(twice),
           late_readings_dropped=int(late))
    assert twice == []
    assert len(keys) > 300
    assert late >= 60  # the backward step re-sent already closed slots: dropped, counted


def test_agent_clock_jump_does_not_let_retention_delete_fresh_data(
        tmp_path: Path, bundle: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = agent_config(tmp_path / "state", *bundle, 1883, api={"enabled": False},
                       storage={"retention_days": 30})
    agent = Agent(cfg)  # not started: its retention job is called directly below
    try:
        assert agent.parquet is not None
        now = time.time()
        agent.parquet.append("press-1", "temp", [now - 5, now - 4], [1.0, 2.0])
        agent.parquet.flush()
        agent.parquet.wal_keep_s = 0.0  # the agent keeps a fresh tail for its warm start
        agent.parquet.compact()  # from the write-ahead log into a date/asset partition
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 400 * 86_400)  # RTC/NTP step
        naive = retention.plan_deletions(retention.list_partitions(agent.parquet.root),
                                         time.time(), 30 * 86_400, 1e12)
        assert agent.retention is not None
        agent.retention.run()  # now, whenever it last ran
        left = retention.list_partitions(agent.parquet.root)
        report("5 clock jumps (agent)", injected="agent wall clock +400 days after start",
               partitions_a_naive_clock_would_delete=len(naive),
               partitions_deleted=1 - len(left))
        assert len(naive) == 1, "the jump must make the fresh partition look old"
        assert len(left) == 1, "retention deleted fresh data after a clock jump"
        # Known limit: a wall clock that is already wrong when the agent *starts* is
        # believed by AgentClock; only partitions written by this run stay protected.
    finally:
        agent.alert_store.close()
