"""Minimal systemd ``sd_notify`` for ``Type=notify`` units, and a stage watchdog.

The protocol is one AF_UNIX datagram of ``KEY=value`` lines to the socket named
by ``$NOTIFY_SOCKET`` (a leading ``@`` means the Linux abstract namespace).
Every function is a no-op returning ``False`` when the variable is unset, so the
agent runs unchanged outside systemd. The environment is read at call time, not
at import, so tests and the CLI see the variables they set.

:class:`Watchdog` is what makes ``WatchdogSec=`` mean "the hot path is moving"
rather than "the process exists": each pipeline stage stamps
``heartbeats[stage] = time.monotonic()`` every time its loop turns (including
idle wake-ups on an empty queue, so a quiet plant is not a stall), and
``WATCHDOG=1`` is sent only while every stamp is younger than ``max_age_s``.
A stage stuck in a deadlock or a hung onnxruntime call stops the feed, and
systemd restarts the unit (``Restart=on-failure``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping

log = logging.getLogger(__name__)


def _socket_address(env: Mapping[str, str]) -> str | None:
    addr = env.get("NOTIFY_SOCKET", "")
    if not addr:
        return None
    if addr.startswith("@"):
        return "\0" + addr[1:]
    if addr.startswith("/"):
        return addr
    # vsock: and other transports of newer systemd are not needed on a gateway.
    log.debug("NOTIFY_SOCKET=%r is not a unix socket path; notifications disabled", addr)
    return None


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send one notification; ``True`` if a datagram was sent."""
    address = _socket_address(os.environ if env is None else env)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode("utf-8"), address)
    except OSError as exc:
        # A lost notification must not take the agent down; systemd's watchdog
        # and start timeout are the safety net for a notify path that stays broken.
        log.warning("sd_notify to %s failed: %s", address.lstrip("\0"), exc)
        return False
    return True


def ready(status_text: str | None = None) -> bool:
    """Startup finished (config loaded, bundle warmed up, broker subscribed)."""
    msg = "READY=1" + (f"\nSTATUS={_one_line(status_text)}" if status_text else "")
    return notify(msg + f"\nMAINPID={os.getpid()}")


def stopping() -> bool:
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """Free-form status shown by ``systemctl status``."""
    return notify(f"STATUS={_one_line(text)}")


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def extend_timeout(seconds: float) -> bool:
    """Ask for more start/stop time, e.g. while a large bundle warms up."""
    return notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """The unit's ``WatchdogSec=`` in seconds, or ``None`` if no watchdog is armed for us."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None  # the watchdog belongs to another process (e.g. our parent)
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]


class Watchdog:
    """Feeds systemd's watchdog only while every pipeline stage is fresh.

    ``heartbeats`` is shared with the pipeline (stage name -> ``time.monotonic()``
    of its last loop turn); only stages present in it are checked, so a stage is
    supervised from its first stamp on.
    """

    def __init__(
        self,
        heartbeats: MutableMapping[str, float],
        max_age_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        send: Callable[[], bool] = watchdog,
        on_status: Callable[[str], bool] = status,
    ) -> None:
        if max_age_s <= 0:
            raise ValueError(f"max_age_s={max_age_s} must be positive")
        self.heartbeats = heartbeats
        self.max_age_s = max_age_s
        self._clock = clock
        self._send = send
        self._on_status = on_status
        self._stalled: tuple[str, ...] = ()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def ages(self) -> dict[str, float]:
        now = self._clock()
        # Copy first: the pipeline may add a stage while we iterate.
        return {stage: max(0.0, now - t) for stage, t in list(self.heartbeats.items())}

    def stale(self) -> list[str]:
        return sorted(s for s, age in self.ages().items() if age > self.max_age_s)

    def check(self) -> bool:
        """Send ``WATCHDOG=1`` if all stages are fresh; return whether it was fed."""
        stalled = tuple(self.stale())
        if stalled != self._stalled:
            # Say once why the feed stopped (or resumed), not on every tick.
            self._on_status("stalled: " + ", ".join(stalled) if stalled else "running")
            if stalled:
                log.error("pipeline stage(s) stalled for > %.1fs: %s", self.max_age_s,
                          ", ".join(stalled))
            self._stalled = stalled
        if stalled:
            return False
        self._send()
        return True

    def start(self, interval_s: float | None = None) -> bool:
        """Feed from a daemon thread at half the systemd interval; ``False`` if unarmed."""
        if interval_s is None:
            armed = watchdog_interval()
            if armed is None:
                return False
            interval_s = armed / 2
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(interval_s,), name="sd-watchdog", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.check()
