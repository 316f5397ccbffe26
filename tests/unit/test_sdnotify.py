"""sd_notify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.core import sdnotify


class FakeSystemd:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def received(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return out


@pytest.fixture
def systemd_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSystemd]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    try:
        yield FakeSystemd(sock)
    finally:
        sock.close()


def test_ready_status_stopping_reach_the_socket(systemd_socket: FakeSystemd) -> None:
    assert sdnotify.ready("bundle rul/3 loaded")
    assert sdnotify.status("scoring\n12 assets")
    assert sdnotify.watchdog()
    assert sdnotify.extend_timeout(2.5)
    assert sdnotify.stopping()
    got = systemd_socket.received()
    assert got[0].splitlines()[:2] == ["READY=1", "STATUS=bundle rul/3 loaded"]
    assert f"MAINPID={os.getpid()}" in got[0].splitlines()
    # a newline in a status would start a new KEY=value line: it is folded
    assert got[1:] == ["STATUS=scoring 12 assets", "WATCHDOG=1",
                       "EXTEND_TIMEOUT_USEC=2500000", "STOPPING=1"]


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"forewarn-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready()
        assert sock.recv(4096).startswith(b"READY=1")


def test_noop_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    assert sdnotify.watchdog() is False
    assert sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": "vsock:2:1234"}) is False


def test_send_failure_is_reported_not_raised(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    assert sdnotify.ready() is False


def test_watchdog_interval_from_environment() -> None:
    me = str(os.getpid())
    assert sdnotify.watchdog_interval({}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": me}) == 30.0
    # armed for another process (a parent that exec'd us under a wrapper): not ours
    other = str(os.getpid() + 1)
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": other}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_watchdog_fed_only_while_every_stage_is_fresh(systemd_socket: FakeSystemd) -> None:
    clock = Clock()
    beats = {"ingest": clock.now, "infer": clock.now}
    dog = sdnotify.Watchdog(beats, max_age_s=10.0, clock=clock)

    assert dog.check() is True
    assert systemd_socket.received() == ["WATCHDOG=1"]

    # ingest keeps turning, inference hangs: the feed stops and says why, once
    clock.now += 11
    beats["ingest"] = clock.now
    assert dog.stale() == ["infer"]
    assert dog.check() is False
    assert dog.check() is False
    assert systemd_socket.received() == ["STATUS=stalled: infer"]

    # inference recovers before systemd gave up: feeding resumes
    beats["infer"] = clock.now
    assert dog.check() is True
    assert systemd_socket.received() == ["STATUS=running", "WATCHDOG=1"]
    assert dog.ages() == {"ingest": 0.0, "infer": 0.0}


def test_watchdog_thread_feeds_and_stops_feeding_on_stall(systemd_socket: FakeSystemd) -> None:
    beats = {"infer": time.monotonic()}
    dog = sdnotify.Watchdog(beats, max_age_s=0.3)
    assert dog.start(interval_s=0.05)
    try:
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            beats["infer"] = time.monotonic()
            time.sleep(0.02)
        fed = systemd_socket.received()
        assert "WATCHDOG=1" in fed
        time.sleep(0.6)  # nothing stamps any more: the stage is stalled
        after = systemd_socket.received()
        assert "STATUS=stalled: infer" in after
        time.sleep(0.2)
        assert systemd_socket.received() == []
    finally:
        dog.stop()


def test_watchdog_start_needs_an_armed_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert sdnotify.Watchdog({}, max_age_s=1).start() is False
    with pytest.raises(ValueError, match="max_age_s"):
        sdnotify.Watchdog({}, max_age_s=0)
