"""An opening's own work, from ``Pipeline.process`` to its event's publish, in one thread.

Run: ``.venv/bin/python -m bench.opening_path [--messages 6000] [--no-fsync]``.
The stream and agent of :mod:`bench.alert_instructions` (50 assets, every fifth
value opens an alert, one message per batch as at 1,000 msg/s), on the path a
quiet stream takes in the agent: the network thread processes the message, and
the alert manager fsyncs and publishes in it (group commit, ``sync_here``).
Publishing is recorded, not sent. ``--no-fsync`` leaves the WAL fsync out, so
two trees can be compared on their CPU work without the disk's noise (the fsync
is the same call in the bare loop). Prints medians over the messages after a
500-message warm-up: to the opening's event, the opening's whole batch, and the
other messages' batches. Wall clock: compare two trees interleaved, several
times (``cd TREE && python -m bench.opening_path`` in turn).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.alert_instructions import stream


def run(n: int, fsync: bool) -> dict[str, float]:
    from bench import ingest
    from edge.app import Agent
    from edge.ingest.message import Message
    from tests.bundlefactory import make_bundle

    with tempfile.TemporaryDirectory(prefix="forewarn-opening-") as tmp:
        work = Path(tmp)
        b = make_bundle(work / "m", name="latency", signals=["x"], window=2, hop=1,
                        warning=40.0, reset=30.0, max_hold=0)
        msgs = stream(n)
        a = Agent(ingest.agent_cfg(work / "lat", *b, 1, storage={"enabled": False},
                                   alerts={"clear_after": 3}))
        marks: list[float] = []

        def site(topic: str, payload: bytes, retain: bool = False) -> None:
            if "/events/" in topic and b'"opened"' in payload:
                marks.append(time.perf_counter())

        a.publisher.site = site
        a.alerts.sync_here = lambda: True  # as in the network thread's inline path
        if not fsync:
            a.alert_store._sync_wal = lambda: None  # type: ignore[method-assign]
        now = time.time()
        to_event: list[float] = []
        opening: list[float] = []
        other: list[float] = []
        for i, (topic, payload) in enumerate(msgs):
            marks.clear()
            t0 = time.perf_counter()
            a.pipeline.process([Message(topic, payload, now, 0, 0)])
            t1 = time.perf_counter()
            if i < 500:
                continue
            if marks:
                to_event.append(marks[0] - t0)
                opening.append(t1 - t0)
            elif b"100.0" not in payload:
                other.append(t1 - t0)
        a.alert_store.close()
    return {"to_event_us": statistics.median(to_event) * 1e6,
            "opening_batch_us": statistics.median(opening) * 1e6,
            "other_batch_us": statistics.median(other) * 1e6, "openings": len(to_event)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=6000)
    ap.add_argument("--no-fsync", action="store_true", help="leave the WAL fsync out")
    args = ap.parse_args()
    r = run(args.messages, not args.no_fsync)
    print(" ".join(f"{k}={v:.0f}" for k, v in r.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
