"""RSS after each import, cumulative, in one fresh interpreter: private anonymous vs file.

Run: ``python -m bench.import_rss [MODULE ...]`` (``a+b`` imports both as one row); with no
arguments, the agent's imports in the order of ``bench/results/2026-12-03-rss.md``.
"Anon" is Python's and the C libraries' heap (private); "file" is the libraries'
text and read-only data (clean, shared with every process that maps the same files).
"""

from __future__ import annotations

import importlib
import sys

AGENT = ["numpy", "onnxruntime", "paho.mqtt.client",
         "cryptography.hazmat.primitives.asymmetric.ed25519", "pydantic", "orjson",
         "prometheus_client", "sqlite3", "edge.core.config", "edge.models.infer", "edge.app",
         "starlette.applications", "fastapi", "uvicorn", "edge.api.app"]


def rollup() -> dict[str, float]:
    """``/proc/self/smaps_rollup`` in MB."""
    out = {}
    with open("/proc/self/smaps_rollup") as fh:
        for line in fh:
            p = line.split()
            if len(p) >= 3 and p[-1] == "kB":
                out[p[0].rstrip(":")] = int(p[1]) / 1024
    return out


def main(mods: list[str]) -> None:
    prev = rollup()
    print(f"| import | + RSS | RSS | + anon | + file |\n|---|---|---|---|---|\n"
          f"| interpreter | | {prev['Rss']:.1f} | | |")
    for row in mods:
        for m in row.split("+"):
            importlib.import_module(m)
        r = rollup()
        file_now, file_before = r["Rss"] - r["Anonymous"], prev["Rss"] - prev["Anonymous"]
        print(f"| {row} | {r['Rss'] - prev['Rss']:.1f} | {r['Rss']:.1f} | "
              f"{r['Anonymous'] - prev['Anonymous']:.1f} | {file_now - file_before:.1f} |")
        prev = r


if __name__ == "__main__":
    main(sys.argv[1:] or AGENT)
