"""The physical limits the agent's figures are divided by, measured in the same run.

* ``fsync_commit``: raw ``fsync`` of a small write, and one SQLite commit with the
  alert store's durability for a lifecycle change (WAL, ``synchronous=NORMAL``, then
  an ``fsync`` of the WAL file: what ``synchronous=FULL`` does at every commit).
* ``bare_loop``: the least a durable alert can cost on this machine: one paho client
  (TCP_NODELAY) whose network thread parses each reading, scores its window with
  ``InferenceSession.run`` at batch 1, commits an event row as above when an alert
  opens or clears, and only then publishes the event (QoS 1, as the agent does). It
  is measured by the same external client as the agent (:func:`figures.latency`), so
  the agent's latency is printed as a ratio to it; its RSS is the floor for the
  agent's memory figures.

Run the loop alone: ``python -m bench.limits bare-loop PORT BUNDLE_DIR DB``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Broker, wait_for

REPO = Path(__file__).resolve().parents[1]


def _q(xs: list[float]) -> dict[str, float]:
    p = np.percentile(np.asarray(xs) * 1e3, [50, 99])
    return {"p50_ms": float(p[0]), "p99_ms": float(p[1])}


def fsync_commit(work: Path, n: int = 1000) -> dict[str, float]:
    """p50/p99 of a raw 4 KiB write+fsync and of a durable SQLite commit (ms)."""
    work.mkdir(parents=True, exist_ok=True)
    fs: list[float] = []
    fd = os.open(work / "fsync.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    block = b"\0" * 4096
    try:
        for i in range(n):
            t0 = time.perf_counter()
            os.pwrite(fd, block, (i % 64) * 4096)
            os.fsync(fd)
            fs.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
    db, wal = _open_db(work / "commit.db")
    cm: list[float] = []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            _durable_insert(db, wal, f"a{i % 50}", float(i), "opened")
            cm.append(time.perf_counter() - t0)
    finally:
        db.close()
        os.close(wal)
    f, c = _q(fs), _q(cm)
    return {"fsync_p50_ms": f["p50_ms"], "fsync_p99_ms": f["p99_ms"],
            "commit_p50_ms": c["p50_ms"], "commit_p99_ms": c["p99_ms"], "samples": n}


def _open_db(path: Path) -> tuple[sqlite3.Connection, int]:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS ev (id INTEGER PRIMARY KEY, asset TEXT, ts REAL, "
               "kind TEXT, at REAL)")
    return db, os.open(f"{path}-wal", os.O_RDONLY)


def _durable_insert(db: sqlite3.Connection, wal: int, asset: str, ts: float, kind: str) -> None:
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO ev (asset, ts, kind, at) VALUES (?, ?, ?, ?)",
               (asset, ts, kind, time.time()))
    db.execute("COMMIT")
    os.fsync(wal)


def bare_loop_main(port: int, bundle: Path, db_path: Path) -> None:
    """The bare durable loop (see the module docstring); runs until SIGTERM."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    step, db = bare_step(bundle, db_path, warm_up=True)

    def on_message(c: Any, u: Any, msg: Any) -> None:
        done = step(msg.topic, msg.payload)
        if done is not None:
            asset, body = done
            c.publish(f"forewarn/site1/events/{asset}", body, qos=1)

    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    def nodelay(c: Any, u: Any, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    c.on_socket_open = nodelay
    c.on_message = on_message
    ready = threading.Event()
    c.on_subscribe = lambda *_: ready.set()
    c.on_connect = lambda c, *_: c.subscribe("forewarn/site1/+/x", 0)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    c.connect("127.0.0.1", port)
    c.loop_start()
    ready.wait(20)
    print("ready", flush=True)
    stop.wait()
    c.loop_stop()
    db.close()


def bare_step(bundle: Path, db_path: Path, *, warm_up: bool = False
              ) -> tuple[Callable[[str, bytes], tuple[str, str] | None], sqlite3.Connection]:
    """The bare durable loop's work for one message (JSON -> ORT batch 1 -> a durable
    commit per opening and clear), shared by the latency limit and the instruction
    count: returns ``(asset, event body)`` to publish, or None, and the database."""
    import onnxruntime as ort

    m = json.loads((bundle / "manifest.json").read_text())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(bundle / "model.onnx"), sess_options=opts,
                                providers=["CPUExecutionProvider"])
    th = m["thresholds"]
    warning = float(th["warning"])
    reset = float(th["reset"] if th.get("reset") is not None else warning)
    win, name, out = int(m["window"]), m["input_name"], [m["output"]["score_output"]]
    db, wal = _open_db(db_path)
    if warm_up:
        # onnxruntime's first run and SQLite's first commit initialise lazily, and the
        # stream queued behind that one stall would be counted as the loop's tail.
        for _ in range(3):
            sess.run(out, {name: np.zeros((1, 1, win), np.float32)})
            _durable_insert(db, wal, "warm-up", 0.0, "warm-up")
    bufs: dict[str, np.ndarray] = {}
    open_: set[str] = set()

    def step(topic: str, payload: bytes) -> tuple[str, str] | None:
        asset = topic.split("/")[2]
        r = json.loads(payload)
        b = bufs.get(asset)
        if b is None:
            b = bufs[asset] = np.zeros((1, 1, win), np.float32)
        b[0, 0, :-1] = b[0, 0, 1:]
        b[0, 0, -1] = r["value"]
        score = float(sess.run(out, {name: b})[0].reshape(-1)[0])
        kind = ("opened" if score >= warning and asset not in open_ else
                "cleared" if score < reset and asset in open_ else None)
        if kind is None:
            return None
        (open_.add if kind == "opened" else open_.discard)(asset)
        _durable_insert(db, wal, asset, r["ts"], kind)
        return asset, json.dumps({"event": kind, "data_ts": r["ts"]})

    return step, db


def bare_loop(work: Path, broker: Broker, bundle: Path) -> dict[str, float]:
    """The bare loop's publish -> durable event latency (external client) and its RSS."""
    from bench.figures import latency_external, rss_mb

    work.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "bench.limits", "bare-loop",
                             str(broker.port), str(bundle), str(work / "bare.db")],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        wait_for(lambda: proc.stdout is not None and proc.stdout.readline() != "", 30,
                 "bare loop")
        r = latency_external(broker)
        r["rss_mb"] = rss_mb(proc.pid)
        return r
    finally:
        proc.terminate()
        proc.wait(20)


def main(argv: list[str]) -> int:
    if argv[:1] == ["bare-loop"]:
        bare_loop_main(int(argv[1]), Path(argv[2]), Path(argv[3]))
        return 0
    if argv[:1] == ["fsync"]:
        import tempfile
        with tempfile.TemporaryDirectory(dir=argv[1] if len(argv) > 1 else None) as t:
            print(json.dumps(fsync_commit(Path(t))))
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
