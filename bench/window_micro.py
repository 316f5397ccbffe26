"""Window-stage microbenchmark: point readings/s through WindowSet.add_point + drain.

    .venv/bin/python -m bench.window_micro

1,000 assets with 10 signals and with 1 signal (one reading per message is the
worst case: every reading closes a slot and ends a window). No MQTT, no model.
"""

from __future__ import annotations

import time

from edge.scoring.window import WindowSet


def run(n_signals: int, n_assets: int, slots: int) -> float:
    signals = [f"s{i}" for i in range(n_signals)]
    ws = WindowSet(signals, period=1.0, window=30, hop=1, max_hold=3, max_lateness=5)
    assets = [f"a{a}" for a in range(n_assets)]
    t0, n = time.perf_counter(), 0
    for k in range(slots):
        for asset in assets:
            for s in signals:
                ws.add_point(asset, s, float(k), 1.0)
                n += 1
        ws.drain()
    return n / (time.perf_counter() - t0)


if __name__ == "__main__":
    print(f"10 signals x 1000 assets: {run(10, 1000, 100):,.0f} readings/s")
    print(f" 1 signal  x 1000 assets: {run(1, 1000, 300):,.0f} readings/s")
