"""No window lost on restart: the agent is stopped (SIGTERM) or SIGKILLed mid-stream,
readings go on arriving while it is down, and it starts again.

Every window the agent scores is recorded by ``tests.faults.recording_agent`` (a
line per window, written before the batch is stored, so it survives SIGKILL). The
windows of the whole stream, computed by one uninterrupted :class:`WindowSet`, must
all be scored, none twice. Before the warm start, the ``window - 1`` windows after
each restart were missing for every asset: the readings of the last window were
durable and acknowledged, but only the stopped agent's buffers held them.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from edge.history import wal
from edge.scoring.window import WindowSet
from tests.agentkit import wait_until
from tests.bundlefactory import make_bundle
from tests.conftest import Broker
from tests.faults.conftest import T0, Publisher, agent_process_config, report
from tests.faults.recording_agent import read_recorded

ASSETS = ["line-1", "line-2", "line-3"]
WINDOW = 8


def _value(asset: str, i: int) -> tuple[float, float]:
    return 10.0 + (i % 7) + ASSETS.index(asset), 1.0 + (i % 3) / 10


def _expected(manifest: dict[str, Any], n: int, max_lateness: int) -> Counter[tuple[str, float]]:
    ws = WindowSet([s["name"] for s in manifest["signals"]], period=manifest["sample_period_s"],
                   window=manifest["window"], hop=manifest["hop"],
                   max_hold=manifest["gap"]["max_hold_samples"], max_lateness=max_lateness)
    for i in range(n):
        for a in ASSETS:
            temp, vib = _value(a, i)
            ws.add_point(a, "temp", float(T0 + i), temp)
            ws.add_point(a, "vib", float(T0 + i), vib)
    return Counter((w.asset, w.end_ts) for w in ws.drain())


def _send(pub: Publisher, lo: int, hi: int) -> None:
    for i in range(lo, hi):
        for a in ASSETS:
            temp, vib = _value(a, i)
            pub.reading(a, float(T0 + i), temp, vib)


def _wal_rows(state: Path) -> int:
    return sum(wal.read_rows(p) for p in wal.segments(state / "history"))


@pytest.mark.parametrize("hop", [1, 3])
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_restart_mid_stream_scores_every_window_once(tmp_path: Path, mosquitto: Broker,
                                                     agent_process: Any, how: str,
                                                     hop: int) -> None:
    bundle, pub_key = make_bundle(tmp_path / "models", signals=["temp", "vib"], window=WINDOW,
                                  hop=hop, warning=1e9)
    manifest = json.loads((bundle / "manifest.json").read_text())
    state = tmp_path / "state"
    cfg = agent_process_config(state, bundle, pub_key, mosquitto.port,
                               ingest={"max_lateness_slots": 3})
    out = tmp_path / "scored.txt"
    agent = agent_process(cfg, module=("tests.faults.recording_agent", str(out)))
    n1, n2, n = 40, 55, 80  # kill after n1, readings n1..n2 while down, the rest after
    agent.start()
    wait_until(lambda: "subscribed to " in agent.log_text(), timeout=30,
               what="agent subscribed (its persistent session exists)")
    pub = Publisher(mosquitto.port, f"restart-pub-{how}-{hop}")
    try:
        _send(pub, 0, n1)
        assert pub.wait_all_acked(30) == 0
        before = _expected(manifest, n1, 3)
        wait_until(lambda: Counter(read_recorded(out)) == before, timeout=30,
                   what="the first part's windows scored")
        # every reading durable (and so acknowledged): only the buffers hold the tail
        wait_until(lambda: _wal_rows(state) >= n1 * len(ASSETS) * 2, timeout=30,
                   what="the first part in the write-ahead log")
        if how == "sigkill":
            agent.kill()
        else:
            assert agent.stop() == 0, agent.log_text()[-3000:]
        _send(pub, n1, n2)  # queued by the broker for the agent's persistent session
        assert pub.wait_all_acked(30) == 0
        agent.start()
        wait_until(lambda: "subscribed to " in agent.log_text().rsplit(
            "agent started", 1)[-1], timeout=30, what="agent subscribed again")
        _send(pub, n2, n)
        assert pub.wait_all_acked(30) == 0
        want = _expected(manifest, n, 3)
        last = {max(k for k in want if k[0] == a) for a in ASSETS}
        wait_until(lambda: last <= set(read_recorded(out)), timeout=30,
                   what="the stream's last windows scored")
        wait_until(lambda: agent.up(), timeout=15, what="agent healthy")
    finally:
        pub.close()
        assert agent.stop() == 0, agent.log_text()[-3000:]
    got = Counter(read_recorded(out))
    missing = want - got
    twice = {k: c for k, c in got.items() if c > 1}
    extra = got - want
    warmed = [ln for ln in agent.log_text().splitlines() if "warmed from" in ln]
    report(f"restart windows ({how}, hop {hop})",
           injected=f"agent {how} after {n1} of {n} slots x {len(ASSETS)} assets, "
                    f"{n2 - n1} slots sent while it was down",
           windows_expected=sum(want.values()), windows_scored=sum(got.values()),
           lost=sum(missing.values()), scored_twice=len(twice), unexpected=sum(extra.values()))
    assert warmed, "the restarted agent did not warm its window buffers"
    assert missing == Counter(), f"windows never scored: {sorted(missing)[:10]}"
    assert twice == {} and extra == Counter()
