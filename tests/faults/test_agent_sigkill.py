"""Scenario 2: the agent process is SIGKILLed at random points while readings stream in,
22 times in a row; then it runs once more to the end.

After all that: no Parquet file is corrupt, every reading the publisher got a
PUBACK for is in the store (unacknowledged ones were redelivered to the agent's
persistent session), the alert database passes ``PRAGMA integrity_check`` with at
most one unresolved alert per asset/condition, and every drift report that entered
the outbox reached the cloud broker (at least once) and the egress ledger.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from edge.history import wal as wal_mod
from edge.history.history import SCHEMA, read_history
from tests.agentkit import Client, wait_until
from tests.conftest import Broker, start_mosquitto
from tests.faults.conftest import T0, Publisher, agent_process_config, report

ASSETS = ["mill-1", "mill-2", "mill-3"]
KILLS = 22


def test_agent_survives_repeated_sigkill(tmp_path: Path, mosquitto: Broker,
                                         drift_bundle: tuple[Path, Path],
                                         agent_process: Any) -> None:
    cloud = start_mosquitto(tmp_path / "cloud")
    state = tmp_path / "state"
    cfg = agent_process_config(
        state, *drift_bundle, mosquitto.port,
        ingest={"max_lateness_slots": 50},
        drift={"interval_windows": 150},
        egress={"enabled": True, "site_id": "s-01", "k": 20,
                "cloud": {"host": "127.0.0.1", "port": cloud.port, "protocol": "3.1.1",
                          "reconnect_min_s": 1, "reconnect_max_s": 2, "ack_timeout_s": 2}})
    agent = agent_process(cfg)
    sink = Client(cloud.port, ["forewarn/+/drift"])
    rng = random.Random(7)
    agent.start()
    wait_until(lambda: "subscribed to " in agent.log_text(), timeout=30,
               what="first agent subscribed (its persistent session exists)")
    pub = Publisher(mosquitto.port, "fault-pub-2")
    stop = threading.Event()
    sent: list[int] = []

    def stream() -> None:
        vrng = random.Random(3)
        i = 0
        while not stop.is_set():
            for a in ASSETS:
                hot = 30 <= i % 200 < 45
                pub.reading(a, T0 + i, (100.0 if hot else 10.0) + vrng.random(),
                            1.0 + vrng.random() / 10)
            i += 1
            sent.append(i)
            time.sleep(0.005)

    t = threading.Thread(target=stream)
    t.start()
    started = time.monotonic()
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.2, 2.0))  # anywhere from import to full flow
            agent.kill()
            agent.start()
        stop.set()
        t.join()
        n = sent[-1]
        assert pub.wait_all_acked(60) == 0
        want = {(a, s, float(T0 + i)) for a in ASSETS for s in ("temp", "vib") for i in range(n)}

        def stored() -> set[tuple[str, str, float]]:
            tb = read_history(state / "history", T0 - 1, T0 + n + 1)
            return set(zip(tb["asset"].to_pylist(), tb["signal"].to_pylist(),
                           tb["ts"].to_pylist(), strict=True))
        wait_until(lambda: want <= stored(), timeout=60, what="every reading stored")
        wait_until(lambda: agent.up() and agent.metrics().get("forewarn_outbox_depth") == 0,
                   timeout=30, what="outbox drained")
        time.sleep(0.5)
    finally:
        stop.set()
        pub.close()
        assert agent.stop() == 0, agent.log_text()[-3000:]
        sink.close()
        cloud.stop()
    elapsed = time.monotonic() - started

    # Parquet: every file readable, no temp file left by the final clean run.
    files = list((state / "history").rglob("*.parquet"))
    bad = []
    for f in files:
        try:
            pq.read_table(f)
        except Exception as exc:  # any failure is corruption
            bad.append(f"{f}: {exc}")
    stray = list((state / "history").rglob("*.tmp"))
    raw_rows = sum(pq.read_metadata(f).num_rows for f in files)
    # A clean stop leaves the last rows in the write-ahead log (compacted at the next start).
    raw_rows += sum(wal_mod.read_segment(p, SCHEMA).num_rows
                    for p in wal_mod.segments(state / "history"))
    got = stored()
    # Alerts: integrity and the one-unresolved-per-asset rule.
    db = sqlite3.connect(state / "alerts.sqlite")
    integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    worst = db.execute("select max(c) from (select count(*) c from alerts where state != "
                       "'resolved' group by asset, condition)").fetchone()[0] or 0
    n_alerts = db.execute("select count(*) from alerts").fetchone()[0]
    # Outbox: everything inserted was delivered and recorded.
    ob = sqlite3.connect(state / "egress" / "outbox.sqlite")
    inserted = (ob.execute("select seq from sqlite_sequence where name='outbox'").fetchone()
                or [0])[0]
    left = ob.execute("select count(*) from outbox").fetchone()[0]
    ledger = [bytes(r[0]) for r in sqlite3.connect(state / "egress" / "ledger.sqlite").execute(
        "select payload from egress")]
    delivered = list(sink.received.get("forewarn/s-01/drift", []))
    report("2 agent SIGKILL",
           injected=f"{KILLS} SIGKILLs at random points over {elapsed:.0f} s",
           agent_starts=agent.starts, published=len(ASSETS) * n,
           readings_missing=len(want - got), raw_duplicate_rows=raw_rows - len(got),
           corrupt_files=len(bad), parquet_files=len(files), alerts=n_alerts,
           alert_db=integrity, max_unresolved_per_asset=worst, reports_into_outbox=inserted,
           reports_delivered=len(delivered), ledger_rows=len(ledger),
           delivered_more_than_once=len(delivered) - inserted, outbox_left=left)
    assert bad == [] and stray == []
    assert want - got == set()
    assert integrity == "ok" and worst <= 1 and n_alerts >= 1
    assert inserted >= 10, "the run should have produced drift reports"
    assert left == 0
    # Payloads are not unique ids: after a kill the redelivered readings rebuild the
    # same windows, so two outbox rows can hold byte-identical reports. Count instead:
    # a row leaves the outbox only after its PUBACK and its ledger record, so every
    # inserted row is in the ledger, and the cloud got everything the ledger lists.
    assert len(ledger) >= inserted, "a report in the outbox never reached the ledger"
    assert Counter(ledger) <= Counter(delivered), "the ledger lists what the cloud never got"
