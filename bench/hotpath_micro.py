"""Micro figures behind bench/hotpath.py, each in a fresh interpreter (import costs count).

    .venv/bin/python -m bench.hotpath_micro store     # the history store alone
    .venv/bin/python -m bench.hotpath_micro drift     # DriftReporter vs per-batch updates
    .venv/bin/python -m bench.hotpath_micro compact   # one steady-state compaction
    .venv/bin/python -m bench.hotpath_micro stall [runs]  # pipeline stall during a compaction
"""

from __future__ import annotations

import inspect
import itertools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def store() -> str:
    """CPU of the store for the cost figure's stream: 120k single readings (500 assets x
    4 signals x 60 s), 4096 per batch, a flush every 5 batches, then the agent's stop."""
    from edge.history.parquet import ParquetStore
    from edge.ingest.readings import Reading
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

    from edge.core.metrics import Metrics
    from edge.drift.monitor import DriftMonitor
    from edge.drift.reporting import DriftReporter
    from edge.models.bundle import Histogram, Manifest
    from edge.models.infer import ScoredWindow
    names = [f"f{i}" for i in range(40)]  # a C-MAPSS-sized feature set
    h = Histogram(edges=[-1.0, 0.0, 1.0], proportions=[0.16, 0.34, 0.34, 0.16], mean=0.0,
                  std=1.0)
    m = Manifest.model_validate({
        "schema_version": 2,  # schema 2: drift needs no alert_policy
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

    from edge.history.parquet import ParquetStore
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


def _stall_case(work: Path, bundle: tuple[Path, Path], background: bool) -> dict[str, float]:
    """The agent's pipeline thread fed ~20k single-reading messages/s while the store's
    write-ahead log crosses the default trigger (490k rows pre-filled); returns the
    largest gap between two successive pipeline batches that overlaps the compaction."""
    import threading

    import numpy as np
    import orjson

    from bench import ingest
    from edge.history.flush import StoreFlushPolicy
    from edge.history.parquet import ParquetStore
    from edge.ingest.message import Message
    agent = ingest.Agent(ingest.agent_cfg(work, *bundle, 1, drift={"enabled": False}))
    kw: dict[str, Any] = {"background": background} if background else {}
    st = ParquetStore(work / "bench-history", **kw)
    sig = [f"x{i}" for i in range(10)]
    for t in range(49):  # 490k rows: the live stream pushes the log over 500k
        for a in range(1000):
            st.append(f"m{a}", sig, np.full(10, ingest.T0 - 1000 + t), np.arange(10.0))
        st.flush()
    agent.pipeline.store = StoreFlushPolicy(st, 1.0, 50_000)  # type: ignore[assignment]
    if background:
        st.start()
    spans: list[tuple[float, float]] = []
    real_compact = st.compact

    def compact(*a: Any, **k: Any) -> int:
        t0 = time.perf_counter()
        try:
            return real_compact(*a, **k)
        finally:
            spans.append((t0, time.perf_counter()))
    st.compact = compact  # type: ignore[method-assign]
    ends: list[tuple[float, int]] = []
    real_process = agent.pipeline.process

    def process(msgs: list[Message]) -> None:
        real_process(msgs)
        ends.append((time.perf_counter(), len(msgs)))
    agent.pipeline.process = process  # type: ignore[method-assign]
    stop = threading.Event()

    def feed() -> None:  # 50 assets x 4 signals a data second, 100 data seconds a second
        t = 0
        while not stop.is_set():
            now = time.time()
            for _ in range(5):
                for a in range(50):
                    for s in range(4):
                        agent.inbox.put(Message(f"forewarn/site1/a{a}/s{s}", orjson.dumps(
                            {"ts": ingest.T0 + t, "value": 10.0 + (a + s + t) % 7}), now, 0, 0))
                t += 1
            time.sleep(0.01)
    feeder = threading.Thread(target=feed, daemon=True)
    agent.pipeline.start()
    feeder.start()
    deadline = time.monotonic() + 120
    while not spans and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    stop.set()
    feeder.join()
    agent.pipeline._stop.set()
    assert agent.pipeline._thread is not None
    agent.pipeline._thread.join(30)
    st.close(compact=False)
    agent.alert_store.close()
    if not spans:
        raise RuntimeError(f"{work}: no compaction within 120 s")
    cs, ce = spans[0]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(ends)
            if b[0] >= cs and a[0] <= ce]
    during = sum(n for t, n in ends if cs <= t <= ce)
    before = sum(n for t, n in ends if cs - 1.0 <= t < cs)
    return {"compaction_wall_s": ce - cs, "max_gap_s": max(gaps, default=ce - cs),
            "p99_gap_s": float(np.percentile(gaps, 99)) if gaps else ce - cs,
            "batches_during": sum(1 for t, _ in ends if cs <= t <= ce),
            "msgs_per_s_during": during / (ce - cs), "msgs_per_s_before": before / 1.0}


def stall(runs: int = 2) -> str:
    """Inline compaction (on the pipeline thread) vs the store's compactor thread, runs
    interleaved in one process; a tree without the compactor measures inline only."""
    import statistics

    from bench.hotpath import _bundles
    from edge.history.parquet import ParquetStore
    modes = [False]
    if "background" in inspect.signature(ParquetStore).parameters:
        modes.append(True)
    rows: dict[bool, list[dict[str, float]]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        bundle = _bundles(work)["ingest"]
        for r in range(runs):
            for m in modes:
                rows[m].append(_stall_case(work / f"{'bg' if m else 'inline'}{r}", bundle, m))
                print("background" if m else "inline", r,
                      {k: round(v, 3) for k, v in rows[m][-1].items()}, flush=True)
    med = {m: {k: statistics.median(x[k] for x in v) for k in v[0]} for m, v in rows.items()}
    out = [f"{'background' if m else 'inline'} (median of {runs}): "
           + ", ".join(f"{k} {v:.3f}" for k, v in x.items()) for m, x in med.items()]
    if True in med:
        out.append(f"background/inline: max pipeline gap during compaction "
                   f"{med[True]['max_gap_s'] / med[False]['max_gap_s']:.4f}, compaction wall "
                   f"{med[True]['compaction_wall_s'] / med[False]['compaction_wall_s']:.2f}")
    return "\n".join(out)


if __name__ == "__main__":
    if sys.argv[1] == "stall":
        print(stall(int(sys.argv[2]) if len(sys.argv) > 2 else 2))
    else:
        print({"store": store, "drift": drift, "compact": compact}[sys.argv[1]]())
