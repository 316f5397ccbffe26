"""Fleet collector throughput: sealed reports in an appliance outbox -> real Mosquitto ->
one collector -> SQLite or PostgreSQL, timed from the uplink's start to the last commit.

Run: ``.venv/bin/python -m bench.fleet_ingest [--n 2000] [--postgres]`` (PostgreSQL
needs Debian's binaries; the cluster is private and removed afterwards).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path


def run(n: int, postgres: bool) -> float:
    from fleet.service import FleetService
    from tests.conftest import start_mosquitto
    from tests.fleetkit import appliance, drift_body, fleet_config

    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        work = Path(tmp)
        broker = start_mosquitto(work / "cloud")
        stack = contextlib.ExitStack()
        dsn = None
        if postgres:
            from tests.pgkit import running_postgres

            dsn = stack.enter_context(running_postgres()).new_database()
        try:
            app = appliance(work / "site", "s-b", broker.port)
            app.enrol(work / "enrol")
            svc = FleetService(fleet_config(work / "fleet", broker.port, enrol=work / "enrol",
                                            dsn=dsn))
            svc.start()
            while not svc.collector.subscribed.is_set():
                time.sleep(0.02)
            for i in range(n):
                app.drift().put(drift_body("s-b", i))
            t0 = time.perf_counter()
            app.uplink.start()
            while len(svc.store.reports("s-b", limit=n + 1)) < n:
                time.sleep(0.05)
            dt = time.perf_counter() - t0
            app.uplink.stop()
            svc.stop()
        finally:
            stack.close()
            broker.stop()
    return n / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--postgres", action="store_true")
    a = ap.parse_args()
    rate = run(a.n, a.postgres)
    print(f"{a.n} reports stored at {rate:.0f}/s ({'PostgreSQL' if a.postgres else 'SQLite'})")


if __name__ == "__main__":
    main()
