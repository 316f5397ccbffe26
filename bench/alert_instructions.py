"""The alert path's work per message, agent vs bare durable loop, without MQTT.

Run under callgrind for two message counts and divide the difference (start-up
cancels): ``valgrind --tool=callgrind python -m bench.alert_instructions agent 300``
and ``... agent 1300``, likewise ``bare``. Instruction counts do not depend on the
machine's load, which moved the wall-clock figures 2x between rounds on the
shared VM (bench/results/2026-12-03-alert-latency.md).

The stream is :func:`bench.figures.latency`'s (50 assets, every fifth value a
crossing that opens an alert, cleared after 3 quiet windows), one message per
batch as at 1,000 msg/s. ``agent``: ``Pipeline.process`` of the agent ``make
bench`` measures, publishing stubbed and group commit off, so the fsync and the
messages the syncer thread would handle are counted in this thread. ``bare``:
the body of :func:`bench.limits.bare_loop_main`'s ``on_message``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

BASE_TS = 1_700_000_000


def stream(n: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        a, k = i % 50, i // 50
        v = 100.0 if k % 5 == 0 else 0.0
        out.append((f"forewarn/site1/m{a}/x",
                    json.dumps({"ts": float(BASE_TS + k), "value": v}).encode()))
    return out


def agent(work: Path, bundle: tuple[Path, Path], msgs: list[tuple[str, bytes]]) -> None:
    from bench import ingest
    from edge.ingest.message import Message

    cfg = ingest.agent_cfg(work / "lat", *bundle, 1, storage={"enabled": False},
                           alerts={"clear_after": 3})
    a = ingest.Agent(cfg)
    a.publisher.site = lambda topic, payload, retain=False: None
    a.alerts._group_commit = False  # one thread: its fsync and publishing counted here
    now = time.time()
    for topic, payload in msgs:
        a.pipeline.process([Message(topic, payload, now, 0, 0)])
    a.alert_store.close()


def bare(work: Path, bundle: Path, msgs: list[tuple[str, bytes]]) -> None:
    from bench.limits import bare_step

    step, db = bare_step(bundle, work / "bare.db")
    for topic, payload in msgs:
        step(topic, payload)  # the body is made; there is no socket to write it to
    db.close()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("agent", "bare"):
        print(__doc__)
        return 2
    from tests.bundlefactory import make_bundle

    with tempfile.TemporaryDirectory(prefix="forewarn-instr-") as tmp:
        work = Path(tmp)
        b = make_bundle(work / "m", name="latency", signals=["x"], window=2, hop=1,
                        warning=40.0, reset=30.0, max_hold=0)
        msgs = stream(int(argv[1]))
        if argv[0] == "agent":
            agent(work, b, msgs)
        else:
            bare(work, b[0], msgs)
    print(argv[0], len(msgs), "messages")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
