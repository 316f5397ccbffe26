"""The fleet service SIGKILLed mid-stream loses no report and stores none twice.

A real ``forewarn-fleet serve`` child process collects from a real Mosquitto
while an appliance's uplink sends a backlog; the child is killed once part of
it is stored and started again with the same client id (its persistent session
holds what was in flight). Every report ends up stored exactly once.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.agentkit import wait_until
from tests.conftest import REPO, Broker
from tests.faults.conftest import report
from tests.fleetkit import TOKEN, appliance, drift_body, fleet_config, toml_of

N = 400


def count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(c.execute("SELECT COUNT(*) FROM reports").fetchone()[0])
        finally:
            c.close()
    except sqlite3.OperationalError:
        return 0  # not created yet


def start(cfg_path: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.Popen([sys.executable, "-m", "fleet.cli", "serve", "--config",
                             str(cfg_path)], stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            cwd=REPO, env=env)


def test_fleet_sigkill_mid_stream_loses_nothing_stores_nothing_twice(
        tmp_path: Path, mosquitto: Broker) -> None:
    app = appliance(tmp_path / "site", "s-10", mosquitto.port)
    app.enrol(tmp_path / "enrol")
    cfg = fleet_config(tmp_path / "fleet", mosquitto.port, enrol=tmp_path / "enrol",
                       broker={"host": "127.0.0.1", "port": mosquitto.port,
                               "client_id": "fleet-kill", "receive_maximum": 10})
    cfg_path = tmp_path / "fleet.toml"
    cfg_path.write_text(toml_of(cfg))
    db = cfg.store.sqlite_path
    log = tmp_path / "fleet.log"
    proc = start(cfg_path, log)
    try:
        wait_until(lambda: "subscribed" in log.read_text(), timeout=30, what="fleet subscribed")
        for i in range(N):
            app.drift().put(drift_body("s-10", i))
        app.uplink.start()
        wait_until(lambda: count(db) >= N // 8, timeout=60, what="part of the stream stored")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        at_kill = count(db)
        proc = start(cfg_path, log)
        wait_until(lambda: count(db) == N, timeout=120, what="every report stored")
        time.sleep(1.0)  # anything redelivered twice would show now
        wait_until(lambda: app.outbox.depth() == 0, timeout=30, what="outbox drained")
        text = httpx.get(f"http://127.0.0.1:{cfg.api.port}/metrics",
                         headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).text
    finally:
        app.uplink.stop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
    c = sqlite3.connect(db)
    seqs = [r[0] for r in c.execute("SELECT seq FROM reports ORDER BY seq")]
    dups = [ln for ln in text.splitlines() if ln.startswith("forewarn_fleet_reports_duplicate")]
    report("fleet SIGKILL", injected="fleet collector SIGKILLed mid-stream, restarted",
           reports=N, stored_at_kill=at_kill, stored=len(seqs),
           redelivered_duplicates=dups[0].split()[-1] if dups else "?")
    assert 0 < at_kill < N, "the kill should land mid-stream"
    assert seqs == list(range(1, N + 1))
