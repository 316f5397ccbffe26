"""Where the publish -> durable alert event latency goes, stage by stage (issue #19).

Run: ``.venv/bin/python -m bench.latency_stages [--runs 2]``. The latency figure's
stream (1,000 msg/s, 50 assets, ~200 openings/s, measured by an external client)
through an in-process agent whose hand-over points are wrapped to take a
timestamp (all on the one monotonic clock; ``Message.received`` is wall time
and is converted). For each opening event:

* ``queue``: the network thread's enqueue -> the pipeline batch that holds it starts
  (the wait for the pipeline thread, its previous batch and the batch assembly);
* ``pipeline``: batch start -> its events handed to the syncer (decode, window,
  score, rules, the SQLite commit without fsync);
* ``syncer``: hand-over -> the WAL fsync starts (the syncer thread's wake-up and
  any group still in flight);
* ``fsync``: the fsync of the group;
* ``publish``: fsync done -> paho has the event (``_deliver`` returns);
* the rest of the external figure is paho's network thread, the broker and the
  client (not visible from inside).

Also printed: messages per pipeline batch (the batch path takes what the inbox
holds, up to 4,096) and WAL fsyncs per opening event (group commit shares them).

The wrappers cost a few microseconds per batch: this is a diagnostic, its
end-to-end figure is not the one ``make bench`` reports.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import figures, ingest
from bench.common import start_broker, wait_for
from edge.app import Agent

STAGES = ("queue", "pipeline", "syncer", "fsync", "publish")


def _instrument(agent: Any) -> tuple[dict[tuple[str, float], dict[str, float]], list[int],
                                     list[float]]:
    """Wrap the agent's hand-over points; per opening (asset, data_ts) -> stage times,
    and the messages per pipeline batch and the start of every WAL fsync."""
    marks: dict[tuple[str, float], dict[str, float]] = {}
    sizes: list[int] = []
    fsyncs: list[float] = []
    lock = threading.Lock()
    offset = time.time() - time.perf_counter()  # wall -> monotonic for Message.received
    cur: dict[str, Any] = {"batch": None, "sync": None}
    pipe, mgr, store = agent.pipeline, agent.alerts, agent.alert_store
    process, post, sync, deliver = pipe.process, mgr._post, store.sync, mgr._deliver

    def process_w(msgs: list[Any], **kw: Any) -> None:
        t0 = time.perf_counter()
        sizes.append(len(msgs))
        hot = []
        for m in msgs:
            if b"100.0}" in m.payload:  # the stream's crossing value
                hot.append((m.topic.split("/")[2], float(json.loads(m.payload)["ts"]),
                            m.received - offset))
        cur["batch"] = (t0, hot)
        process(msgs, **kw)

    def post_w() -> None:
        t = time.perf_counter()
        batch = cur["batch"]
        if batch is not None:
            with lock:
                for asset, ts, recv in batch[1]:
                    marks.setdefault((asset, ts), {"recv": recv, "start": batch[0], "post": t})
        post()

    def sync_w() -> None:
        t0 = time.perf_counter()
        fsyncs.append(t0)
        sync()
        cur["sync"] = (t0, time.perf_counter())

    def deliver_w(topic: str, body: bytes, retain: bool) -> None:
        deliver(topic, body, retain)
        if "/events/" not in topic:
            return
        ev = json.loads(body)
        if ev.get("event") not in ("opened", "open"):
            return
        key = (topic.rsplit("/", 1)[1], float(ev.get("data_ts", 0.0)))
        t = time.perf_counter()
        with lock:
            m = marks.get(key)
            if m is not None and "sent" not in m:
                s0, s1 = cur["sync"] or (m["post"], m["post"])
                m.update(sync0=max(s0, m["post"]), sync1=max(s1, m["post"]), sent=t)

    pipe.process, mgr._post, store.sync, mgr._deliver = process_w, post_w, sync_w, deliver_w
    return marks, sizes, fsyncs


def run_once(work: Path) -> dict[str, Any]:
    from tests.bundlefactory import make_bundle
    b = make_bundle(work / "m", name="latency", signals=["x"], window=2, hop=1,
                    warning=40.0, reset=30.0, max_hold=0)
    br = start_broker(work / "lb")
    agent = Agent(ingest.agent_cfg(work / "lat", *b, br.port,
                                          storage={"enabled": False},
                                          alerts={"clear_after": 3}))
    marks, batch_sizes, fsyncs = _instrument(agent)
    agent.start()
    try:
        wait_for(agent.conn.connected.is_set, 20, "latency agent")
        e2e = figures.latency_external(br)
    finally:
        agent.stop()
        br.stop()
    done = [m for m in marks.values() if "sent" in m]
    spans = {"queue": [m["start"] - m["recv"] for m in done],
             "pipeline": [m["post"] - m["start"] for m in done],
             "syncer": [m["sync0"] - m["post"] for m in done],
             "fsync": [m["sync1"] - m["sync0"] for m in done],
             "publish": [m["sent"] - m["sync1"] for m in done],
             "inside": [m["sent"] - m["recv"] for m in done]}
    sizes = np.asarray(batch_sizes)
    out: dict[str, Any] = {"events": len(done), "e2e_p50_ms": e2e["p50_ms"],
                           "e2e_p99_ms": e2e["p99_ms"], "batches": len(sizes),
                           "batch_msgs_p50": float(np.percentile(sizes, 50)),
                           "batch_msgs_p99": float(np.percentile(sizes, 99)),
                           "batch_msgs_max": float(sizes.max()),
                           "fsyncs_per_event": len(fsyncs) / max(len(done), 1)}
    for k, v in spans.items():
        q = np.percentile(np.asarray(v) * 1e3, [50, 99])
        out[f"{k}_p50_ms"], out[f"{k}_p99_ms"] = float(q[0]), float(q[1])
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    rows = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="forewarn-stages-") as tmp:
            rows.append(run_once(Path(tmp)))
            print(json.dumps({k: round(v, 3) for k, v in rows[-1].items()}), flush=True)
    print("| stage | p50 ms | p99 ms |\n|---|---|---|")
    for k in (*STAGES, "inside", "e2e"):
        p50 = float(np.median([r[f"{k}_p50_ms"] for r in rows]))
        p99 = float(np.median([r[f"{k}_p99_ms"] for r in rows]))
        print(f"| {k} | {p50:.3f} | {p99:.3f} |")
    for k in ("batch_msgs_p50", "batch_msgs_p99", "batch_msgs_max", "fsyncs_per_event"):
        print(f"{k}: median {float(np.median([r[k] for r in rows])):.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
