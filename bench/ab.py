"""Interleaved A/B of two revisions on the same machine in the same run.

Run: ``.venv/bin/python -m bench.ab --base REF [--head REF] [--rounds 3] [--figures ...]``.

Absolute figures move 20-30 % between runs on a shared 2-core VM, so a change is
judged only against the code it replaces measured in the same minutes: each
round runs every figure for both sides, in ABBA order across rounds so a slow
drift of the machine favours neither. ``--base`` (and ``--head``, default: the
working tree) are checked out with ``git worktree`` into a temporary directory
and each figure runs in a fresh interpreter whose ``PYTHONPATH`` is that side's
tree, through that side's own ``bench`` functions (their names are the interface
this script relies on). Output: medians per side, the ratio head/base, and a
JSON file with every sample (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# Runs inside one side's tree; prints one JSON object of figures.
_CHILD = r'''
import json, os, sys
from pathlib import Path
fig, work = sys.argv[1], Path(sys.argv[2])
from bench import figures, ingest
from bench.common import wait_for
from tests.bundlefactory import make_bundle
work.mkdir(parents=True, exist_ok=True)
res = {}
if fig == "latency":
    b = make_bundle(work / "m", name="latency", signals=["x"], window=2, hop=1,
                    warning=40.0, reset=30.0, max_hold=0)
    br = ingest.start_broker(work / "lb")
    cfg = ingest.agent_cfg(work / "lat", *b, br.port, storage={"enabled": False},
                           alerts={"clear_after": 3})
    a = ingest.Agent(cfg)
    a.start()
    try:
        wait_for(a.conn.connected.is_set, 20, "latency agent")
        r = figures.latency_external(br)
        res = {"latency_p50_ms": r["p50_ms"], "latency_p99_ms": r["p99_ms"]}
    finally:
        a.stop()
    try:
        from bench import limits
    except ImportError:  # a base from before the limits existed
        limits = None
    try:
        if limits is not None:
            lb = limits.bare_loop(work / "bare", br, b[0])
            res |= {"bare_p50_ms": lb["p50_ms"], "bare_p99_ms": lb["p99_ms"],
                    "bare_answered": lb["events"] / lb["crossings"]}
            if lb["events"] >= 0.99 * lb["crossings"]:  # else it fell behind: no ratio
                res |= {"latency_vs_bare_p50": r["p50_ms"] / lb["p50_ms"],
                        "latency_vs_bare_p99": r["p99_ms"] / lb["p99_ms"]}
    finally:
        br.stop()
elif fig == "single_json":
    stream = ingest.single_json()
    b = make_bundle(work / "m", name="ingest", signals=[f"s{i}" for i in range(4)],
                    window=16, hop=4, warning=1e9)
    paho, _ = ingest.ceilings(work, stream, 60)
    r = ingest.fresh(work, ingest.drain_agent, stream, b, work / "st", 90, 1,
                     storage={"enabled": False})
    res = {"single_json_rate": r["rate"], "paho_rate": paho,
           "single_json_vs_paho": r["rate"] / paho}
elif fig.startswith(("cpu:", "inproc:")):
    # One case per interpreter: a second drain in the same process costs more CPU
    # than the first, which charged the "on" case for running second.
    kind, label = fig.split(":")
    over = {"off": {"storage": {"enabled": False}, "drift": {"enabled": False}},
            "on": {}}[label]
    b = make_bundle(work / "m", name="ingest", signals=[f"s{i}" for i in range(4)],
                    window=16, hop=4, warning=1e9)
    # With a reference, as in make bench: without one drift is not monitored and
    # "on" would measure storage alone.
    from bench.run import _with_reference
    b = _with_reference(*b, work / "m" / "keys" / "signing.key")
    if kind == "cpu":
        r = ingest.fresh(work, ingest.drain_agent, ingest.single_json(), b,
                         work / f"c{label}", 40, 1, **over)
        res[f"cpu_s_storage_drift_{label}"] = r["cpu_s"]
    else:
        # CPU seconds of Pipeline.process over 120k single-reading messages, no MQTT:
        # the hot loop alone, on CPU time, so far less at the mercy of the machine.
        import time
        import orjson
        from edge.ingest.message import Message
        now = time.time()
        msgs = [Message(f"forewarn/site1/a{a}/s{s}", orjson.dumps(
            {"ts": ingest.T0 + t, "value": 10.0 + (a + s + t) % 7}), now, 0, 0)
            for t in range(60) for a in range(500) for s in range(4)]
        agent = ingest.Agent(ingest.agent_cfg(work / label, *b, 1, **over))
        c0 = time.process_time()
        for i in range(0, len(msgs), 4096):
            agent.pipeline.process(msgs[i:i + 4096])
        agent.pipeline._flush_and_ack(force=True)
        if agent.parquet is not None:
            agent.parquet.close(compact=False)  # as Agent.stop
        res[f"inproc_cpu_s_{label}"] = time.process_time() - c0
        agent.alert_store.close()
elif fig == "store":
    # The history store alone: us of CPU per reading to buffer and flush (WAL write and
    # fsync included) the single-JSON stream's 120k readings, 4096 per batch, a flush
    # every 5 batches, as the pipeline calls it. Median of 7 runs in this interpreter.
    import statistics
    import time
    from edge.history.parquet import ParquetStore
    from edge.ingest.readings import Reading
    items = [Reading(f"a{a}", f"s{s}", 1.7e9 + t, 10.0 + (a + s + t) % 7)
             for t in range(60) for a in range(500) for s in range(4)]
    runs = []
    for r in range(7):
        st = ParquetStore(work / f"store{r}")
        c0 = time.process_time()
        for k, i in enumerate(range(0, len(items), 4096)):
            st.append_readings(items[i:i + 4096])
            if k % 5 == 4:
                st.flush()
        st.flush()
        runs.append((time.process_time() - c0) / len(items) * 1e6)
        st.close(compact=False)
    res = {"store_us_per_reading": statistics.median(runs)}
elif fig == "drift_feed":
    # The drift reporter's feed of one 256-window block into the monitor (copy of the
    # windows' deviations, scores and times, then DriftMonitor.update; no interval
    # closes), 4 features (the ingest bundle's) and 40 (a C-MAPSS-sized set).
    import statistics
    import time
    import numpy as np
    from edge.core.metrics import Metrics
    from edge.drift.reporting import DriftReporter
    from edge.models.bundle import Histogram, Manifest
    from edge.models.infer import ScoredWindow
    for width in (4, 40):
        names = [f"f{i}" for i in range(width)]
        rng = np.random.default_rng(0)
        h = Histogram(edges=sorted(rng.normal(size=9).tolist()), proportions=[0.1] * 10,
                      mean=0.0, std=1.0)
        m = Manifest.model_validate({
            "schema_version": 2, "name": "m", "version": "1", "signals": [{"name": "s"}],
            "sample_period_s": 1.0, "window": 4, "hop": 4,
            "output": {"kind": "anomaly", "score_output": "score", "alert_when": "above",
                       "feature_names": names},
            "thresholds": {"warning": 2.0},
            "reference": {"features": {n: h for n in names}, "score": h},
            "model_sha256": "ab" * 32})
        devs = rng.normal(size=(256, width)).astype(np.float32)
        wins = [ScoredWindow(asset="a", ts=float(i), score=float(i), deviations=devs[i],
                             model="m") for i in range(256)]
        rep = DriftReporter(m, 10**9, Metrics())
        t = []
        for _ in range(1000):
            rep._pending = list(wins)
            c0 = time.perf_counter()
            rep._feed()
            t.append(time.perf_counter() - c0)
        res[f"drift_feed_us_f{width}"] = statistics.median(t) * 1e6
elif fig == "scoring":
    b = make_bundle(work / "m", name="scoring", signals=[f"s{i}" for i in range(4)],
                    window=16, hop=4, warning=1e9)
    for batch in (1, 64):
        res[f"scoring_overhead_b{batch}"] = figures.scoring(*b, batch)["overhead"]
elif fig == "memory":
    from bench.run import _memory
    b = make_bundle(work / "m", name="mem", signals=[f"s{i}" for i in range(10)],
                    window=30, hop=10, warning=1e9)
    # Both sides from a dropped page cache (root only), here and not in _memory, which
    # an older base does not have do it: the file-backed part of RSS follows the cache.
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass
    r = _memory(work / "mem", b, storage=True)
    res = {"rss_storage_on_mb": r["peak_mb"], "rss_idle_mb": r["idle_mb"]}
    if "after_mb" in r:  # a base from before the figure has none
        res["rss_after_burst_mb"] = r["after_mb"]
else:
    raise SystemExit(f"unknown figure {fig!r}")
print(json.dumps(res))
'''

FIGURES = ("latency", "single_json", "cpu", "inproc", "scoring", "memory", "store",
           "drift_feed")
# Figures measured as one case per fresh interpreter, the cases in ABBA order too.
_PARTS = {"cpu": ["cpu:off", "cpu:on"], "inproc": ["inproc:off", "inproc:on"]}


def checkout(ref: str, into: Path) -> Path:
    """A detached worktree of ``ref`` (``.`` means the working tree itself)."""
    if ref == ".":
        return REPO
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(into), ref],
                   check=True)
    return into


def run_figure(tree: Path, figure: str, work: Path, timeout: float = 900) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, "-c", _CHILD, figure, str(work)], cwd=tree, env=env,
                         capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{figure} on {tree} failed:\n{out.stderr[-2000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def interleave(sides: dict[str, Path], figures: list[str], rounds: int, work: Path,
               say: Callable[[str], None] = print) -> dict[str, dict[str, list[float]]]:
    """``samples[side][metric]``: every figure for every side, ABBA across rounds."""
    names = list(sides)
    samples: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for fig in figures:
            parts = _PARTS.get(fig, [fig])
            for part in (parts if r % 2 == 0 else parts[::-1]):
                for side in order:
                    res = run_figure(sides[side], part,
                                     work / f"{side}-{part.replace(':', '-')}-{r}")
                    for k, v in res.items():
                        samples[side].setdefault(k, []).append(float(v))
                    say(f"round {r + 1}/{rounds} {part:12s} {side:4s} "
                        + " ".join(f"{k}={v:.4g}" for k, v in res.items()))
    return samples


def table(samples: dict[str, dict[str, list[float]]]) -> str:
    base, head = samples["base"], samples["head"]
    rows = ["| figure | base (median) | head (median) | head / base | samples |",
            "|---|---|---|---|---|"]
    for k in [*base, *(k for k in head if k not in base)]:
        b = statistics.median(base.get(k, [float("nan")]))
        h = statistics.median(head.get(k, [float("nan")]))
        rows.append(f"| {k} | {b:.4g} | {h:.4g} | {h / b if b else float('nan'):.3f} | "
                    f"{len(base.get(k, []))} + {len(head.get(k, []))} |")
    # The cost of storage + drift per side: on / off of the medians, each side's own.
    for on, off in (("cpu_s_storage_drift_on", "cpu_s_storage_drift_off"),
                    ("inproc_cpu_s_on", "inproc_cpu_s_off")):
        if all(on in side and off in side for side in (base, head)):
            b, h = (statistics.median(x[on]) / statistics.median(x[off]) for x in (base, head))
            rows.append(f"| {on} / off | {b:.4g} | {h:.4g} | {h / b:.3f} | medians |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.ab", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="git revision measured as the baseline")
    ap.add_argument("--head", default=".",
                    help="git revision measured against it (default: the working tree)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every figure per side")
    ap.add_argument("--figures", default=",".join(FIGURES),
                    help=f"comma-separated subset of {', '.join(FIGURES)}")
    ap.add_argument("--json", type=Path, default=None, help="write every sample here")
    args = ap.parse_args(argv)
    figures = [f.strip() for f in args.figures.split(",") if f.strip()]
    unknown = sorted(set(figures) - set(FIGURES))
    if unknown:
        ap.error(f"--figures: unknown {', '.join(unknown)} (known: {', '.join(FIGURES)})")
    with tempfile.TemporaryDirectory(prefix="forewarn-ab-") as tmp:
        t = Path(tmp)
        sides = {"base": checkout(args.base, t / "base"), "head": checkout(args.head, t / "head")}
        try:
            samples = interleave(sides, figures, args.rounds, t / "work")
        finally:
            for tree in sides.values():
                if tree != REPO:
                    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                                    str(tree)], check=False)
    print(table(samples))
    if args.json:
        doc: dict[str, Any] = {"base": args.base, "head": args.head, "samples": samples}
        args.json.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
