"""The API over HTTPS (api.tls_cert_file / api.tls_key_file) on the running agent, and the
config rules that keep an API bound beyond loopback from serving anonymous reads."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.api.serve import check_tls
from edge.app import Agent
from edge.cli.agent import check_config
from edge.core.config import load_config
from edge.core.errors import ConfigError
from tests.agentkit import agent_config
from tests.bundlefactory import make_bundle
from tests.conftest import Broker, free_port
from tests.faults.conftest import toml


def throwaway_cert(d: Path, name: str = "127.0.0.1") -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(name))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    d.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = d / "api.crt", d / "api.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_the_agent_serves_its_api_over_https(tmp_path: Path, mosquitto: Broker) -> None:
    bundle, pub = make_bundle(tmp_path / "models", signals=["a", "b"])
    cert, key = throwaway_cert(tmp_path / "tls")
    port = free_port()
    cfg = agent_config(tmp_path / "state", bundle, pub, mosquitto.port,
                       api={"port": port, "tls_cert_file": str(cert),
                            "tls_key_file": str(key)})
    agent = Agent(cfg)
    agent.start()
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        r = httpx.get(f"https://127.0.0.1:{port}/api/status", verify=trust, timeout=10)
        assert r.status_code == 200 and r.json()["site"] == "site1"
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"https://127.0.0.1:{port}/healthz", timeout=10)  # not a trusted CA
        with pytest.raises(httpx.HTTPError):  # no plain HTTP on the TLS port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
    finally:
        agent.stop()


def write_config(tmp_path: Path, **api: Any) -> Path:
    bundle, pub = make_bundle(tmp_path / "models", signals=["a", "b"])
    raw = {"site": "site1", "state_dir": str(tmp_path / "state"),
           "bundle": {"path": str(bundle), "trusted_keys": [str(pub)]}, "api": api}
    path = tmp_path / "agent.toml"
    path.write_text(toml(raw) + "\n")
    return path


@pytest.mark.parametrize(("api", "expected"), [
    ({"host": "0.0.0.0"}, "api.host → '0.0.0.0' → listens beyond loopback, so reads need a "
                          "token: set api.tokens_file"),
    ({"host": "10.1.2.3", "tokens_file": "tokens", "read_open": True},
     "api.read_open → True → reads without a token are allowed only on a loopback host"),
    ({"tls_cert_file": "api.crt"}, "api.tls_cert_file and api.tls_key_file go together"),
    ({"tls_cert_file": "missing.crt", "tls_key_file": "missing.key"},
     "api.tls_cert_file → "),
    ({"tls_cert_file": "tls/api.crt", "tls_key_file": "other/api.key"},
     "not a PEM certificate matching api.tls_key_file"),
])
def test_check_config_refuses_an_exposed_or_broken_api(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], api: dict[str, Any],
        expected: str) -> None:
    throwaway_cert(tmp_path / "tls")
    throwaway_cert(tmp_path / "other")  # a key that does not match tls/api.crt
    (tmp_path / "tokens").write_text("ana:ana-0123456789abcdef\n")
    path = write_config(tmp_path, **api)
    assert check_config(path) == 1
    assert expected in capsys.readouterr().out


def test_check_config_accepts_a_guarded_plant_network_api_and_loopback_demo(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    throwaway_cert(tmp_path / "tls")
    (tmp_path / "tokens").write_text("ana:ana-0123456789abcdef\n")
    path = write_config(tmp_path, host="0.0.0.0", tokens_file="tokens",
                        tls_cert_file="tls/api.crt", tls_key_file="tls/api.key")
    assert check_config(path) == 0, capsys.readouterr().out
    assert load_config(path).api.reads_open is False  # beyond loopback: reads need a token
    demo = write_config(tmp_path / "demo")  # loopback, no tokens: open reads as before
    assert check_config(demo) == 0
    assert load_config(demo).api.reads_open is True


def test_agent_start_refuses_a_bad_certificate_with_the_key_named(tmp_path: Path) -> None:
    cert, _ = throwaway_cert(tmp_path / "tls")
    (tmp_path / "tls" / "api.key").write_text("not a key\n")
    cfg = load_config(write_config(tmp_path, tls_cert_file=str(cert),
                                   tls_key_file=str(tmp_path / "tls" / "api.key")))
    with pytest.raises(ConfigError, match=r"api\.tls_cert_file"):
        check_tls(cfg.api)
