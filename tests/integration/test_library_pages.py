"""Unmapping the libraries' start-up pages, against this kernel's real mappings: RSS
drops, the code keeps running with the same results, and no private page (relocated
data, the heap) is touched. Each case runs in a fresh interpreter so that what it
unmaps is its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.bundlefactory import make_bundle

PROBE = """
import json, sys
from pathlib import Path
import numpy as np
from edge.core.library_pages import unmap_library_text
from edge.models.bundle import load_bundle
from edge.models.infer import Scorer

def kb(field, lib=None):
    total, cur = 0, False
    for line in open("/proc/self/smaps"):
        p = line.split()
        if not p[0].endswith(":"):
            cur = lib is None or lib in line
        elif cur and p[0] == field + ":":
            total += int(p[1])
    return total

scorer = Scorer(load_bundle(Path(sys.argv[1]), [Path(sys.argv[2])]))
x = np.random.default_rng(7).normal(size=(5, 3, 8)).astype(np.float32)
first = scorer.run(x)[0].tolist()
state = {"heap": bytes(range(256)) * 4096}  # private pages that must survive
before = {"rss": kb("Rss"), "anon": kb("Anonymous"), "ort": kb("Rss", "onnxruntime_pybind11")}
gave_up = unmap_library_text()
after = {"rss": kb("Rss"), "anon": kb("Anonymous"), "ort": kb("Rss", "onnxruntime_pybind11")}
again = scorer.run(x)[0].tolist()
print(json.dumps({"before": before, "after": after, "gave_up": gave_up,
                  "same": again == first, "heap": state["heap"] == bytes(range(256)) * 4096,
                  "second_call": unmap_library_text() >= 0}))
"""


def test_unmapping_start_up_pages_lowers_rss_and_the_code_runs_on(tmp_path: Path) -> None:
    bundle, pub = make_bundle(tmp_path / "m", signals=["a", "b", "c"], window=8)
    out = subprocess.run([sys.executable, "-c", PROBE, str(bundle), str(pub)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    before, after = r["before"], r["after"]
    assert r["same"] and r["heap"] and r["second_call"]
    # onnxruntime's text is tens of MB once a session is built; most of it is start-up.
    assert before["ort"] > 8_000
    assert after["ort"] < before["ort"] / 2
    assert r["gave_up"] > 8_000
    assert before["rss"] - after["rss"] >= r["gave_up"] - 2_000
    # Only file pages went: private memory is what it was (give or take the probe's own
    # allocations between the two readings).
    assert abs(after["anon"] - before["anon"]) < 2_000


def test_agent_unmaps_after_start_unless_told_not_to(tmp_path: Path) -> None:
    bundle, pub = make_bundle(tmp_path / "m", signals=["a"], window=4)
    code = """
import json, logging, sys
from edge.core.config import parse_config
from edge.app import Agent
records = []
logging.getLogger("edge.app").addHandler(type("H", (logging.Handler,), {
    "emit": lambda self, r: records.append(r.getMessage())})())
logging.getLogger("edge.app").setLevel(logging.INFO)
cfg = json.loads(sys.argv[1])
a = Agent(parse_config(cfg))
a.start(); a.stop()
print(json.dumps([m for m in records if "library pages" in m]))
"""
    seen = {}
    for flag in (True, False):
        cfg = {"site": "s1", "state_dir": str(tmp_path / f"state-{flag}"),
               "mqtt": {"port": 1, "client_id": "lp"},  # no broker: start does not wait
               "bundle": {"path": str(bundle), "trusted_keys": [str(pub)]},
               "api": {"enabled": False}, "storage": {"enabled": False},
               "memory": {"unmap_library_text": flag}}
        out = subprocess.run([sys.executable, "-c", code, json.dumps(cfg)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        seen[flag] = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(seen[True]) == 1 and "unmapped" in seen[True][0]
    assert float(seen[True][0].split()[1]) > 1.0  # MB
    assert seen[False] == []
