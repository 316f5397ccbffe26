"""Soak (not in CI): an agent process under a steady stream for --minutes.

``.venv/bin/python -m bench.soak --minutes 60 --rate 1000`` prints one line a
minute (RSS MB, open files, threads, readings received, windows scored). The
baseline is the mean of the samples in minutes ``--warmup`` .. ``--warmup`` + 5
(with storage on, the first compactions happen in the first minutes and a single
early sample sits below the plateau). It fails when the mean of the last five
samples is more than --max-growth-mb above that baseline (a trend, so that one
sample taken during a compaction is not called growth), when any sample is more
than three times that above it (a runaway), when open files or threads grow by more
than --max-growth-fds / --max-growth-threads, when the agent falls behind, when a
compaction fails, or when more than one compaction child process exists at a time
(a leak of children or zombies).
Storage is on (the default config), so Parquet partitions, the WAL and retention
are part of the run; readings carry timestamps of the last few hours so retention
by age keeps them.
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
    ap.add_argument("--max-growth-fds", type=int, default=8)
    ap.add_argument("--max-growth-threads", type=int, default=2)
    ap.add_argument("--no-storage", action="store_true", help="run with storage disabled")
    ap.add_argument("--warmup", type=int, default=3, help="minutes before the baseline")
    a = ap.parse_args()
    from bench.run import _scrape, _spawn_agent, _with_reference
    from tests.bundlefactory import make_bundle
    with tempfile.TemporaryDirectory(prefix="forewarn-soak-") as tmp:
        work = Path(tmp)
        # With a feature reference, so drift is monitored as with a trained bundle.
        bundle = _with_reference(*make_bundle(work / "m", signals=[f"s{i}" for i in range(10)],
                                              window=30, hop=10, warning=1e9),
                                 work / "m" / "keys" / "signing.key")
        broker = ingest.start_broker(work / "b")
        proc, url = _spawn_agent(work, bundle, broker.port, storage=not a.no_storage)
        # Slots of 1 s, 1,000 assets per slot: the stream advances rate/assets slots
        # per second of wall time; start far enough back that it never runs ahead.
        ts0 = int(time.time() - a.minutes * 60 * max(1, a.rate // a.assets) - 3600)
        try:
            sent, t0, slot = 0, time.monotonic(), 0
            base: tuple[float, int, int] | None = None
            samples: list[tuple[float, int, int]] = []
            next_report = t0 + 60
            while time.monotonic() - t0 < a.minutes * 60:
                tick = time.monotonic()
                pk = [publish_packet(f"forewarn/site1/m{i}", orjson.dumps(
                    {"ts": ts0 + slot, "values": {f"s{k}": 1.0 + (i + k + slot) % 5
                                                        for k in range(10)}}))
                      for i in range(min(a.assets, a.rate))]
                sent += raw_publish(broker.port, pk)
                slot += 1
                time.sleep(max(0.0, len(pk) / a.rate - (time.monotonic() - tick)))
                if time.monotonic() >= next_report:
                    next_report += 60
                    now = _usage(proc.pid)
                    samples.append(now)
                    got = _scrape(url, "forewarn_messages_received_total") or 0
                    kids = figures.descendants(proc.pid)
                    compactions = _scrape(url, "forewarn_storage_compactions_total") or 0
                    errors = _scrape(url, "forewarn_storage_compaction_errors_total") or 0
                    print(f"{(time.monotonic() - t0) / 60:5.1f} min  RSS {now[0]:6.1f} MB  "
                          f"fds {now[1]}  threads {now[2]}  sent {sent}  received {got:.0f}  "
                          f"windows {_scrape(url, 'forewarn_windows_scored_total') or 0:.0f}  "
                          f"compactions {compactions:.0f}  children {len(kids)}", flush=True)
                    if len(kids) > 1 or errors:
                        print(f"FAIL: {len(kids)} child processes, {errors:.0f} compaction "
                              f"errors")
                        return 1
                    if len(samples) == a.warmup + 5:
                        warm = samples[a.warmup:]
                        base = (sum(x[0] for x in warm) / len(warm), max(x[1] for x in warm),
                                max(x[2] for x in warm))
                        print(f"baseline: RSS {base[0]:.1f} MB, fds {base[1]}, "
                              f"threads {base[2]}", flush=True)
                    bad = _check(samples, base, a, final=False)
                    if bad or got < sent - 10 * a.rate:
                        print(f"FAIL: {bad or 'nothing grew'}; lag {sent - got:.0f} messages")
                        return 1
            bad = _check(samples, base, a, final=True)
            if bad:
                print(f"FAIL: {bad}")
                return 1
        finally:
            proc.terminate()
            proc.wait(20)
            broker.stop()
    print("OK")
    return 0


def _check(samples: list[tuple[float, int, int]], base: tuple[float, int, int] | None,
           a: argparse.Namespace, *, final: bool) -> str:
    """What grew beyond its bound, or ''."""
    if base is None:
        if final:
            print("too short for a baseline: run at least --warmup + 5 minutes", flush=True)
        return ""
    last = samples[-1]
    out = []
    if last[0] - base[0] > 3 * a.max_growth_mb:
        out.append(f"RSS runaway {last[0]:.1f} MB vs baseline {base[0]:.1f}")
    tail = samples[-5:]
    mean = sum(x[0] for x in tail) / len(tail)
    if final and mean - base[0] > a.max_growth_mb:
        out.append(f"RSS trend: last five {mean:.1f} MB vs baseline {base[0]:.1f}")
    if last[1] - base[1] > a.max_growth_fds:
        out.append(f"open files {last[1]} vs {base[1]}")
    if last[2] - base[2] > a.max_growth_threads:
        out.append(f"threads {last[2]} vs {base[2]}")
    if final:
        print(f"end: RSS last five {mean:.1f} MB vs baseline {base[0]:.1f} MB; fds {last[1]} "
              f"vs {base[1]}; threads {last[2]} vs {base[2]}", flush=True)
    return "; ".join(out)


def _usage(pid: int) -> tuple[float, int, int]:
    """RSS MB, open file descriptors and threads of the agent process."""
    threads = next(int(ln.split()[1]) for ln in
                   Path(f"/proc/{pid}/status").read_text().splitlines()
                   if ln.startswith("Threads:"))
    return figures.rss_mb(pid), len(list(Path(f"/proc/{pid}/fd").iterdir())), threads


if __name__ == "__main__":
    raise SystemExit(main())
