"""The shipped site-broker config (deploy/mosquitto/) enforces who may do what.

Mosquitto is started with deploy/mosquitto/mosquitto.conf and acl, unchanged
except for the gateway paths and ports, which are rewritten to a temporary
directory and free loopback ports. Accounts are created with the shipped
mkpasswd.sh. "Nothing arrives" is shown with an ordering sentinel, not a sleep:
the forbidden publish is acknowledged by the broker before an allowed one is
sent on the same path, so had it been delivered it would have arrived first.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import queue
import re
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from tests.conftest import free_port, start_mosquitto, wait_port

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "deploy" / "mosquitto"
PASSWORDS = {"pump1": "pw-pump1", "pump2": "pw-pump2", "forewarn-agent": "pw-agent",
             "display-andon": "pw-display"}
TIMEOUT = 5.0

pytestmark = pytest.mark.mqtt


def _write_pki(d: Path) -> None:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forewarn test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                       x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(san, critical=False).sign(ca_key, hashes.SHA256()))
    d.mkdir(parents=True)
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


def _adapt(text: str, etc: Path, plain: int, tls: int) -> str:
    """Rewrite only the gateway-specific values; fail loudly if the shipped file changed shape."""
    subs = [("/etc/mosquitto/forewarn/", f"{etc}/"),
            ("listener 1883 127.0.0.1\n", f"listener {plain} 127.0.0.1\n"),
            ("listener 8883\n", f"listener {tls} 127.0.0.1\n")]
    for old, new in subs:
        assert old in text, f"deploy/mosquitto/mosquitto.conf no longer contains {old!r}"
        text = text.replace(old, new)
    return text


@dataclass
class SiteBroker:
    plain: int
    tls: int
    ca: Path
    conf: Path


@pytest.fixture(scope="module")
def site_broker() -> Iterator[SiteBroker]:
    if not shutil.which("mosquitto_passwd"):
        pytest.fail("mosquitto_passwd missing (apt-get install -y mosquitto mosquitto-clients)")
    # Started as root, mosquitto drops to its own user before reading the password
    # file, as on a gateway: pytest's 0700 temp root would hide the files from it.
    etc = Path(tempfile.mkdtemp(prefix="forewarn-broker-", dir="/tmp"))
    etc.chmod(0o755)
    _write_pki(etc / "tls")
    for p in (etc / "tls").iterdir():
        p.chmod(0o644)
    shutil.copy(SHIPPED / "acl", etc / "acl")
    for user, pw in PASSWORDS.items():
        subprocess.run([str(SHIPPED / "mkpasswd.sh"), "-f", str(etc / "passwd"), user, pw],
                       check=True, capture_output=True)
    (etc / "passwd").chmod(0o644)
    plain, tls = free_port(), free_port()
    conf = etc / "mosquitto.conf"
    conf.write_text(_adapt((SHIPPED / "mosquitto.conf").read_text(), etc, plain, tls))
    log = (etc / "mosquitto.log").open("ab")
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(plain)
        wait_port(tls)
        yield SiteBroker(plain, tls, etc / "tls" / "ca.crt", conf)
    finally:
        proc.terminate()
        proc.wait(5)
        log.close()
        shutil.rmtree(etc, ignore_errors=True)


class Client:
    """A synchronous view of a paho client: connect, subscribe, publish, collect."""

    def __init__(self, broker: SiteBroker, user: str | None, password: str | None = None,
                 *, tls: bool = False, ca: Path | None = None,
                 protocol: int = mqtt.MQTTv5) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connack: queue.Queue[ReasonCode] = queue.Queue()
        self.subacks: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.pubacks: dict[int, ReasonCode] = {}
        c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
        if user is not None:
            c.username_pw_set(user, PASSWORDS.get(user) if password is None else password)
        if tls:
            c.tls_set(ca_certs=str(ca or broker.ca))
        c.on_connect = lambda _c, _u, _f, rc, _p: self.connack.put(rc)
        c.on_subscribe = lambda _c, _u, _m, rcs, _p: self.subacks.put(list(rcs))
        c.on_message = lambda _c, _u, m: self.messages.put((m.topic, m.payload))
        c.on_publish = lambda _c, _u, mid, rc, _p: self.pubacks.__setitem__(mid, rc)
        self.disconnected = threading.Event()
        c.on_disconnect = lambda *_a: self.disconnected.set()
        self.c = c
        self.rc = self._connect(broker.tls if tls else broker.plain)

    def _connect(self, port: int) -> ReasonCode | None:
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        try:
            return self.connack.get(timeout=TIMEOUT)
        except queue.Empty:
            return None  # no CONNACK at all (e.g. the TLS handshake failed)

    @property
    def accepted(self) -> bool:
        return self.rc is not None and not self.rc.is_failure

    def subscribe(self, topic: str) -> ReasonCode:
        self.c.subscribe(topic, qos=1)
        return self.subacks.get(timeout=TIMEOUT)[0]

    def publish(self, topic: str, payload: bytes) -> ReasonCode | None:
        """QoS 1; returns the PUBACK reason, or None if the broker hung up instead.

        Either way the broker has dealt with the message when this returns.
        """
        info = self.c.publish(topic, payload, qos=1)
        deadline = time.monotonic() + TIMEOUT
        while not info.is_published() and not self.disconnected.is_set():
            assert time.monotonic() < deadline, f"no PUBACK and no disconnect for {topic}"
            time.sleep(0.01)
        return self.pubacks.get(info.mid)

    def received(self, until: bytes) -> list[tuple[str, bytes]]:
        """All messages up to and including the sentinel payload ``until``."""
        got = []
        while True:
            msg = self.messages.get(timeout=TIMEOUT)
            got.append(msg)
            if msg[1] == until:
                return got

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def clients(site_broker: SiteBroker) -> Iterator[dict[str, Client]]:
    # Sensors speak MQTT 3.1.1 like most PLC gateways; agent and display MQTT 5.
    made = {u: Client(site_broker, u, protocol=mqtt.MQTTv311 if u.startswith("pump")
                      else mqtt.MQTTv5) for u in PASSWORDS}
    try:
        for name, cl in made.items():
            assert cl.accepted, f"{name} was refused: {cl.rc}"
        yield made
    finally:
        for cl in made.values():
            cl.close()


def test_anonymous_and_wrong_password_are_refused(site_broker: SiteBroker) -> None:
    for kwargs in ({"tls": False}, {"tls": True}):
        anon = Client(site_broker, None, **kwargs)
        wrong = Client(site_broker, "pump1", "not-the-password", **kwargs)
        try:
            assert not anon.accepted, f"anonymous client accepted ({kwargs})"
            assert not wrong.accepted, f"wrong password accepted ({kwargs})"
            assert anon.rc is not None and anon.rc.getName() == "Not authorized"
        finally:
            anon.close()
            wrong.close()


FORGERIES = [
    ("pump1", "forewarn/site1/pump2/temp"),      # another asset's signal
    ("pump1", "forewarn/site1/pump2"),           # another asset's object form
    ("pump1", "forewarn/site1/alerts/pump1"),    # an alert
    ("pump1", "spBv1.0/plant/NDATA/pump2"),      # another edge node's Sparkplug data
    ("pump1", "spBv1.0/plant/DDATA/pump2/motor"),  # a device of another edge node
    ("pump1", "spBv1.0/plant/DBIRTH/pump2/motor"),
    ("pump1", "spBv1.0/plant/DDATA/pump1/motor/x"),  # not a Sparkplug device topic
    ("pump1", "spBv1.0/plant/NCMD/pump2"),       # a command: only the agent sends them
    ("pump1", "spBv1.0/plant/DCMD/pump1/motor"),
    ("display-andon", "forewarn/site1/alerts/pump1"),
    ("display-andon", "forewarn/site1/display-x/temp"),
]


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["v311", "v5"])
def test_forged_publishes_are_not_delivered(site_broker: SiteBroker, protocol: int) -> None:
    observer = Client(site_broker, "forewarn-agent")
    try:
        assert not observer.subscribe("forewarn/#").is_failure
        assert not observer.subscribe("spBv1.0/#").is_failure
        for user, topic in FORGERIES:
            forger = Client(site_broker, user, protocol=protocol)
            try:
                assert forger.accepted
                rc = forger.publish(topic, b"forged")
                # v5 is told so; a 3.1.1 PUBACK cannot say it, so only the
                # observer below can show that the message was dropped.
                if protocol == mqtt.MQTTv5:
                    assert rc is None or rc.getName() == "Not authorized", (user, topic, rc)
            finally:
                forger.close()
        pump1 = Client(site_broker, "pump1", protocol=protocol)
        try:
            assert pump1.publish("forewarn/site1/pump1", b'{"temp": 1}') is not None
            pump1.publish("forewarn/site1/pump1/temp", b"sentinel")
        finally:
            pump1.close()
        assert observer.received(until=b"sentinel") == [
            ("forewarn/site1/pump1", b'{"temp": 1}'), ("forewarn/site1/pump1/temp", b"sentinel")]
    finally:
        observer.close()


def test_sensor_cannot_read_alerts_or_readings(clients: dict[str, Client]) -> None:
    agent, pump1, display = clients["forewarn-agent"], clients["pump1"], clients["display-andon"]
    # Mosquitto 2.0 grants the SUBACK and filters on delivery; either way nothing
    # may reach the sensor.
    pump1.subscribe("forewarn/#")
    pump1.subscribe("spBv1.0/#")
    assert not agent.subscribe("forewarn/+/pump2/#").is_failure
    assert not display.subscribe("forewarn/+/alerts/#").is_failure
    clients["pump2"].publish("forewarn/site1/pump2/temp", b"reading-1")
    assert agent.received(until=b"reading-1") == [("forewarn/site1/pump2/temp", b"reading-1")]
    agent.publish("forewarn/site1/alerts/pump1", b"alert-1")
    assert display.received(until=b"alert-1") == [("forewarn/site1/alerts/pump1", b"alert-1")]
    with pytest.raises(queue.Empty):
        got = pump1.messages.get(timeout=0.5)
        pytest.fail(f"sensor received {got}")


def test_agent_writes_alerts_and_display_only_reads_them(clients: dict[str, Client]) -> None:
    agent, display = clients["forewarn-agent"], clients["display-andon"]
    display.subscribe("forewarn/#")  # readings are filtered out for displays
    assert not agent.subscribe("forewarn/+/alerts/#").is_failure
    clients["pump1"].publish("forewarn/site1/pump1/temp", b"reading-2")
    agent.publish("forewarn/site1/alerts/pump1", b"alert-2")
    assert agent.received(until=b"alert-2") == [("forewarn/site1/alerts/pump1", b"alert-2")]
    assert display.received(until=b"alert-2") == [("forewarn/site1/alerts/pump1", b"alert-2")]


def test_mqtt5_sensor_is_told_not_authorized(site_broker: SiteBroker) -> None:
    pump1 = Client(site_broker, "pump1", protocol=mqtt.MQTTv5)
    try:
        ok = pump1.publish("forewarn/site1/pump1/temp", b"1")
        assert ok is not None and not ok.is_failure
        rc = pump1.publish("forewarn/site1/alerts/pump1", b"forged")
        assert rc is not None and rc.getName() == "Not authorized"
    finally:
        pump1.close()


def test_tls_listener_verifies_with_the_site_ca(site_broker: SiteBroker,
                                                tmp_path: Path) -> None:
    ok = Client(site_broker, "pump1", tls=True)
    try:
        assert ok.accepted
        sock = ok.c.socket()
        assert isinstance(sock, ssl.SSLSocket) and sock.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        ok.close()
    # A client trusting another CA must not complete the handshake.
    _write_pki(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError):
        Client(site_broker, "pump1", tls=True, ca=tmp_path / "other" / "ca.crt")


@pytest.mark.parametrize("name", ["alerts", "events", "drift", "../x", "a b", "pump1.motor"])
def test_mkpasswd_refuses_reserved_and_unsafe_names(tmp_path: Path, name: str) -> None:
    r = subprocess.run([str(SHIPPED / "mkpasswd.sh"), "-f", str(tmp_path / "p"), name, "pw"],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert name in r.stderr
    assert not (tmp_path / "p").exists()


def test_mkpasswd_generates_a_password_when_none_given(tmp_path: Path) -> None:
    r = subprocess.run([str(SHIPPED / "mkpasswd.sh"), "-f", str(tmp_path / "p"), "pump9"],
                       capture_output=True, text=True, check=True)
    assert len(r.stdout.strip()) >= 16
    assert (tmp_path / "p").read_text().startswith("pump9:$7$")


def test_bridge_forwards_only_drift_reports(site_broker: SiteBroker, tmp_path: Path) -> None:
    """deploy/mosquitto/bridge.conf, pointed at a loopback 'central' broker without TLS."""
    central = start_mosquitto(tmp_path / "central")
    bridge = (SHIPPED / "bridge.conf").read_text()
    bridge = bridge.replace("address central-mqtt.example.net:8883",
                            f"address 127.0.0.1:{central.port}")
    # central here has no TLS; everything else of the shipped bridge is kept
    bridge = re.sub(r"(?m)^(bridge_cafile|bridge_insecure|tls_version) .*$", "", bridge)
    etc = Path(tempfile.mkdtemp(prefix="forewarn-bridge-", dir="/tmp"))
    etc.chmod(0o755)
    plain, unused_tls = free_port(), free_port()
    # the shipped site config on its loopback listener only (no TLS listener needed)
    site_conf = _adapt((SHIPPED / "mosquitto.conf").read_text(), site_broker.conf.parent,
                       plain, unused_tls)
    drop = (f"listener {unused_tls} ", "cafile ", "certfile ", "keyfile ", "tls_version ")
    site_conf = "\n".join(x for x in site_conf.splitlines() if not x.startswith(drop))
    (etc / "mosquitto.conf").write_text(f"{site_conf}\n{bridge}")
    log = (etc / "mosquitto.log").open("ab")
    proc = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c",
                             str(etc / "mosquitto.conf")], stdout=log, stderr=subprocess.STDOUT)
    site = SiteBroker(plain, plain, site_broker.ca, etc / "mosquitto.conf")
    watcher = agent = None
    try:
        wait_port(plain)
        watcher = mqtt.Client(CallbackAPIVersion.VERSION2)
        got: queue.Queue[tuple[str, bytes]] = queue.Queue()
        watcher.on_message = lambda _c, _u, m: got.put((m.topic, m.payload))
        watcher.connect("127.0.0.1", central.port)
        watcher.subscribe("#", qos=1)
        watcher.loop_start()
        agent = Client(site, "forewarn-agent")
        assert agent.accepted
        # wait for the bridge to come up: probe until central sees a drift message
        deadline = time.monotonic() + 15
        while True:
            agent.publish("forewarn/site1/drift", b"probe")
            try:
                if got.get(timeout=0.3)[0] == "forewarn/site1/drift":
                    break
            except queue.Empty:
                assert time.monotonic() < deadline, "bridge never delivered to central"
        while not got.empty():
            got.get()
        agent.publish("forewarn/site1/alerts/pump1", b"alert")
        agent.publish("forewarn/site1/events/pump1", b"event")
        clients_pump = Client(site, "pump1", protocol=mqtt.MQTTv311)
        clients_pump.publish("forewarn/site1/pump1/temp", b"raw-reading")
        clients_pump.close()
        agent.publish("forewarn/site1/drift/report", b"report-1")
        seen = []
        while not seen or seen[-1][1] != b"report-1":
            seen.append(got.get(timeout=TIMEOUT))
        assert [t for t, _ in seen] == ["forewarn/site1/drift/report"], seen
    finally:
        if agent is not None:
            agent.close()
        if watcher is not None:
            watcher.disconnect()
            watcher.loop_stop()
        proc.terminate()
        proc.wait(5)
        log.close()
        central.stop()
        shutil.rmtree(etc, ignore_errors=True)


def test_agent_runs_over_tls_with_a_password_behind_the_shipped_acl(
        site_broker: SiteBroker, tmp_path: Path) -> None:
    """The real agent on the TLS listener as `forewarn-agent`: readings from a sensor
    account are scored, the alert it opens reaches a display account."""
    from edge.app import Agent
    from tests.agentkit import agent_config, wait_until
    from tests.bundlefactory import make_bundle

    bundle, pub = make_bundle(tmp_path / "models", signals=["temp", "vib"], window=3,
                              warning=50.0)
    secret = tmp_path / "mqtt-password"
    secret.write_text(PASSWORDS["forewarn-agent"] + "\n")
    cfg = agent_config(tmp_path / "state", bundle, pub, site_broker.tls, mqtt={
        "username": "forewarn-agent", "password_file": str(secret),
        "tls": {"ca_file": str(site_broker.ca)}, "client_id": "forewarn-agent"})
    display = Client(site_broker, "display-andon")
    assert display.subscribe("forewarn/+/alerts/#").value < 128
    agent = Agent(cfg)
    agent.start()
    sensor = Client(site_broker, "pump1", tls=True, protocol=mqtt.MQTTv311)
    try:
        wait_until(agent.conn.connected.is_set, what="agent connected over TLS")
        for t in range(5):
            body = {"ts": 1_700_000_000 + t, "values": {"temp": 90.0, "vib": 1.0}}
            assert sensor.publish("forewarn/site1/pump1", json.dumps(body).encode()) is not None
        wait_until(lambda: agent.pipeline.scored_total >= 3, what="windows scored")
        topic, payload = display.messages.get(timeout=TIMEOUT)
        while json.loads(payload).get("state") != "open":
            topic, payload = display.messages.get(timeout=TIMEOUT)
        assert topic == "forewarn/site1/alerts/pump1"
    finally:
        sensor.close()
        display.close()
        agent.stop()


def test_agent_commands_reach_only_their_edge_node(clients: dict[str, Client]) -> None:
    """The agent may send NCMD/DCMD (Rebirth); each node reads its own and its devices'."""
    agent, pump1, pump2 = clients["forewarn-agent"], clients["pump1"], clients["pump2"]
    assert pump1.subscribe("spBv1.0/plant/NCMD/pump1").value < 128
    assert pump1.subscribe("spBv1.0/plant/DCMD/pump1/+").value < 128
    pump2.subscribe("spBv1.0/#")  # granted by Mosquitto 2.0, filtered on delivery
    assert pump2.subscribe("spBv1.0/plant/NCMD/pump2").value < 128
    for topic in ("spBv1.0/plant/NCMD/pump1", "spBv1.0/plant/DCMD/pump1/motor"):
        rc = agent.publish(topic, b"rebirth")
        assert rc is not None and not rc.is_failure, (topic, rc)
    agent.publish("spBv1.0/plant/NCMD/pump2", b"cmd-2")
    assert pump1.received(until=b"rebirth")[0] == ("spBv1.0/plant/NCMD/pump1", b"rebirth")
    assert pump1.received(until=b"rebirth") == [("spBv1.0/plant/DCMD/pump1/motor", b"rebirth")]
    # pump2 gets its own command, and nothing addressed to pump1 came first
    assert pump2.received(until=b"cmd-2") == [("spBv1.0/plant/NCMD/pump2", b"cmd-2")]


def test_sparkplug_node_pump1_cannot_feed_asset_pump2(site_broker: SiteBroker,
                                                     tmp_path: Path) -> None:
    """pump1 cannot publish under node pump2 (FORGERIES above, with the node's own
    topics); a device of its own that it calls "pump2" is delivered, and the agent
    files it as asset pump1.pump2, never as pump2."""
    from edge.ingest.sparkplug import SparkplugDecoder

    agent = Client(site_broker, "forewarn-agent")
    forger = Client(site_broker, "pump1", protocol=mqtt.MQTTv311)
    try:
        assert not agent.subscribe("spBv1.0/#").is_failure
        # Mosquitto 2.0 hangs up on a 3.1.1 client after a refused publish
        forger.publish("spBv1.0/plant/DBIRTH/pump2/motor", b"forged")
        own = Client(site_broker, "pump1", protocol=mqtt.MQTTv311)
        birth = _spb([{"name": "temp", "alias": 1, "datatype": 10, "double_value": 1.0}],
                     0, 1_700_000_000_000)
        own.publish("spBv1.0/plant/DBIRTH/pump1/pump2", birth)
        own.close()
        got = agent.received(until=birth)
        assert got == [("spBv1.0/plant/DBIRTH/pump1/pump2", birth)]
    finally:
        forger.close()
        agent.close()
    dec = SparkplugDecoder(tmp_path / "births.json", lambda g, n: None)
    res = dec.decode(got[0][0], got[0][1], 1_700_000_000.0)
    assert {r.asset for r in res.items} == {"pump1.pump2"}


def _spb(metrics: list[dict[str, object]], seq: int | None, ts_ms: int) -> bytes:
    from edge.ingest.proto.sparkplug_b_pb2 import Payload

    p = Payload(timestamp=ts_ms)
    if seq is not None:
        p.seq = seq
    for m in metrics:
        p.metrics.add(**m)  # type: ignore[arg-type]
    return p.SerializeToString()


def test_lost_birth_cache_is_repaired_by_the_agents_rebirth_behind_the_shipped_acl(
        site_broker: SiteBroker, tmp_path: Path) -> None:
    """The agent starts after the node's BIRTH (its cache lost): the first DDATA is an
    unknown alias, the agent's Rebirth NCMD passes the ACL, edge node pump1 answers
    with its BIRTHs, and the device's readings are scored."""
    from edge.app import Agent
    from tests.agentkit import agent_config, wait_until
    from tests.bundlefactory import make_bundle

    t0 = 1_700_000_000
    births: list[str] = []
    node = Client(site_broker, "pump1", protocol=mqtt.MQTTv311)
    seq = [0]

    def send(kind: str, device: str | None, metrics: list[dict[str, object]],
             ts_ms: int) -> None:
        topic = f"spBv1.0/plant/{kind}/pump1" + (f"/{device}" if device else "")
        node.c.publish(topic, _spb(metrics, seq[0] % 256, ts_ms), qos=1)
        seq[0] += 1

    def birth(ts_ms: int) -> None:
        seq[0] = 0
        send("NBIRTH", None, [{"name": "bdSeq", "datatype": 8, "long_value": 1}], ts_ms)
        send("DBIRTH", "motor", [
            {"name": "temp", "alias": 1, "datatype": 10, "double_value": 10.0},
            {"name": "vib", "alias": 2, "datatype": 10, "double_value": 1.0}], ts_ms)
        births.append("birth")

    def on_message(_c: object, _u: object, m: mqtt.MQTTMessage) -> None:
        if m.topic == "spBv1.0/plant/NCMD/pump1":
            birth(t0 * 1000 + 500)  # answers the Rebirth, as a Sparkplug node must

    node.c.on_message = on_message
    assert node.subscribe("spBv1.0/plant/NCMD/pump1").value < 128
    birth(t0 * 1000)  # while no agent is listening: its cache never sees it
    bundle, pub = make_bundle(tmp_path / "models", signals=["temp", "vib"], window=3,
                              warning=50.0)
    secret = tmp_path / "mqtt-password"
    secret.write_text(PASSWORDS["forewarn-agent"] + "\n")
    cfg = agent_config(tmp_path / "state", bundle, pub, site_broker.plain, mqtt={
        "username": "forewarn-agent", "password_file": str(secret), "sparkplug": True,
        "client_id": "forewarn-agent-spb"})
    agent = Agent(cfg)
    agent.start()
    try:
        wait_until(agent.conn.connected.is_set, what="agent connected")
        time.sleep(0.3)  # its subscription is in place before the node speaks
        for i in range(1, 8):
            send("DDATA", "motor", [{"alias": 1, "double_value": 10.0 + i},
                                    {"alias": 2, "double_value": 1.0}], (t0 + i) * 1000)
            time.sleep(0.05)
        wait_until(lambda: len(births) >= 2, what="the node received the agent's Rebirth")
        for i in range(8, 14):
            send("DDATA", "motor", [{"alias": 1, "double_value": 10.0 + i},
                                    {"alias": 2, "double_value": 1.0}], (t0 + i) * 1000)
        wait_until(lambda: agent.pipeline.scored_total >= 3, what="the device's windows scored")
        unknown = agent.metrics.decode_errors.labels("unknown_alias")._value.get()
        assert agent.router.sparkplug is not None
        assert agent.router.sparkplug.rebirths_requested == 1
        assert {a["asset"] for a in agent.alerts.assets()} >= {"pump1.motor"}
        assert 1 <= unknown <= 7
    finally:
        agent.stop()
        node.close()
