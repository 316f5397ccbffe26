"""What the agent's Python heap holds after the memory figure's burst, by allocation site.

Run: ``python -m bench.heap_growth [--frames N] [--top N] [--no-trace]``. One agent
process as the memory figure runs it (``bench.run._memory``: API on, storage on, 60,000
messages of 10 signals from 1,000 assets), with ``tracemalloc`` started before its first
import. A snapshot is taken at idle and another 5 s after the burst (both after a
``gc.collect``); the report lists the allocation sites that grew most between them.

tracemalloc sees only what Python's allocators hand out (objects, numpy buffers). The
gap between its growth and RSS's is what the C libraries allocate on their own (SQLite's
page cache, paho's and onnxruntime's buffers) plus the free space the allocators keep.
Tracing doubles idle RSS and slows the agent, so its RSS figures are printed apart from
the untraced ones: ``--no-trace`` gives the RSS of the same run without tracing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import orjson

from bench.common import free_port, publish_packet, raw_publish, start_broker, wait_for
from bench.figures import rss_mb
from bench.ingest import T0
from bench.run import REPO, _scrape

AGENT = """\
import gc, json, signal, threading, tracemalloc
from pathlib import Path
TRACE, FRAMES, OUT = {trace!r}, {frames!r}, {out!r}
if TRACE:
    tracemalloc.start(FRAMES)
def dump(n):
    gc.collect()
    if TRACE:
        tracemalloc.take_snapshot().dump(f"{{OUT}}/snap{{n}}")
    Path(f"{{OUT}}/done{{n}}").touch()
signal.signal(signal.SIGUSR1, lambda *_: dump(1))
signal.signal(signal.SIGUSR2, lambda *_: dump(2))
from edge.core.config import parse_config
from edge.app import Agent
a = Agent(parse_config(json.loads(Path({cfg!r}).read_text())))
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
a.start(); stop.wait(); a.stop()
"""


def _snapshot(pid: int, out: Path, n: int, sig: signal.Signals) -> None:
    os.kill(pid, sig)
    wait_for(lambda: (out / f"done{n}").exists(), 120, f"snapshot {n}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.heap_growth", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=8, help="frames per traceback (8)")
    ap.add_argument("--top", type=int, default=15, help="allocation sites listed (15)")
    ap.add_argument("--no-trace", action="store_true", help="RSS only, without tracemalloc")
    args = ap.parse_args(argv)
    from tests.bundlefactory import make_bundle

    with tempfile.TemporaryDirectory(prefix="heap-growth-") as tmp:
        work = Path(tmp)
        bundle, pub = make_bundle(work / "m", name="mem", signals=[f"s{i}" for i in range(10)],
                                  window=30, hop=10, warning=1e9)
        broker = start_broker(work / "mb")
        port = free_port()
        cfg = {"site": "site1", "state_dir": str(work / "state"),
               "mqtt": {"port": broker.port, "client_id": "mem"},
               "bundle": {"path": str(bundle), "trusted_keys": [str(pub)]},
               "api": {"port": port}, "storage": {"enabled": True}}
        (work / "cfg.json").write_text(json.dumps(cfg))
        code = AGENT.format(trace=not args.no_trace, frames=args.frames, out=str(work),
                            cfg=str(work / "cfg.json"))
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
        url = f"http://127.0.0.1:{port}/metrics"
        try:
            wait_for(lambda: _scrape(url, "forewarn_mqtt_connected") == 1, 60, "agent")
            time.sleep(2.0)  # start() is still running when the link is up (bench.run)
            _snapshot(proc.pid, work, 1, signal.SIGUSR1)
            idle, peak, n = rss_mb(proc.pid), 0.0, 0
            print(f"idle RSS {idle:.1f} MB; publishing 60,000 messages", flush=True)
            for t0 in range(0, 60, 10):
                n += raw_publish(broker.port, [publish_packet(
                    f"forewarn/site1/m{a}", orjson.dumps(
                        {"ts": T0 + t, "values": {f"s{i}": 1.0 + (a + i + t) % 5
                                                  for i in range(10)}}))
                    for t in range(t0, t0 + 10) for a in range(1000)])
                peak = max(peak, rss_mb(proc.pid))
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                peak = max(peak, rss_mb(proc.pid))
                if ((_scrape(url, "forewarn_readings_received_total") or 0) >= n * 10
                        and (_scrape(url, "forewarn_storage_compactions_total") or 0) >= 1):
                    break
                time.sleep(0.1)
            time.sleep(5.0)
            after = rss_mb(proc.pid)
            _snapshot(proc.pid, work, 2, signal.SIGUSR2)
        finally:
            proc.terminate()
            proc.wait(60)
            broker.stop()
        label = "untraced" if args.no_trace else "traced (tracing roughly doubles it)"
        print(f"RSS {label}: idle {idle:.1f}, peak {peak:.1f}, 5 s after {after:.1f} MB")
        if args.no_trace:
            return 0
        a = tracemalloc.Snapshot.load(str(work / "snap1"))
        b = tracemalloc.Snapshot.load(str(work / "snap2"))
        size = [sum(s.size for s in x.statistics("filename")) / 2**20 for x in (a, b)]
        print(f"traced heap: idle {size[0]:.1f} MB, 5 s after {size[1]:.1f} MB "
              f"(+{size[1] - size[0]:.1f})")
        site = str(Path(sys.prefix) / "lib")
        for st in b.compare_to(a, "traceback")[:args.top]:
            print(f"{st.size_diff / 1024:+9.1f} kB  {st.count_diff:+7d} blocks")
            for fr in st.traceback.format()[-2 * min(args.frames, 4):]:
                if fr.strip():
                    print("      " + fr.strip().replace(site, "<venv>"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
