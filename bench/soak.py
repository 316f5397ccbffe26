"""Soak (not in CI): an agent process under a steady stream for --minutes; RSS and lag.

``.venv/bin/python -m bench.soak --minutes 60 --rate 5000`` prints one line a
minute (RSS MB, readings received, windows scored) and fails if RSS grew by more
than --max-growth-mb after the first minute or if the agent fell behind.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import orjson

from bench import figures, ingest
from bench.common import publish_packet, raw_publish


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--rate", type=int, default=5000, help="messages/s (10 signals each)")
    ap.add_argument("--assets", type=int, default=1000)
    ap.add_argument("--max-growth-mb", type=float, default=20.0)
    a = ap.parse_args()
    from bench.run import _scrape, _spawn_agent
    from tests.bundlefactory import make_bundle
    with tempfile.TemporaryDirectory(prefix="forewarn-soak-") as tmp:
        work = Path(tmp)
        bundle = make_bundle(work / "m", signals=[f"s{i}" for i in range(10)], window=30,
                             hop=10, warning=1e9)
        broker = ingest.start_broker(work / "b")
        proc, url = _spawn_agent(work, bundle, broker.port)
        try:
            sent, t0, base_rss, slot = 0, time.monotonic(), None, 0
            next_report = t0 + 60
            while time.monotonic() - t0 < a.minutes * 60:
                tick = time.monotonic()
                pk = [publish_packet(f"forewarn/site1/m{i}", orjson.dumps(
                    {"ts": ingest.T0 + slot, "values": {f"s{k}": 1.0 + (i + k + slot) % 5
                                                        for k in range(10)}}))
                      for i in range(min(a.assets, a.rate))]
                sent += raw_publish(broker.port, pk)
                slot += 1
                time.sleep(max(0.0, len(pk) / a.rate - (time.monotonic() - tick)))
                if time.monotonic() >= next_report:
                    next_report += 60
                    rss = figures.rss_mb(proc.pid)
                    base_rss = base_rss or rss
                    got = _scrape(url, "forewarn_messages_received_total") or 0
                    print(f"{(time.monotonic() - t0) / 60:5.1f} min  RSS {rss:6.1f} MB  "
                          f"sent {sent}  received {got:.0f}  windows "
                          f"{_scrape(url, 'forewarn_windows_scored_total') or 0:.0f}", flush=True)
                    if rss - base_rss > a.max_growth_mb or got < sent - 10 * a.rate:
                        print("FAIL: memory growth or lag")
                        return 1
        finally:
            proc.terminate()
            proc.wait(20)
            broker.stop()
    print("OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
