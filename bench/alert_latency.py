"""Publish -> durable alert event: the agent beside the bare durable loop, interleaved.

Run: ``.venv/bin/python -m bench.alert_latency [--rounds 5]``. Each round starts
one broker and measures, on it and one after the other (the order alternating
across rounds, so a drift of the machine's load favours neither), the agent (as
``make bench`` runs it: storage off, clear after 3) and the bare durable loop of
:mod:`bench.limits`, with the same external client (:func:`figures.latency_external`:
1,000 msg/s, 50 assets, ~200 openings/s). Printed: every round, then the medians
and the min-max of the per-round ratios agent / bare (issue #19: both <= 1.5x).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench import figures, ingest, limits
from bench.common import wait_for


def agent_round(work: Path, br: Any, b: tuple[Path, Path]) -> dict[str, float]:
    cfg = ingest.agent_cfg(work, *b, br.port, storage={"enabled": False},
                           alerts={"clear_after": 3})
    agent = ingest.Agent(cfg)
    agent.start()
    try:
        wait_for(agent.conn.connected.is_set, 20, "latency agent")
        return figures.latency_external(br)
    finally:
        agent.stop()


def rounds(work: Path, n: int, say: Any = print) -> list[dict[str, Any]]:
    from tests.bundlefactory import make_bundle

    b = make_bundle(work / "m", name="latency", signals=["x"], window=2, hop=1,
                    warning=40.0, reset=30.0, max_hold=0)
    out = []
    for r in range(n):
        br = ingest.start_broker(work / f"lb{r}")
        row: dict[str, Any] = {}
        try:
            for side in (("agent", "bare") if r % 2 == 0 else ("bare", "agent")):
                row[side] = (limits.bare_loop(work / f"bare{r}", br, b[0]) if side == "bare"
                             else agent_round(work / f"lat{r}", br, b))
        finally:
            br.stop()
        a, z = row["agent"], row["bare"]
        row["ratio_p50"], row["ratio_p99"] = a["p50_ms"] / z["p50_ms"], a["p99_ms"] / z["p99_ms"]
        say(f"round {r + 1}/{n}: agent p50 {a['p50_ms']:.2f} p99 {a['p99_ms']:.2f} "
            f"({a['events']}/{a['crossings']}); bare p50 {z['p50_ms']:.2f} p99 "
            f"{z['p99_ms']:.2f} ({z['events']}/{z['crossings']}); ratio p50 "
            f"{row['ratio_p50']:.2f} p99 {row['ratio_p99']:.2f}")
        out.append(row)
    return out


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def med(xs: list[float]) -> dict[str, float]:
        return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}

    return {"agent_p50_ms": med([r["agent"]["p50_ms"] for r in rows]),
            "agent_p99_ms": med([r["agent"]["p99_ms"] for r in rows]),
            "bare_p50_ms": med([r["bare"]["p50_ms"] for r in rows]),
            "bare_p99_ms": med([r["bare"]["p99_ms"] for r in rows]),
            "ratio_p50": med([r["ratio_p50"] for r in rows]),
            "ratio_p99": med([r["ratio_p99"] for r in rows])}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="write every round here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="forewarn-alert-latency-") as tmp:
        rows = rounds(Path(tmp), args.rounds)
    s = summary(rows)
    for k, v in s.items():
        print(f"{k}: median {v['median']:.3f} (min {v['min']:.3f}, max {v['max']:.3f})")
    if args.json:
        args.json.write_text(json.dumps({"rounds": rows, "summary": s}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
