"""Shared parts of the fault suite: an agent run as a killable process, a persistent
QoS 1 publisher, a recording score sink, and the "what was injected / what was
lost" report printed at the end of the pytest run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.drift.monitor import reference_histogram
from edge.models.infer import ScoredWindow
from edge.models.signing import load_private_key, sign_bundle
from tests.bundlefactory import make_bundle
from tests.conftest import REPO, Broker, free_port, start_mosquitto

T0 = 1_700_000_000  # readings' epoch base (2023-11-14)

# Mosquitto persists its in-memory state only when it autosaves; a SIGKILL loses
# everything since the last save. Saving on every change is the closest it gets
# to write-ahead persistence (it still PUBACKs before the save: see the report).
# Run as root, Mosquitto drops to the user "mosquitto", which cannot write the
# pytest temp dir (0700 root): without "user root" (added by tests/conftest.py)
# persistence silently fails.
DURABLE_BROKER = "autosave_on_changes true\nautosave_interval 1\n"

_REPORT: list[str] = []


def report(scenario: str, **facts: Any) -> None:
    """Record one line for the end-of-run fault report (and print it: visible with -s)."""
    line = f"[{scenario}] " + ", ".join(f"{k}={v}" for k, v in facts.items())
    _REPORT.append(line)
    print(line)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _REPORT:
        terminalreporter.section("fault injection: what was injected, what was lost")
        for line in _REPORT:
            terminalreporter.write_line(line)


@pytest.fixture
def bundle(tmp_path: Path) -> tuple[Path, Path]:
    return make_bundle(tmp_path / "models", signals=["temp", "vib"], window=4, warning=50.0,
                       reset=40.0)


@pytest.fixture
def drift_bundle(tmp_path: Path) -> tuple[Path, Path]:
    """The mean-score bundle plus a feature/score reference, so drift reports flow."""
    path, pub = make_bundle(tmp_path / "dmodels", signals=["temp", "vib"], window=4,
                            warning=50.0, reset=40.0)
    m = json.loads((path / "manifest.json").read_text())
    rng = np.random.default_rng(1)
    ref = {"temp:mean": reference_histogram(rng.normal(10, 1, 2000)).model_dump(),
           "vib:mean": reference_histogram(rng.normal(1, 0.1, 2000)).model_dump()}
    m["reference"] = {"features": ref,
                      "score": reference_histogram(rng.normal(10, 1, 2000)).model_dump()}
    (path / "manifest.json").write_text(json.dumps(m))
    sign_bundle(path, load_private_key(tmp_path / "dmodels" / "keys" / "signing.key"))
    return path, pub


@pytest.fixture
def durable_broker(tmp_path: Path) -> Iterator[Broker]:
    b = start_mosquitto(tmp_path / "broker", DURABLE_BROKER)
    try:
        yield b
    finally:
        b.stop()


def kill_broker(b: Broker) -> None:
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait(5)


# -- a score sink ----------------------------------------------------------------

class Recorder:
    """Score sink: every scored window as (asset, end_ts) with the time it was scored."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.windows: list[tuple[str, float, float]] = []

    def on_scores(self, windows: list[ScoredWindow]) -> None:
        now = time.time()
        with self.lock:
            self.windows.extend((w.asset, w.ts, now) for w in windows)

    def keys(self) -> list[tuple[str, float]]:
        with self.lock:
            return [(a, t) for a, t, _ in self.windows]

    def scored_at(self) -> dict[tuple[str, float], float]:
        with self.lock:
            return {(a, t): s for a, t, s in self.windows}


# -- a publisher with its own persistent session ---------------------------------

class Publisher:
    """QoS 1 publisher with a persistent session: paho resends what the broker did not
    acknowledge after it reconnects, so nothing it was asked to send is dropped."""

    def __init__(self, port: int, client_id: str) -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv311, clean_session=False)
        self.c.max_inflight_messages_set(200)
        self.c.max_queued_messages_set(0)
        self.c.reconnect_delay_set(1, 2)
        self.infos: list[mqtt.MQTTMessageInfo] = []
        # PUBACKs by mid: MQTTMessageInfo.is_published() raises for a message first
        # queued while disconnected, although paho sends it after the reconnect.
        self.acked: set[int] = set()
        self._lock = threading.Lock()
        self.c.on_publish = self._on_publish
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        with self._lock:
            self.acked.add(mid)

    def send(self, topic: str, body: dict[str, Any] | bytes, qos: int = 1) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.infos.append(self.c.publish(topic, payload, qos=qos))

    def reading(self, asset: str, ts: float, temp: float, vib: float = 1.0) -> None:
        self.send(f"forewarn/site1/{asset}", {"ts": ts, "values": {"temp": temp, "vib": vib}})

    def wait_all_acked(self, timeout: float = 60.0) -> int:
        """Waits for every PUBACK; returns how many are still unacknowledged."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.unacked():
            time.sleep(0.05)
        return self.unacked()

    def unacked(self) -> int:
        with self._lock:
            return sum(i.mid not in self.acked for i in self.infos)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


# -- the agent as a process --------------------------------------------------------

def toml(d: dict[str, Any], prefix: str = "") -> str:
    """A small TOML writer for the agent config (scalars, lists, nested tables)."""
    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):  # inside a list: an inline table
            return "{" + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + "}"
        return json.dumps(str(v))
    lines = [f"{k} = {val(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for k, v in d.items():
        if isinstance(v, dict):
            name = f"{prefix}{k}"
            lines += ["", f"[{name}]", toml(v, name + ".")]
    return "\n".join(lines)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


@dataclass
class AgentProcess:
    """``python -m edge.cli agent --config FILE``: start, SIGKILL, restart, stop."""

    workdir: Path
    config: dict[str, Any]
    prefix: list[str] = field(default_factory=list)  # e.g. setpriv ... to drop privileges
    # the module run instead of the agent command, given the config path and these
    # arguments (e.g. tests.faults.recording_agent, which also records scored windows)
    module: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def state_dir(self) -> Path:
        return Path(self.config["state_dir"])

    @property
    def config_path(self) -> Path:
        return self.workdir / "agent.toml"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.config['api']['port']}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(toml(self.config) + "\n")
        self.config_path.chmod(0o644)
        log = (self.workdir / "agent.log").open("ab")
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        cmd = (["-m", self.module[0], str(self.config_path), *self.module[1:]] if self.module
               else ["-m", "edge.cli", "agent", "--config", str(self.config_path)])
        self.proc = subprocess.Popen([*self.prefix, sys.executable, *cmd], stdout=log,
                                     stderr=subprocess.STDOUT, cwd=REPO, env=env)
        self.starts += 1

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        p = self.workdir / "agent.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def metrics(self) -> dict[str, float]:
        text = httpx.get(f"{self.api}/metrics", timeout=2).text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def up(self) -> bool:
        try:
            return httpx.get(f"{self.api}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


def agent_process_config(state: Path, bundle: Path, pub: Path, port: int,
                         **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "site": "site1",
        "state_dir": str(state),
        "log_level": "INFO",
        "mqtt": {"host": "127.0.0.1", "port": port, "client_id": f"agent-{state.name}",
                 "reconnect_min_s": 0.5, "reconnect_max_s": 1.0},
        "bundle": {"path": str(bundle), "trusted_keys": [str(pub)]},
        "api": {"host": "127.0.0.1", "port": free_port()},
        "storage": {"flush_interval_s": 0.2},
    }
    return merge(base, over)


@pytest.fixture
def agent_process(tmp_path: Path) -> Iterator[Any]:
    """Factory: ``agent_process(config_dict, prefix=[...])``; every agent is stopped after."""
    made: list[AgentProcess] = []

    def make(config: dict[str, Any], prefix: list[str] | None = None,
             name: str = "agent", workdir: Path | None = None,
             module: tuple[str, ...] = ()) -> AgentProcess:
        a = AgentProcess(workdir or tmp_path / name, config, prefix or [], module)
        made.append(a)
        return a

    yield make
    for a in made:
        a.stop(5)


class Stream:
    """Steady readings for one asset in a thread; remembers when each was published, so
    publish -> scored latency of a window = scored time - publish time of its last slot."""

    def __init__(self, pub: Publisher, asset: str, rate_hz: float,
                 value: Any = lambda i: 10.0, start: int = 0) -> None:
        self.pub, self.asset, self.rate_hz, self.value = pub, asset, rate_hz, value
        self.i = start
        self.sent_at: dict[float, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Stream:
        self._thread.start()
        return self

    def _run(self) -> None:
        period = 1.0 / self.rate_hz
        nxt = time.monotonic()
        while not self._stop.is_set():
            ts = float(T0 + self.i)
            self.sent_at[ts] = time.time()
            self.pub.reading(self.asset, ts, float(self.value(self.i)))
            self.i += 1
            nxt += period
            time.sleep(max(0.0, nxt - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def latencies(self, rec: Recorder, since_ts: float = 0.0,
                  until_ts: float = float("inf")) -> list[float]:
        done = rec.scored_at()
        return [done[(self.asset, ts)] - sent for ts, sent in list(self.sent_at.items())
                if since_ts <= ts < until_ts and (self.asset, ts) in done]


def median(xs: list[float]) -> float:
    return float(np.median(xs)) if xs else float("nan")
