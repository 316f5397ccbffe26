"""Shared fixtures: a real Mosquitto on a free loopback port, temp state dirs."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Beside the checkout, or beside the folder of checkouts (a git worktree).
SHARED_DATASETS = next((p for p in (REPO.parent / "shared" / "datasets",
                                    REPO.parent.parent / "shared" / "datasets")
                        if p.is_dir()), REPO.parent / "shared" / "datasets")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@dataclass
class Broker:
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    conf: Path
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def restart(self) -> None:
        self.stop()
        self.proc = _spawn(self.conf, self.log)
        wait_port(self.port)


def _spawn(conf: Path, log: Path) -> subprocess.Popen[bytes]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    return subprocess.Popen([exe, "-c", str(conf)], stdout=log.open("ab"),
                            stderr=subprocess.STDOUT)


def start_mosquitto(workdir: Path, extra_conf: str = "", port: int | None = None) -> Broker:
    if not (shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto")):
        pytest.fail("mosquitto is not installed (apt-get install -y mosquitto)")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    # max_queued_messages 0: stock Mosquitto silently drops for a slow subscriber
    # about 1,000 messages behind; tests must not lose messages the agent would have kept.
    # As root, Mosquitto drops to the `mosquitto` user, which cannot write pytest's
    # temp dirs: persistence would then fail silently.
    user = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(
        user + f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "max_queued_messages 0\n"
        "max_inflight_messages 0\n"
        "set_tcp_nodelay true\n"
        f"persistence true\npersistence_location {workdir}/\n"
        + extra_conf
    )
    log = workdir / "mosquitto.log"
    proc = _spawn(conf, log)
    wait_port(port)
    return Broker("127.0.0.1", port, proc, conf, log)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    broker = start_mosquitto(tmp_path / "broker")
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"{SHARED_DATASETS} is absent (the data sets live beside the checkout, "
                    "not in the repo)")
    return SHARED_DATASETS


@dataclass
class TrainedBundle:
    path: Path
    public_key: Path


@pytest.fixture(scope="session")
def cmapss_bundle(tmp_path_factory: pytest.TempPathFactory) -> TrainedBundle:
    """The real C-MAPSS FD001 bundle, trained once per test session (~30 s)."""
    from edge.models.signing import generate_keypair
    from trainer.cli import DEFAULT_CONFIG, train_from_config

    root = tmp_path_factory.mktemp("cmapss")
    generate_keypair(root / "keys" / "signing.key", root / "keys" / "signing.pub")
    path = train_from_config(DEFAULT_CONFIG, root / "models", root / "keys" / "signing.key",
                             progress=open(os.devnull, "w"))  # noqa: SIM115
    return TrainedBundle(path, root / "keys" / "signing.pub")
