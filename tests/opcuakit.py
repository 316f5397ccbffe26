"""A real OPC UA server (asyncua) in its own process, a TCP cutter and test certificates.

The server plays a PLC: every ``period_s`` it writes, with a source timestamp,

* ``Pump1.Counter``   1, 2, 3, … (a Double) — every value is also appended to the
  ``written`` log, so a test can compare what the client received with what the
  server wrote, value for value;
* ``Pump1.Temperature`` a slow sine (browse path ``2:Pump1/2:Temperature``);
* ``Pump1.Running``   a Boolean, ``Pump1.Label`` a String (not numeric);
* ``Pump1.Flaky``     the tick number, but every ``bad_every``-th write carries the
  status ``BadSensorFailure``.

The counter and its last source timestamp are kept in a state file: a restarted server
(a new process on the same port) shows the last value with its original timestamp and
continues from it, as a PLC's OPC UA server does after a reboot.

Run as ``python -m tests.opcuakit <spec.json>``; :class:`OpcUaServer` does that.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import REPO, free_port, wait_port

NS_URI = "urn:forewarn:test-plc"
APP_URI = "urn:forewarn:test-plc:server"
CLIENT_URI = "urn:forewarn:test-client"


# -- certificates ------------------------------------------------------------------
def make_cert(directory: Path, name: str, uri: str, *, server: bool) -> tuple[Path, Path]:
    """A self-signed application instance certificate (DER) and its key (PEM)."""
    from asyncua.crypto import cert_gen
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    directory.mkdir(parents=True, exist_ok=True)
    key = cert_gen.generate_private_key()
    usage = [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
    names = [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost"),
             x509.DNSName(socket.gethostname())]
    cert = cert_gen.generate_self_signed_app_certificate(key, name, {}, names, usage)
    cert_path, key_path = directory / f"{name}.der", directory / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    return cert_path, key_path


# -- the server process --------------------------------------------------------------
@dataclass
class OpcUaServer:
    """Starts, kills and restarts the server process; reads what it wrote."""

    workdir: Path
    port: int = 0
    period_s: float = 0.02
    bad_every: int = 5
    cert: Path | None = None  # with cert and key: Basic256Sha256 endpoints only
    key: Path | None = None
    users: dict[str, str] = field(default_factory=dict)  # username -> password
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.spec = self.workdir / "spec.json"
        self.written = self.workdir / "written.log"
        self.log = self.workdir / "server.log"

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/forewarn/"

    def start(self) -> OpcUaServer:
        self.spec.write_text(json.dumps({
            "port": self.port, "period_s": self.period_s, "bad_every": self.bad_every,
            "cert": str(self.cert) if self.cert else None,
            "key": str(self.key) if self.key else None, "users": self.users,
            "state": str(self.workdir / "state.json"), "written": str(self.written)}))
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.opcuakit", str(self.spec)],
                                     cwd=REPO, env=env, stdout=self.log.open("ab"),
                                     stderr=subprocess.STDOUT)
        try:
            wait_port(self.port, timeout=60)
            # Listening comes before the first tick: wait until the PLC writes values.
            deadline = time.monotonic() + 30
            while not self.counter_values() and time.monotonic() < deadline:
                time.sleep(0.02)
        except TimeoutError:
            self.stop()
            raise AssertionError(
                f"OPC UA server did not start:\n{self.log.read_text()[-3000:]}") from None
        return self

    def stop(self, hard: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def restart(self, down_s: float = 0.5) -> None:
        """A real restart: the process dies (SIGKILL), its queues with it."""
        self.stop(hard=True)
        time.sleep(down_s)
        self.start()

    def counter_values(self) -> list[tuple[int, float]]:
        """(value, source timestamp) of every counter value the server wrote, in order."""
        if not self.written.exists():
            return []
        out = []
        for line in self.written.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:  # a line cut by SIGKILL has one part
                out.append((int(parts[0]), float(parts[1])))
        return out


class TcpCutter:
    """A loopback TCP forwarder whose connections can be cut (a network outage).

    During an outage the port is closed (a connect is refused at once, as on a link
    whose far end is down) and every live connection is dropped.
    """

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        self._swallow = False
        self._listen()

    def _listen(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for _ in range(100):  # the old listener's accept() may still be returning
            try:
                self.sock.bind(("127.0.0.1", self.port))
                break
            except OSError:
                time.sleep(0.02)
        self.sock.listen(16)
        threading.Thread(target=self._accept, args=(self.sock,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                c, _ = listener.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                c.close()
                continue
            with self._lock:
                self._conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if not self._swallow:
                    dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def _unlisten(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        self.sock.close()

    def _drop_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def cut(self, down_s: float) -> None:
        """Drop every connection; refuse new ones for ``down_s`` seconds (blocks)."""
        self._unlisten()
        self._drop_all()
        time.sleep(down_s)
        if not self._closed:
            self._listen()

    def blackhole(self, down_s: float) -> None:
        """For ``down_s`` seconds, bytes go nowhere while the connections stay open (what
        a peer sends then is lost in transit), then the connections drop (blocks)."""
        self._swallow = True
        time.sleep(down_s)
        self._unlisten()
        self._drop_all()
        self._swallow = False
        if not self._closed:
            self._listen()

    def close(self) -> None:
        self._closed = True
        self._unlisten()
        self._drop_all()


# -- what runs in the server process ---------------------------------------------------
def _fix_transfer() -> None:
    """asyncua's server (2.1) accepts TransferSubscriptions but keeps taking the publish
    requests of the old connection, so a transferred subscription never publishes
    again. Bind it to the new connection's requests too, as reactivation already does
    and as PLC servers do."""
    from asyncua.server.subscription_service import SubscriptionService

    original = SubscriptionService.transfer_subscriptions

    async def transfer(self: Any, params: Any, session_id: Any, callback: Any) -> Any:
        results = await original(self, params, session_id, callback)
        for sub_id, res in zip(params.SubscriptionIds, results, strict=True):
            sub = self.subscriptions.get(int(sub_id))
            if sub is not None and res.StatusCode.is_good():
                sub.pub_request_callback = callback.__self__.get_publish_request
        return results

    SubscriptionService.transfer_subscriptions = transfer  # type: ignore[method-assign]


async def _serve(spec: dict[str, Any]) -> None:
    from asyncua import Server, ua
    from asyncua.crypto.permission_rules import User, UserRole

    _fix_transfer()
    users: dict[str, str] = spec["users"]

    class Users:
        def get_user(self, iserver: Any, username: str | None = None,
                     password: str | None = None, certificate: Any = None) -> User | None:
            if username is None:
                return User(role=UserRole.User) if not users or certificate else None
            return User(role=UserRole.User) if users.get(username) == password else None

    server = Server(user_manager=Users())
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{spec['port']}/forewarn/")
    server.set_server_name("forewarn test PLC")
    await server.set_application_uri(APP_URI)
    if spec["cert"]:
        await server.load_certificate(spec["cert"])
        await server.load_private_key(spec["key"])
        server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                                    ua.SecurityPolicyType.Basic256Sha256_Sign])
    if users:
        server.set_identity_tokens([ua.UserNameIdentityToken, ua.X509IdentityToken])
    idx = await server.register_namespace(NS_URI)
    pump = await server.nodes.objects.add_object(ua.NodeId("Pump1", idx),
                                                 ua.QualifiedName("Pump1", idx))

    async def var(name: str, value: Any, vtype: ua.VariantType) -> Any:
        return await pump.add_variable(ua.NodeId(f"Pump1.{name}", idx),
                                       ua.QualifiedName(name, idx), ua.Variant(value, vtype))

    counter = await var("Counter", 0.0, ua.VariantType.Double)
    temp = await var("Temperature", 20.0, ua.VariantType.Double)
    running = await var("Running", False, ua.VariantType.Boolean)
    label = await var("Label", "", ua.VariantType.String)
    flaky = await var("Flaky", 0.0, ua.VariantType.Double)

    state_path, written_path = Path(spec["state"]), Path(spec["written"])
    n, last_ts = 0, None
    if state_path.exists():
        saved = json.loads(state_path.read_text())
        n, last_ts = saved["n"], saved["ts"]

    async def write(node: Any, value: Any, vtype: ua.VariantType, ts: dt.datetime,
                    status: int = ua.StatusCodes.Good) -> None:
        await server.write_attribute_value(node.nodeid, ua.DataValue(
            ua.Variant(value, vtype), StatusCode=ua.StatusCode(status),
            SourceTimestamp=ts, ServerTimestamp=ts))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    written = written_path.open("a", buffering=1)
    async with server:
        if last_ts is not None:  # after a reboot: the last value, with its own timestamp
            await write(counter, float(n), ua.VariantType.Double,
                        dt.datetime.fromtimestamp(last_ts, dt.UTC))
            # Values are written once a client subscribed again, so a test knows which
            # ones a client could have received (a PLC writes on regardless).
            subs = server.iserver.subscription_service.subscriptions
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not stop.is_set() and not any(
                    s.monitored_item_srv._monitored_items for s in subs.values()):
                await asyncio.sleep(0.01)
        period = spec["period_s"]
        next_at = time.monotonic()
        while not stop.is_set():
            n += 1
            now = time.time()
            ts = dt.datetime.fromtimestamp(now, dt.UTC)
            # Logged before it is written: a value a client can receive is always logged.
            written.write(f"{n} {now!r}\n")
            tmp = state_path.with_suffix(".tmp")  # replaced whole: SIGKILL may come any time
            tmp.write_text(json.dumps({"n": n, "ts": now}))
            tmp.replace(state_path)
            await write(counter, float(n), ua.VariantType.Double, ts)
            await write(temp, 20.0 + 5.0 * math.sin(n / 50.0), ua.VariantType.Double, ts)
            await write(running, n % 2 == 0, ua.VariantType.Boolean, ts)
            await write(label, f"batch-{n}", ua.VariantType.String, ts)
            bad = spec["bad_every"] and n % spec["bad_every"] == 0
            await write(flaky, float(n), ua.VariantType.Double, ts,
                        ua.StatusCodes.BadSensorFailure if bad else ua.StatusCodes.Good)
            next_at += period
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
    written.close()


if __name__ == "__main__":
    asyncio.run(_serve(json.loads(Path(sys.argv[1]).read_text())))
