"""Micro figures behind bench/hotpath.py, each in a fresh interpreter (import costs count).

    .venv/bin/python -m bench.hotpath_micro store     # the history store alone
    .venv/bin/python -m bench.hotpath_micro drift     # DriftReporter vs per-batch updates
    .venv/bin/python -m bench.hotpath_micro compact   # one steady-state compaction
"""

from __future__ import annotations

import inspect
import sys
import tempfile
import time
from pathlib import Path


def store() -> str:
    """CPU of the store for the cost figure's stream: 120k single readings (500 assets x
    4 signals x 60 s), 4096 per batch, a flush every 5 batches, then the agent's stop."""
    from edge.ingest.readings import Reading
    from edge.store.parquet import ParquetStore
    items = [Reading(f"a{a}", f"s{s}", 1.7e9 + t, 10.0 + (a + s + t) % 7)
             for t in range(60) for a in range(500) for s in range(4)]
    with tempfile.TemporaryDirectory() as d:
        st = ParquetStore(Path(d))
        c0 = time.process_time()
        for k, i in enumerate(range(0, len(items), 4096)):
            st.append_readings(items[i:i + 4096])
            if k % 5 == 4:
                st.flush()
        c1 = time.process_time()
        if "compact" in inspect.signature(st.close).parameters:
            st.close(compact=False)  # as Agent.stop
        else:  # a tree from before close(compact=...): its stop compacted
            st.close()
        c2 = time.process_time()
    return (f"append+flush {c1 - c0:.3f} s, stop {c2 - c1:.3f} s, total {c2 - c0:.3f} s, "
            f"pandas imported: {'pandas' in sys.modules}")


def drift() -> str:
    """us/window: DriftMonitor.update per pipeline batch vs DriftReporter (blocks)."""
    import numpy as np

    from edge.bundle import Histogram, Manifest
    from edge.drift import DriftMonitor
    from edge.infer import ScoredWindow
    from edge.metrics import Metrics
    from edge.reporting import DriftReporter
    names = [f"f{i}" for i in range(40)]  # a C-MAPSS-sized feature set
    h = Histogram(edges=[-1.0, 0.0, 1.0], proportions=[0.16, 0.34, 0.34, 0.16], mean=0.0,
                  std=1.0)
    m = Manifest.model_validate({
        "name": "m", "version": "1", "signals": [{"name": "s"}], "sample_period_s": 1.0,
        "window": 4, "hop": 4,
        "output": {"kind": "anomaly", "score_output": "score", "alert_when": "above",
                   "feature_names": names},
        "thresholds": {"warning": 2.0},
        "reference": {"features": {n: h for n in names}, "score": h},
        "model_sha256": "ab" * 32})
    rng = np.random.default_rng(0)
    n = 20_000
    devs, scores = rng.normal(size=(n, 40)), rng.normal(size=n)
    wins = [ScoredWindow(asset="a", ts=float(i), score=float(scores[i]), deviations=devs[i],
                         model="m") for i in range(n)]
    out = []
    for bs in (4, 16, 64):
        mon = DriftMonitor(m, 360)
        t = time.process_time()
        for i in range(0, n, bs):
            b = wins[i:i + bs]
            mon.update(np.stack([w.deviations for w in b]),
                       np.fromiter((w.score for w in b), float, len(b)))
        direct = time.process_time() - t
        rep = DriftReporter(m, 360, Metrics())
        t = time.process_time()
        for i in range(0, n, bs):
            rep.on_scores(wins[i:i + bs])
        out.append(f"batch {bs}: update per batch {direct * 1e6 / n:.1f} us/window, "
                   f"DriftReporter {(time.process_time() - t) * 1e6 / n:.1f} us/window")
    return "\n".join(out)


def compact() -> str:
    """One compaction at the default trigger: 500k rows = 1,000 assets x 10 signals x 50 s."""
    import numpy as np

    from edge.store.parquet import ParquetStore
    with tempfile.TemporaryDirectory() as d:
        st = ParquetStore(Path(d), wal_max_rows=10**9)
        sig = [f"s{i}" for i in range(10)]
        for t in range(50):
            for a in range(1000):
                st.append(f"m{a}", sig, np.full(10, 1.7e9 + t), np.arange(10.0))
            st.flush()
        c, w = time.process_time(), time.perf_counter()
        n = st.compact()
        return (f"compaction of {n} rows into 1000 partitions: "
                f"{time.process_time() - c:.2f} s CPU, {time.perf_counter() - w:.1f} s wall")


if __name__ == "__main__":
    print({"store": store, "drift": drift, "compact": compact}[sys.argv[1]]())
