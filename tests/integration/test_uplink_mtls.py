"""The egress uplink over mutual TLS to a cloud broker that requires client certificates.

A real Mosquitto plays the cloud: its TLS listener demands a client certificate
signed by the cloud CA (``require_certificate true``). The agent's Uplink, given
the CA, its certificate and key, delivers every outbox row in order and the
ledger names an ``mqtts://`` destination; an uplink holding a certificate from
another CA, or none, never connects, and its reports stay in the outbox.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import queue
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from edge.core.config import CloudMQTTConfig, TLSConfig
from edge.egress.ledger import Ledger
from edge.egress.outbox import Outbox
from edge.egress.uplink import Uplink
from tests.conftest import free_port, start_mosquitto, wait_port

pytestmark = pytest.mark.mqtt
NOW = dt.datetime.now(dt.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(minutes=5))
            .not_valid_after(NOW + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def _leaf(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], cn: str, out: Path,
          server: bool = False) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
         .issuer_name(ca[0].subject).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(NOW - dt.timedelta(minutes=5))
         .not_valid_after(NOW + dt.timedelta(days=1)))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    (out / f"{cn}.crt").write_bytes(b.sign(ca[1], hashes.SHA256())
                                    .public_bytes(serialization.Encoding.PEM))
    (out / f"{cn}.key").write_bytes(_pem_key(key))


def _uplink(tmp: Path, port: int, pki: Path, cert: str | None, name: str
            ) -> tuple[Uplink, Outbox, Ledger]:
    tls = TLSConfig(ca_file=pki / "cloud-ca.crt",
                    cert_file=pki / f"{cert}.crt" if cert else None,
                    key_file=pki / f"{cert}.key" if cert else None)
    cfg = CloudMQTTConfig(host="127.0.0.1", port=port, tls=tls, client_id=f"up-{name}",
                          reconnect_min_s=1, reconnect_max_s=1)
    outbox = Outbox(tmp / f"{name}-outbox.sqlite")
    ledger = Ledger(tmp / f"{name}-ledger.sqlite")
    for i in range(5):
        outbox.put(json.dumps({"seq": i, "uplink": name}).encode())
    return Uplink(outbox, ledger, cfg, "s1"), outbox, ledger


def test_uplink_delivers_over_mutual_tls_and_foreign_certs_are_refused(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    cloud_ca, rogue_ca = _ca("cloud CA"), _ca("rogue CA")
    (pki / "cloud-ca.crt").write_bytes(cloud_ca[0].public_bytes(serialization.Encoding.PEM))
    _leaf(cloud_ca, "localhost", pki, server=True)
    _leaf(cloud_ca, "forewarn-egress-s1", pki)
    _leaf(rogue_ca, "rogue", pki)
    tls_port = free_port()
    broker = start_mosquitto(
        tmp_path / "cloud",
        extra_conf=f"listener {tls_port} 127.0.0.1\ncafile {pki}/cloud-ca.crt\n"
                   f"certfile {pki}/localhost.crt\nkeyfile {pki}/localhost.key\n"
                   "require_certificate true\nuse_identity_as_username true\n")
    wait_port(tls_port)
    got: queue.Queue[dict[str, object]] = queue.Queue()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="cloud-reader")
    sub.on_message = lambda c, u, m: got.put(json.loads(m.payload))
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe("forewarn/+/drift", qos=1)
    sub.loop_start()
    ups = {name: _uplink(tmp_path, tls_port, pki, cert, name)
           for name, cert in (("good", "forewarn-egress-s1"), ("rogue", "rogue"),
                              ("nocert", None))}
    try:
        time.sleep(0.5)  # the reader's SUBACK; the reports are QoS 1 either way
        for up, _, _ in ups.values():
            up.start()
        seqs = []
        deadline = time.monotonic() + 20
        while len(seqs) < 5 and time.monotonic() < deadline:
            try:
                msg = got.get(timeout=0.5)
            except queue.Empty:
                continue
            assert msg["uplink"] == "good", f"a report from an untrusted uplink arrived: {msg}"
            seqs.append(msg["seq"])
        assert seqs == [0, 1, 2, 3, 4]
        _, good_box, good_ledger = ups["good"]
        deadline = time.monotonic() + 10
        while good_box.depth() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert good_box.depth() == 0
        entries = good_ledger.entries()
        assert len(entries) == 5
        assert all(e.destination.startswith(f"mqtts://127.0.0.1:{tls_port}/") for e in entries)
        # The refused uplinks had several reconnect attempts meanwhile.
        time.sleep(2.0)
        for name in ("rogue", "nocert"):
            up, box, ledger = ups[name]
            assert not up.connected.is_set(), f"{name} uplink connected"
            assert box.depth() == 5 and ledger.entries() == []
        assert got.empty()
    finally:
        for up, box, ledger in ups.values():
            up.stop()
            box.close()
            ledger.close()
        sub.loop_stop()
        sub.disconnect()
        broker.stop()
