"""Figures that need no backlog: scoring overhead, offline replay, memory, latency, drain."""

from __future__ import annotations

import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import Broker
from edge.models.bundle import load_bundle
from edge.models.infer import Scorer
from edge.scoring.window import ReadyWindow


def scoring(bundle: Path, pub: Path, batch: int, n: int = 20_000,
            rounds: int = 5) -> dict[str, float]:
    """Windows/s through Scorer.score vs InferenceSession.run on the same batches.

    Both are timed in CPU time of this thread (onnxruntime runs single-threaded in
    the caller here) and interleaved round by round, so another process competing
    for the cores slows neither side more than the other.
    """
    b = load_bundle(bundle, [pub])
    s = Scorer(b)
    sig, win = s.shape
    rng = np.random.default_rng(0)
    wins = [ReadyWindow(f"a{i % 100}", float(i), rng.standard_normal((sig, win), np.float32))
            for i in range(n)]
    x = np.stack([w.values for w in wins])
    raw_t, ours_t = [], []
    for _ in range(rounds):
        t0 = time.thread_time()
        for lo in range(0, n, batch):
            s.session.run(s.outputs, {s.input_name: x[lo:lo + batch]})
        raw_t.append(time.thread_time() - t0)
        t0 = time.thread_time()
        s.score(wins, batch)
        ours_t.append(time.thread_time() - t0)
    raw, ours = n / statistics.median(raw_t), n / statistics.median(ours_t)
    return {"scorer": ours, "raw": raw, "overhead": raw / ours}


def replay(bundle: Path, pub: Path, engines: int = 400, cycles: int = 2000) -> float:
    """Readings/s through ``forewarn evaluate``'s replay (WindowSet, Scorer, RuleMachine)
    on C-MAPSS-shaped data; every window is scored (an earlier version fed each signal's
    whole series before the next, so all but the first were dropped as late)."""
    from edge.alerts.rules import RuleSpec
    from trainer.evaluate import Series
    from trainer.evaluate import replay as evaluate_replay

    b = load_bundle(bundle, [pub])
    m = b.manifest
    s = Scorer(b)
    rng = np.random.default_rng(1)
    lo = np.array([x.train_min or 0.0 for x in m.signals])
    hi = np.array([x.train_max or 1.0 for x in m.signals])
    data = lo[:, None] + (hi - lo)[:, None] * rng.random((len(lo), cycles))
    ts = 1e9 + m.sample_period_s * np.arange(cycles)
    series = [Series(f"e{e}", ts, data) for e in range(engines)]
    t0 = time.perf_counter()
    windows = sum(len(r.scores) for r in evaluate_replay(b, s, RuleSpec.from_manifest(m), series))
    rate = engines * data.size / (time.perf_counter() - t0)
    if windows != engines * ((cycles - m.window) // m.hop + 1):
        raise RuntimeError(f"replay scored {windows} windows, expected every one")
    return rate


def _status_mb(pid: int, field: str) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # it exited meanwhile (a compaction child)
        return 0.0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_mb(pid: int) -> float:
    return _status_mb(pid, "VmRSS")


def private_mb(pid: int) -> float:
    """The anonymous part of RSS (``RssAnon``): what the process itself holds, whatever
    the page cache. RSS also counts the library pages mapped from it, and on a kernel
    that maps a whole large folio per fault that part follows what else has run."""
    return _status_mb(pid, "RssAnon")


def drop_page_cache() -> bool:
    """Write back and drop the clean page cache (root only); False where not permitted.

    An RSS figure read after a fresh install or a large build maps more library text
    per fault than one read on a cold cache (the same agent read 124.5 MB idle warm and
    110.1 MB dropped), so a figure says which state it was read in.
    """
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def descendants(pid: int) -> list[int]:
    """Child processes of ``pid``, recursively (e.g. the agent's compaction child)."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        frontier += kids
    return out


def reload_rss(bundle: Path, pub: Path, reloads: int = 200) -> dict[str, float]:
    """RSS of a fresh process before and after constructing ``reloads`` Scorers.

    ``after_25`` is taken after the first 25: what the allocators keep of the freed
    sessions shows up as a step there, a leak as growth from there to ``after``.
    ``*_trim`` is a second process that also runs what the agent runs after each model
    swap (``Agent._activate``): the forced ``malloc_trim`` and the unmap of the library
    pages building a session touched (also before its first reading, as the agent does
    at start), i.e. what a reload costs the agent.
    """
    out: dict[str, float] = {}
    for trim in (False, True):
        code = (
            "import sys,json\nfrom pathlib import Path\n"
            "from edge.models.bundle import load_bundle\n"
            "from edge.models.infer import Scorer\nfrom bench.figures import rss_mb\nimport os\n"
            "from edge.core.trim import Trimmer\ntrim=Trimmer()\n"
            "from edge.core.library_pages import unmap_library_text as unmap\n"
            f"b=load_bundle(Path({str(bundle)!r}),[Path({str(pub)!r})]);s=Scorer(b)\n"
            f"{'unmap()' if trim else 'pass'}\n"
            "r0=rss_mb(os.getpid());r25=0.0\n"
            f"for i in range({reloads}):\n  s=Scorer(load_bundle(b.path,[Path({str(pub)!r})]))\n"
            f"  {'trim(force=True);unmap()' if trim else 'pass'}\n"
            "  r25=rss_mb(os.getpid()) if i==24 else r25\n"
            "print(json.dumps({'before':r0,'after_25':r25,'after':rss_mb(os.getpid())}))\n")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
        r = json.loads(res.stdout.strip().splitlines()[-1])
        out |= {f"{k}_trim" if trim else k: float(v) for k, v in r.items()}
    return out


def latency_external(broker: Broker) -> dict[str, float]:
    """:func:`latency` measured from a client in its own process: in the agent's
    process the publisher's and subscriber's threads would queue for the agent's GIL
    and add their own waits to the figure."""
    code = ("import json, sys\nfrom types import SimpleNamespace\n"
            "from bench.figures import latency\n"
            "print(json.dumps(latency(SimpleNamespace(port=int(sys.argv[1])))))\n")
    out = subprocess.run([sys.executable, "-c", code, str(broker.port)], capture_output=True,
                         text=True, check=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def latency(broker: Broker, asset_count: int = 50, rate: float = 1000.0,
            seconds: float = 8.0) -> dict[str, float]:
    """Publish -> event-on-MQTT, for crossings that open an alert; external client."""
    sent: dict[tuple[str, float], float] = {}
    lat: list[float] = []
    lock = threading.Lock()

    def on_message(c: Any, u: Any, m: Any) -> None:
        now = time.perf_counter()
        try:
            ev = json.loads(m.payload)
        except ValueError:
            return
        if ev.get("event") not in ("opened", "open"):
            return
        asset = m.topic.rsplit("/", 1)[1]
        ts = ev.get("data_ts")
        with lock:
            t = sent.pop((asset, float(ts)), None) if ts is not None else None
        if t is not None:
            lat.append(now - t)

    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    # Nagle would hold each small publish until the previous one is acknowledged.
    c.on_socket_open = lambda c, u, sock: sock.setsockopt(
        socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.on_message = on_message
    c.on_connect = lambda c, *_: c.subscribe("forewarn/site1/events/#", 1)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    time.sleep(0.3)
    n = int(rate * seconds)
    # The instrument's own collector pauses would be counted as the agent's latency.
    gc.disable()
    t_start = time.perf_counter()
    base = int(time.time()) - 86_400  # in the past: the agent refuses future stamps
    for i in range(n):
        a, k = i % asset_count, i // asset_count
        v = 100.0 if k % 5 == 0 else 0.0  # open on 100, clear after 3 quiet windows
        target = t_start + i / rate
        while (d := target - time.perf_counter()) > 0:
            time.sleep(min(d, 0.0005))
        ts = float(base + k)
        if v > 50:
            with lock:
                sent[(f"m{a}", ts)] = time.perf_counter()
        c.publish(f"forewarn/site1/m{a}/x", json.dumps({"ts": ts, "value": v}), qos=0)
    time.sleep(1.0)
    gc.enable()
    c.disconnect()
    c.loop_stop()
    if not lat:
        raise RuntimeError("no alert events arrived")
    q = np.percentile(np.asarray(lat) * 1e3, [50, 99, 99.9])
    return {"p50_ms": float(q[0]), "p99_ms": float(q[1]), "p999_ms": float(q[2]),
            "events": len(lat), "crossings": len(lat) + len(sent)}


def pid_cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
