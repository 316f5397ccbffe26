"""What the window warm-up costs the agent's start (edge/history/warm.py).

    .venv/bin/python -m bench.warm_start [assets] [signals] [window]

Writes 120 s of readings (1 Hz, one write-ahead segment per second, as the agent's
flushes do) for ``assets`` x ``signals``, then times one warm-up of a fresh
WindowSet from that log.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edge.history.parquet import ParquetStore
from edge.history.warm import tail_s, warm_windows
from edge.scoring.window import WindowSet

T0 = 1_700_000_000


def main(assets: int = 1000, signals: int = 10, window: int = 60) -> None:
    names = [f"s{i}" for i in range(signals)]
    root = Path(tempfile.mkdtemp(prefix="forewarn-warm-"))
    try:
        st = ParquetStore(root / "history", wal_max_rows=10**9)
        rng = np.random.default_rng(0)
        for t in range(120):
            for a in range(assets):
                st.append(f"a{a}", names, np.full(signals, T0 + t, float), rng.random(signals))
            st.flush()
        st.close(compact=False)
        ws = WindowSet(names, period=1.0, window=window, hop=1, max_hold=3, max_lateness=5)
        t0 = time.perf_counter()
        w = warm_windows(root / "history", ws)
        took = time.perf_counter() - t0
        print(f"warm-up of {assets} assets x {signals} signals, window {window}: "
              f"{w.readings} readings (tail {tail_s(ws):.0f} s) from {w.segments} segments "
              f"in {took:.2f} s; {w.windows_skipped} windows skipped (scored before)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(*(int(x) for x in sys.argv[1:4]))
