"""Multi-process ingest draining a backlog: readings/s, windows and late drops per process count.

Each run: a fresh Mosquitto, the agent's sessions created, the single-JSON stream
(500 assets x 4 signals x 60 slots, one reading per QoS 0 message) published while
the agent is away, then a fresh agent drains it (bench/ingest.py ``drain_agent``).
The bare paho counter on the same stream is the baseline of each run.

    .venv/bin/python -m bench.ingest_processes --runs 3 --procs 1 2 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench import ingest
from bench.common import summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2, 3])
    args = ap.parse_args()
    from tests.bundlefactory import make_bundle

    with tempfile.TemporaryDirectory(prefix="fw-procs-") as tmp:
        work = Path(tmp)
        bundle = make_bundle(work / "m", name="ingest", signals=[f"s{i}" for i in range(4)],
                             window=16, hop=4, warning=1e9)
        stream = ingest.single_json()
        paho: list[float] = []
        rows: dict[int, list[dict[str, float]]] = {p: [] for p in args.procs}
        for r in range(args.runs):
            paho.append(ingest.fresh(work, ingest._drain_paho, stream, 60))
            for p in args.procs:
                row = ingest.fresh(work, ingest.drain_agent, stream, bundle,
                                   work / f"p{p}-{r}", 90, p, storage={"enabled": False})
                rows[p].append(row)
                print(f"run {r} processes {p}: {json.dumps(row)}", flush=True)
        base = summary(paho)
        out = {"stream": stream.name, "readings": stream.readings,
               "windows_expected": stream.windows, "paho_count": base}
        for p, rs in rows.items():
            rate = summary([x["rate"] for x in rs])
            out[f"agent_p{p}"] = rate | {
                "windows_min": min(x["windows"] for x in rs),
                "late_max": max(x["late"] for x in rs),
                "queue_dropped_max": max(x["queue_dropped"] for x in rs),
                "complete_runs": sum(x["complete"] for x in rs),
                "vs_paho": rate["median"] / base["median"],
                "vs_p1": rate["median"] / summary([x["rate"] for x in rows[args.procs[0]]])[
                    "median"]}
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
