"""Start a local MQTT broker for the demo: Mosquitto when installed, else amqtt.

The embedded fallback (amqtt, pure Python) speaks MQTT 3.1.1 only and queues
nothing for an offline persistent session: good enough for a demo, not for a plant.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LocalBroker:
    kind: str  # "mosquitto" or "amqtt"
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def protocol(self) -> str:
        return "5" if self.kind == "mosquitto" else "3.1.1"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_port(preferred: int) -> int:
    if port_free(preferred):
        return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str,
                   timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} is not listening on 127.0.0.1:{port} after {timeout:.0f}s")


def start_broker(workdir: Path, port: int, prefer: str = "auto") -> LocalBroker:
    workdir.mkdir(parents=True, exist_ok=True)
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto"
                                         if Path("/usr/sbin/mosquitto").exists() else None)
    log = (workdir / "broker.log").open("ab")
    if prefer == "mosquitto" and not exe:
        raise RuntimeError("--broker mosquitto: mosquitto is not installed")
    if exe and prefer in ("auto", "mosquitto"):
        conf = workdir / "mosquitto.conf"
        # Loopback only; no silent drops for a slow subscriber; no Nagle delay.
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                        "max_queued_messages 0\nset_tcp_nodelay true\n"
                        f"persistence true\npersistence_location {workdir}/\n")
        proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        kind = "mosquitto"
    else:
        conf = workdir / "amqtt.yaml"
        conf.write_text(
            "listeners:\n  default:\n    type: tcp\n"
            f"    bind: 127.0.0.1:{port}\n"  # amqtt's default is 0.0.0.0: never use it
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
            "    allow_anonymous: true\n")
        amqtt = Path(sys.executable).with_name("amqtt")
        proc = subprocess.Popen([str(amqtt), "-c", str(conf)], stdout=log,
                                stderr=subprocess.STDOUT)
        kind = "amqtt"
    broker = LocalBroker(kind, port, proc)
    try:
        wait_listening(port, proc, kind)
    except RuntimeError:
        broker.stop()
        raise
    return broker
