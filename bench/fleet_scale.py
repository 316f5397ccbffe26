"""The fleet at scale: 1,000 simulated gateways -> real Mosquitto -> 1 or 2 collector
processes (MQTT 5 shared subscription) -> PostgreSQL.

Run: ``.venv/bin/python -m bench.fleet_scale [--gateways 1000] [--speedup 100]
[--seconds 20] [--backlog 6000] [--rounds 2]`` (about 3 minutes; PostgreSQL needs
Debian's binaries, its cluster is private and removed afterwards).

Each gateway has its own Ed25519 key (enrolled), site id, topic and sequence, and
sends what an appliance sends: a health report every ``--health-s`` (300 s) and a
drift report every ``--drift-s`` (360 s, 360 windows at a 1 s hop), both ``--speedup``
times faster, every report signed when it is sent. The gateways share a few MQTT
connections (``--connections``): this measures the report path, not the broker's
cost of 1,000 idle TCP sessions.

Two phases per configuration, interleaved ABAB (1 collector, 2, 1, 2) so load from
other users of the machine affects both sides:

* **paced**: the simulated fleet for ``--seconds``; end-to-end lag = commit in the
  collector - publish by the gateway (same host clock), p50/p99;
* **capacity**: a backlog of ``--backlog`` reports queued in the collectors' broker
  sessions while they are stopped, then drained: reports/s (first to last commit)
  with the collectors saturated, and the write path's share (time in ``store.put`` / time handling
  messages) per collector.

Figures go to ``bench/results/<date>-fleet-scale.{json,md}`` and stdout.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


# --- the collector process ---

def collector_main(port: int, dsn: str, enrol: str, client_id: str, group: str,
                   out: str, ready: Any, stop: Any) -> None:
    from fleet.collector import Collector
    from fleet.config import BrokerConfig
    from fleet.enrol import Enrolment
    from fleet.metrics import FleetMetrics
    from fleet.store import Report, open_postgres

    store = open_postgres(dsn)
    put_s = handle_s = 0.0
    commits: list[tuple[str, int, float]] = []
    inner_put = store.put

    def put(r: Report) -> Any:
        nonlocal put_s
        t0 = time.perf_counter()
        res = inner_put(r)
        put_s += time.perf_counter() - t0
        commits.append((r.site_id, r.seq, time.time()))
        return res

    store.put = put  # type: ignore[method-assign]
    cfg = BrokerConfig(host="127.0.0.1", port=port, client_id=client_id, share_group=group,
                       receive_maximum=1000)
    enrolment = Enrolment(Path(enrol))
    c = Collector(cfg, store, enrolment.keys, FleetMetrics(), max_bytes=256 * 1024, k=20)
    inner_handle = c.handle

    def handle(payload: bytes) -> bool:
        nonlocal handle_s
        t0 = time.perf_counter()
        ok = inner_handle(payload)
        handle_s += time.perf_counter() - t0
        return ok

    c.handle = handle  # type: ignore[method-assign]
    c.start()
    c.subscribed.wait(30)
    ready.set()
    stop.wait()
    c.stop()
    store.close()
    Path(out).write_text(json.dumps({"put_s": put_s, "handle_s": handle_s,
                                     "commits": commits}))


@dataclass
class Collectors:
    procs: list[Any]
    outs: list[Path]
    stop: Any

    def finish(self) -> list[dict[str, Any]]:
        self.stop.set()
        for p in self.procs:
            p.join(60)
        return [json.loads(o.read_text()) for o in self.outs]


def start_collectors(n: int, port: int, dsn: str, enrol: Path, tag: str,
                     work: Path) -> Collectors:
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    procs, outs, readies = [], [], []
    for i in range(n):
        ready = ctx.Event()
        out = work / f"{tag}-c{i}.json"
        p = ctx.Process(target=collector_main, args=(port, dsn, str(enrol), f"{tag}-c{i}",
                                                     tag, str(out), ready, stop),
                        daemon=True)
        p.start()
        procs.append(p)
        outs.append(out)
        readies.append(ready)
    for r in readies:
        if not r.wait(60):
            raise TimeoutError("collector did not subscribe")
    return Collectors(procs, outs, stop)


# --- the simulated gateways ---

class Fleet:
    def __init__(self, n: int, enrol: Path, work: Path) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from edge.egress.envelope import Sealer, SequenceFile, public_pem

        enrol.mkdir(parents=True, exist_ok=True)
        seq_file = SequenceFile(work / "unused-sequence")  # numbers are given per report
        self.sites = [f"g{i:05d}" for i in range(n)]
        self.sealers = []
        for s in self.sites:
            key = Ed25519PrivateKey.generate()
            (enrol / f"{s}.pub").write_text(public_pem(key))
            self.sealers.append(Sealer(s, key, seq_file))
        self.seq = [0] * n

    def report(self, i: int, kind: str) -> tuple[str, int, bytes]:
        from tests.fleetkit import drift_body, health_body

        site = self.sites[i]
        self.seq[i] += 1
        body = drift_body(site, self.seq[i]) if kind == "drift" else health_body(site)
        return site, self.seq[i], self.sealers[i].seal(kind, body, seq=self.seq[i])  # type: ignore[arg-type]


class Uplinks:
    """A few MQTT connections carrying the gateways' QoS 1 reports."""

    def __init__(self, port: int, n: int, tag: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.clients = []
        self.acked = 0
        self._lock = threading.Lock()
        for i in range(n):
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{tag}-up{i}",
                            protocol=mqtt.MQTTv5)
            c.max_inflight_messages_set(1000)
            c.max_queued_messages_set(0)
            c.on_publish = self._on_publish
            c.connect("127.0.0.1", port)
            c.loop_start()
            self.clients.append(c)

    def _on_publish(self, *_: Any) -> None:
        with self._lock:
            self.acked += 1

    def send(self, i: int, site: str, payload: bytes) -> None:
        self.clients[i % len(self.clients)].publish(f"forewarn/{site}/drift", payload, qos=1)

    def close(self) -> None:
        for c in self.clients:
            c.disconnect()
            c.loop_stop()


def paced(fleet: Fleet, up: Uplinks, seconds: float, speedup: float, health_s: float,
          drift_s: float) -> tuple[dict[tuple[str, int], float], float]:
    """Every gateway on its own schedule (random phase), ``speedup`` x real time."""
    import heapq
    import random

    rng = random.Random(7)
    periods = {"health": health_s / speedup, "drift": drift_s / speedup}
    t0 = time.time()
    due = [(t0 + rng.uniform(0, p), i, k) for i in range(len(fleet.sites))
           for k, p in periods.items()]
    heapq.heapify(due)
    sent: dict[tuple[str, int], float] = {}
    end = t0 + seconds
    while due and due[0][0] < end:
        at, i, kind = heapq.heappop(due)
        delay = at - time.time()
        if delay > 0:
            time.sleep(delay)
        site, seq, payload = fleet.report(i, kind)
        sent[(site, seq)] = time.time()
        up.send(i, site, payload)
        heapq.heappush(due, (at + periods[kind], i, kind))
    return sent, time.time() - t0


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def wait_stored(dsn: str, n: int, timeout: float) -> float:
    import psycopg

    t0 = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as c:
        while True:
            row = c.execute("SELECT count(*) FROM reports").fetchone()
            if row and row[0] >= n:
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"{row[0] if row else 0} of {n} reports stored")
            time.sleep(0.1)


def run_paced(a: argparse.Namespace, ncol: int, tag: str, port: int, pg: Any,
              fleet: Fleet, enrol: Path, work: Path) -> dict[str, Any]:
    dsn = pg.new_database()
    cols = start_collectors(ncol, port, dsn, enrol, tag, work)
    up = Uplinks(port, a.connections, tag)
    try:
        sent, dt = paced(fleet, up, a.seconds, a.speedup, a.health_s, a.drift_s)
        wait_stored(dsn, len(sent), 120)
    finally:
        up.close()
        stats = cols.finish()
    commits = {(s, q): t for st in stats for s, q, t in st["commits"]}
    lags = [commits[k] - t for k, t in sent.items() if k in commits]
    return {"phase": "paced", "collectors": ncol, "reports": len(sent),
            "offered_per_s": round(len(sent) / dt, 1),
            "lag_p50_ms": round(1000 * pct(lags, 0.5), 1),
            "lag_p99_ms": round(1000 * pct(lags, 0.99), 1),
            "lag_max_ms": round(1000 * max(lags), 1),
            "per_collector": [len(s["commits"]) for s in stats]}


def run_capacity(a: argparse.Namespace, ncol: int, tag: str, port: int, pg: Any,
                 fleet: Fleet, enrol: Path, work: Path) -> dict[str, Any]:
    dsn = pg.new_database()
    # Create the collectors' sessions, stop them, queue the backlog, then drain.
    start_collectors(ncol, port, dsn, enrol, tag, work).finish()
    up = Uplinks(port, a.connections, tag)
    kinds = ("health", "drift")
    for j in range(a.backlog):
        i = j % len(fleet.sites)
        site, _, payload = fleet.report(i, kinds[(j // len(fleet.sites)) % 2])
        up.send(i, site, payload)
    while up.acked < a.backlog:
        time.sleep(0.05)
    up.close()
    cols = start_collectors(ncol, port, dsn, enrol, tag, work)
    try:
        wait_stored(dsn, a.backlog, 300)
    finally:
        stats = cols.finish()
    # first to last commit over all collectors: process start-up is not drain time
    times = sorted(t for st in stats for _, _, t in st["commits"])
    return {"phase": "capacity", "collectors": ncol, "reports": a.backlog,
            "stored_per_s": round((len(times) - 1) / (times[-1] - times[0]), 1),
            "write_share": [round(s["put_s"] / s["handle_s"], 3) if s["handle_s"] else None
                            for s in stats],
            "per_collector": [len(s["commits"]) for s in stats]}


def storage(n: int, work: Path, pg: Any) -> dict[str, float]:
    """Bytes on disk per stored report (half health, half drift), indexes included."""
    import psycopg

    from fleet.store import open_postgres, open_sqlite
    from fleet.verify import verify

    fleet = Fleet(100, work / "st-enrol", work)
    from fleet.enrol import Enrolment

    keys = Enrolment(work / "st-enrol").keys()
    dsn = pg.new_database()
    stores = {"postgres": open_postgres(dsn), "sqlite": open_sqlite(work / "st.sqlite")}
    wire = 0
    for j in range(n):
        _, _, payload = fleet.report(j % 100, ("health", "drift")[j % 2])
        wire += len(payload)
        r = verify(payload, keys, max_bytes=256 * 1024, k=20, received=time.time())
        for st in stores.values():
            st.put(r)
    for st in stores.values():
        st.close()
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("VACUUM ANALYZE reports")
        row = c.execute("SELECT pg_total_relation_size('reports')").fetchone()
    pg_bytes = float(row[0]) if row else float("nan")
    return {"reports": n, "wire_bytes_per_report": round(wire / n, 1),
            "postgres_bytes_per_report": round(pg_bytes / n, 1),
            "sqlite_bytes_per_report": round((work / "st.sqlite").stat().st_size / n, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gateways", type=int, default=1000)
    ap.add_argument("--speedup", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=20.0, help="paced phase length")
    ap.add_argument("--backlog", type=int, default=6000, help="capacity phase reports")
    ap.add_argument("--rounds", type=int, default=2, help="ABAB rounds")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--health-s", type=float, default=300.0)
    ap.add_argument("--drift-s", type=float, default=360.0)
    ap.add_argument("--storage-only", type=int, metavar="N", default=0,
                    help="only measure bytes per stored report over N reports")
    a = ap.parse_args()
    if a.storage_only:
        from tests.pgkit import running_postgres

        with tempfile.TemporaryDirectory(prefix="fleet-scale-") as tmp, \
                running_postgres() as pg:
            res = storage(a.storage_only, Path(tmp), pg)
        print(json.dumps(res))
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{time.strftime('%Y-%m-%d')}-fleet-storage.json").write_text(
            json.dumps(res, indent=1))
        return

    from tests.conftest import start_mosquitto
    from tests.pgkit import running_postgres

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fleet-scale-") as tmp:
        work = Path(tmp)
        enrol = work / "enrol"
        t0 = time.perf_counter()
        fleet = Fleet(a.gateways, enrol, work)
        print(f"{a.gateways} gateways keyed and enrolled in {time.perf_counter() - t0:.1f} s",
              flush=True)
        broker = start_mosquitto(work / "cloud")
        try:
            with running_postgres() as pg:
                for r in range(a.rounds):
                    for ncol in (1, 2):
                        for fn in (run_paced, run_capacity):
                            tag = f"r{r}{fn.__name__[4]}{ncol}"
                            row = fn(a, ncol, tag, broker.port, pg, fleet, enrol, work)
                            row["round"] = r
                            rows.append(row)
                            print(json.dumps(row), flush=True)
        finally:
            broker.stop()
    summary = summarise(a, rows)
    print(summary)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%d")
    (RESULTS / f"{stamp}-fleet-scale.json").write_text(json.dumps(
        {"args": vars(a), "cpus": os.cpu_count(), "rows": rows}, indent=1))
    (RESULTS / f"{stamp}-fleet-scale.md").write_text(summary)


def summarise(a: argparse.Namespace, rows: list[dict[str, Any]]) -> str:
    def med(phase: str, ncol: int, key: str) -> float:
        vals = [float(r[key]) for r in rows if r["phase"] == phase and r["collectors"] == ncol]
        return round(statistics.median(vals), 1)

    lines = [f"# Fleet at scale ({a.gateways} gateways, {a.speedup:g}x real rate)", "",
             f"`python -m bench.fleet_scale --gateways {a.gateways} --speedup {a.speedup:g} "
             f"--seconds {a.seconds:g} --backlog {a.backlog} --rounds {a.rounds}`; "
             f"{os.cpu_count()} CPUs shared with other users (ABAB order), Mosquitto, "
             "PostgreSQL (fsync on), publisher and collectors on the same host.", "",
             "| collectors | offered/s | lag p50 ms | lag p99 ms | drain reports/s | "
             "write share |", "|---|---|---|---|---|---|"]
    for n in (1, 2):
        shares = [s for r in rows if r["phase"] == "capacity" and r["collectors"] == n
                  for s in r["write_share"] if s is not None]
        lines.append(f"| {n} | {med('paced', n, 'offered_per_s')} | "
                     f"{med('paced', n, 'lag_p50_ms')} | {med('paced', n, 'lag_p99_ms')} | "
                     f"{med('capacity', n, 'stored_per_s')} | "
                     f"{statistics.median(shares) if shares else float('nan'):.2f} |")
    ratio = med("capacity", 2, "stored_per_s") / med("capacity", 1, "stored_per_s")
    lines += ["", f"2 collectors / 1 collector (drain): {ratio:.2f}x", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
