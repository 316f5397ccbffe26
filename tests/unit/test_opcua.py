"""OPC UA pure parts: sample mapping, dedupe, config rules, server-certificate trust."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from edge.core.config import parse_config
from edge.core.errors import ConfigError, SourceError
from edge.ingest.opcua_map import DedupeWindow, SampleMapper, is_good, overflowed
from edge.ingest.opcua_trust import check_server_certificate, load_trusted

T0 = 1_700_000_000.0
KEYS = [("pump-1", "temp"), ("pump-1", "vib")]


# -- mapping ----------------------------------------------------------------------
def test_kept_samples_carry_the_source_timestamp_and_their_asset_and_signal() -> None:
    m = SampleMapper(KEYS, origin="opcua:plc1")
    assert m.update(0, 21.5, 0, T0, T0 + 0.5, T0 + 1) is None
    assert m.update(1, 3, 0, T0 + 0.1, None, T0 + 1) is None  # an Int32 is a number
    m.notification()
    b = m.take()
    assert b is not None
    assert [b.keys[k] for k in b.key_idx.tolist()] == KEYS
    assert b.ts.tolist() == [T0, T0 + 0.1]
    assert b.value.tolist() == [21.5, 3.0]
    assert (b.origin, b.n_messages, b.stamped, b.dropped) == ("opcua:plc1", 1, 0, {})
    assert m.take() is None  # nothing since


def test_without_source_timestamp_the_server_time_then_the_receive_time_is_used() -> None:
    m = SampleMapper(KEYS)
    m.update(0, 1.0, 0, None, T0 + 5, T0 + 9)
    m.update(0, 2.0, 0, None, None, T0 + 9)
    b = m.take()
    assert b is not None and b.ts.tolist() == [T0 + 5, T0 + 9]
    assert (m.server_ts, m.receipt_ts, b.stamped) == (1, 1, 1)


def test_bad_and_uncertain_status_booleans_strings_and_nan_are_dropped_and_counted() -> None:
    m = SampleMapper(KEYS)
    assert m.update(0, 1.0, 0x80000000, T0, None, T0) == "opcua_bad_status"  # Bad
    assert m.update(0, 1.0, 0x408F0000, T0 + 1, None, T0) == "opcua_bad_status"  # Uncertain
    assert m.update(0, True, 0, T0 + 2, None, T0) == "bad_type"
    assert m.update(0, "12.5", 0, T0 + 3, None, T0) == "bad_type"
    assert m.update(0, None, 0, T0 + 4, None, T0) == "bad_type"
    assert m.update(0, [1.0], 0, T0 + 5, None, T0) == "bad_type"
    assert m.update(1, float("nan"), 0, T0 + 6, None, T0) == "non_finite"
    assert m.update(1, 7.0, 0, T0 + 7, None, T0) is None
    b = m.take()
    assert b is not None
    assert b.dropped == {"opcua_bad_status": 2, "bad_type": 4, "non_finite": 1}
    assert b.nonfinite == {("pump-1", "vib"): (1, T0 + 6)}  # for the sensor-fault alert
    assert b.value.tolist() == [7.0]
    assert m.dropped == b.dropped and m.samples == 8


def test_a_batch_with_only_drops_is_still_handed_over_so_they_are_counted() -> None:
    m = SampleMapper(KEYS)
    m.update(0, 1.0, 0x80890000, T0, None, T0)
    b = m.take()
    assert b is not None and len(b.ts) == 0 and b.dropped == {"opcua_bad_status": 1}


def test_a_resent_sample_is_dropped_once_delivered_even_after_other_samples() -> None:
    m = SampleMapper(KEYS, dedupe_per_node=4)
    for i in range(3):
        m.update(0, float(i), 0, T0 + i, None, T0)
    assert m.update(0, 0.0, 0, T0, None, T0) == "duplicate"  # e.g. the current value
    assert m.update(1, 0.0, 0, T0, None, T0) is None  # same time, another node: new
    b = m.take()
    assert b is not None and b.value.tolist() == [0.0, 1.0, 2.0, 0.0]
    assert m.duplicates == 1


def test_receive_times_are_never_taken_for_duplicates() -> None:
    m = SampleMapper(KEYS)
    m.update(0, 1.0, 0, None, None, T0)
    assert m.update(0, 1.0, 0, None, None, T0) is None


def test_dedupe_window_forgets_the_oldest_and_takes_clock_steps_back_as_new() -> None:
    w = DedupeWindow(3)
    assert [w.update(7, t) for t in (10.0, 11.0, 12.0, 11.0)] == [True, True, True, False]
    assert w.update(7, 5.0)  # a PLC clock set back: new samples, not duplicates
    assert w.update(7, 10.0)  # 10.0 fell out of the window of 3
    with pytest.raises(ValueError, match="per_node"):
        DedupeWindow(0)


def test_status_bits() -> None:
    assert is_good(0x00000000) and is_good(0x00000480)  # Good, with the overflow bit
    assert not is_good(0x80000000) and not is_good(0x40000000)
    assert overflowed(0x00000480) and not overflowed(0x00000080)  # not a DataValue info
    m = SampleMapper(KEYS)
    m.update(0, 1.0, 0x00000480, T0, None, T0)
    assert m.overflows == 1 and m.take() is not None


# -- config ---------------------------------------------------------------------------
def _cfg(server: dict[str, Any]) -> Any:
    base: dict[str, Any] = {"name": "plc1", "endpoint": "opc.tcp://127.0.0.1:4840",
                            "nodes": [{"node_id": "ns=2;s=Pump1.Temp", "asset": "pump-1",
                                       "signal": "temp"}]}
    return parse_config({"bundle": {"path": "/b", "allow_unsigned": True},
                         "opcua": {"servers": [{**base, **server}]}})


def test_a_minimal_server_parses_with_documented_defaults() -> None:
    cfg = _cfg({})
    s = cfg.opcua.servers[0]
    assert (s.security_policy, s.auth, s.queue_size) == ("None", "anonymous", 600)
    assert parse_config({"bundle": {"path": "/b"}}).opcua.servers == []


@pytest.mark.parametrize(("server", "key", "problem"), [
    ({"nodes": [{"node_id": "Pump1.Temp", "asset": "p", "signal": "t"}]},
     "opcua.servers.0.nodes.0.node_id", "is not a NodeId"),
    ({"nodes": [{"browse_path": "Objects/Pump1", "asset": "p", "signal": "t"}]},
     "opcua.servers.0.nodes.0.browse_path", "'Objects' is not '<namespace index>:"),
    ({"nodes": [{"node_id": "ns=2;i=5", "browse_path": "2:A", "asset": "p", "signal": "t"}]},
     "opcua.servers.0.nodes.0", "exactly one of node_id and browse_path"),
    ({"nodes": [{"node_id": "ns=2;i=5", "asset": "p", "signal": "te/mp"}]},
     "opcua.servers.0.nodes.0.signal", "contains '/'"),
    ({"nodes": [{"node_id": "ns=2;i=5", "asset": "p", "signal": "t"},
                {"node_id": "ns=2;i=6", "asset": "p", "signal": "t"}]},
     "opcua.servers.0", "already read from another node"),
    ({"endpoint": "http://plc:4840"}, "opcua.servers.0.endpoint", "should match pattern"),
    ({"security_policy": "Basic256Sha256"}, "opcua.servers.0", "needs certificate_file"),
    ({"security_policy": "Basic256Sha256", "certificate_file": "c.der",
      "private_key_file": "k.pem"}, "opcua.servers.0", "needs trusted_server_certificates"),
    ({"auth": "username", "username": "u", "password_file": "p"}, "opcua.servers.0",
     "credentials would cross the network unprotected"),
    ({"queue_size": 0}, "opcua.servers.0.queue_size", "greater than or equal to 1"),
    ({"sampling_ms": 100}, "opcua.servers.0.sampling_ms", "Extra inputs are not permitted"),
])
def test_config_errors_name_the_key_and_the_problem(server: dict[str, Any], key: str,
                                                    problem: str) -> None:
    with pytest.raises(ConfigError) as ei:
        _cfg(server)
    line = next(x for x in str(ei.value).splitlines() if x.strip().startswith(key + " "))
    assert problem in line, str(ei.value)


def test_two_servers_may_not_share_a_name_or_an_asset_signal() -> None:
    node = {"node_id": "ns=2;i=5", "asset": "p", "signal": "t"}
    one = {"name": "a", "endpoint": "opc.tcp://h:4840", "nodes": [node]}
    for two, problem in (({**one}, "name 'a' is used twice"),
                         ({**one, "name": "b"}, "is also read from server 'a'")):
        with pytest.raises(ConfigError, match=problem):
            parse_config({"bundle": {"path": "/b"}, "opcua": {"servers": [one, two]}})


def test_relative_certificate_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    from edge.core.config import load_config

    (tmp_path / "agent.toml").write_text('''
[bundle]
path = "/b"
[[opcua.servers]]
name = "plc1"
endpoint = "opc.tcp://plc:4840"
security_policy = "Basic256Sha256"
certificate_file = "pki/agent.der"
private_key_file = "pki/agent-key.pem"
trusted_server_certificates = ["pki/trusted"]
auth = "username"
username = "forewarn"
password_file = "secrets/opcua"
[[opcua.servers.nodes]]
browse_path = "2:Pump1/2:Temperature"
asset = "pump-1"
signal = "temp"
''')
    s = load_config(tmp_path / "agent.toml").opcua.servers[0]
    assert s.certificate_file == tmp_path / "pki/agent.der"
    assert s.trusted_server_certificates == [tmp_path / "pki/trusted"]
    assert s.password_file == tmp_path / "secrets/opcua"


# -- trust ------------------------------------------------------------------------------
def _cert(name: str, issuer: tuple[x509.Name, Any] | None = None, ca: bool = False,
          days: int = 30) -> tuple[x509.Certificate, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256()))
    return cert, key


def _der(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.DER)


def test_a_pinned_or_ca_issued_server_certificate_is_trusted_others_are_refused(
        tmp_path: Path) -> None:
    plc, _ = _cert("plc-7")
    ca, ca_key = _cert("plant CA", ca=True)
    issued, _ = _cert("plc-8", issuer=(ca.subject, ca_key))
    stranger, _ = _cert("plc-7")  # same name, other key: an impostor
    (tmp_path / "trusted").mkdir()
    (tmp_path / "trusted" / "plc-7.der").write_bytes(_der(plc))
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    trusted = load_trusted([tmp_path / "trusted", tmp_path / "ca.pem"])
    assert len(trusted) == 2
    assert check_server_certificate(_der(plc), trusted, "opc.tcp://plc-7") == plc
    assert check_server_certificate(_der(issued), trusted, "opc.tcp://plc-8") == issued
    with pytest.raises(SourceError) as ei:
        check_server_certificate(_der(stranger), trusted, "opc.tcp://plc-7")
    assert ei.value.reason == "untrusted_certificate"
    assert "opc.tcp://plc-7 presents certificate 'CN=plc-7'" in str(ei.value)
    assert stranger.fingerprint(hashes.SHA256()).hex() in str(ei.value)
    assert "not among trusted_server_certificates" in str(ei.value)


def test_a_non_ca_trusted_certificate_does_not_vouch_for_others() -> None:
    leaf, leaf_key = _cert("plc-7")  # not a CA, yet signs another certificate
    child, _ = _cert("plc-9", issuer=(leaf.subject, leaf_key))
    with pytest.raises(SourceError, match="not among trusted"):
        check_server_certificate(_der(child), [leaf], "opc.tcp://plc-9")


def test_an_expired_server_certificate_is_refused_even_when_pinned() -> None:
    plc, _ = _cert("plc-7", days=30)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=60)
    with pytest.raises(SourceError, match="valid only from"):
        check_server_certificate(_der(plc), [plc], "opc.tcp://plc-7", now=later)


def test_an_unreadable_trust_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "bad.der").write_bytes(b"not a certificate")
    with pytest.raises(ConfigError, match=r"bad\.der: not a DER or PEM certificate"):
        load_trusted([tmp_path / "bad.der"])
    with pytest.raises(ConfigError, match=r"missing\.der: cannot read"):
        load_trusted([tmp_path / "missing.der"])


def test_failure_reasons_are_a_bounded_vocabulary() -> None:
    from asyncua import ua

    from edge.ingest.opcua_client import REASONS, failure_reason

    cases = {
        SourceError("untrusted_certificate", "x"): "untrusted_certificate",
        ConfigError("x"): "config",
        TimeoutError(): "timeout",
        ConnectionRefusedError(): "unreachable",
        ua.UaStatusCodeError(ua.StatusCodes.BadUserAccessDenied): "auth_rejected",
        ua.UaStatusCodeError(ua.StatusCodes.BadIdentityTokenRejected): "auth_rejected",
        ua.UaStatusCodeError(ua.StatusCodes.BadCertificateUntrusted): "security_rejected",
        ua.UaStatusCodeError(ua.StatusCodes.BadSecurityChecksFailed): "security_rejected",
        ua.UaStatusCodeError(ua.StatusCodes.BadTooManySessions): "protocol",
        ua.UaError("Server certificate mismatch"): "untrusted_certificate",
        RuntimeError("?"): "protocol",
    }
    for exc, reason in cases.items():
        assert failure_reason(exc) == reason, exc
        assert reason in REASONS


def test_the_examples_in_the_docstrings_hold() -> None:
    import doctest

    from edge.core import opcua_config
    from edge.ingest import opcua_map

    for module in (opcua_map, opcua_config):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
