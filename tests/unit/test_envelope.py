"""The report envelope: signature, sequence, pooling on overflow; the fleet's verify step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.core.errors import ReportRefused, StorageError
from edge.egress.envelope import (
    SEQ_FILE,
    Sealer,
    SequenceFile,
    load_or_create_key,
    open_envelope,
    peek,
)
from edge.egress.outbox import Outbox
from edge.egress.sealed import SealedOutbox, merge_sealed
from fleet.verify import verify

DRIFT = {"schema_version": 1, "site_id": "s-01", "model": "ab" * 32, "group": 0,
         "interval_first": 3, "interval_last": 3, "intervals": 1, "hour": 480000,
         "windows": 40, "missing_rate": 0.0, "alert_rate": 0.025, "alarm": False,
         "features": [{"i": 0, "psi": 0.01, "ks": 0.05, "ms": 0.1, "th": 0.3, "alarm": False}]}


def body(**over: object) -> bytes:
    return json.dumps({**DRIFT, **over}, sort_keys=True, separators=(",", ":")).encode()


@pytest.fixture
def sealer(tmp_path: Path) -> Sealer:
    return Sealer("s-01", load_or_create_key(tmp_path), SequenceFile(tmp_path / SEQ_FILE))


def test_key_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    k1 = load_or_create_key(tmp_path)
    mode = (tmp_path / "egress" / "appliance.key").stat().st_mode & 0o777
    assert mode == 0o600
    k2 = load_or_create_key(tmp_path)
    assert k1.public_key().public_bytes_raw() == k2.public_key().public_bytes_raw()


def test_sequence_survives_a_restart_and_strictly_increases(tmp_path: Path) -> None:
    s = SequenceFile(tmp_path / "seq")
    assert [s.next(), s.next(), s.next()] == [1, 2, 3]
    s2 = SequenceFile(tmp_path / "seq")  # a restart
    assert s2.next() == 4


def test_unreadable_sequence_is_refused_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "seq").write_text("garbage")
    with pytest.raises(StorageError, match=r"seq.*unreadable"):
        SequenceFile(tmp_path / "seq")


def test_sealed_report_verifies_and_any_change_is_refused(sealer: Sealer) -> None:
    keys = {"s-01": sealer.key.public_key()}
    wire = sealer.seal("drift", body())
    env = open_envelope(wire, keys)
    assert (env.kind, env.seq, env.body["windows"]) == ("drift", 1, 40)
    tampered = wire.replace(b'"windows":40', b'"windows":41')
    with pytest.raises(ReportRefused) as e:
        open_envelope(tampered, keys)
    assert e.value.reason == "bad_signature"
    reseq = wire.replace(b'"seq":1', b'"seq":9')
    with pytest.raises(ReportRefused, match="bad_signature"):
        open_envelope(reseq, keys)


def test_forged_unsigned_unknown_and_malformed_reports_are_refused(sealer: Sealer) -> None:
    keys = {"s-01": sealer.key.public_key()}
    forger = Sealer("s-01", Ed25519PrivateKey.generate(), sealer.sequence)
    cases = {
        "bad_signature": forger.seal("drift", body()),
        "unknown_site": Sealer("s-99", sealer.key, sealer.sequence).seal("drift", body()),
        "unsigned": json.dumps({k: v for k, v in json.loads(sealer.seal("drift", body()))
                                .items() if k != "sig"}).encode(),
        "malformed": b"\xff{not json",
    }
    for reason, wire in cases.items():
        with pytest.raises(ReportRefused) as e:
            open_envelope(wire, keys)
        assert e.value.reason == reason, wire


def test_verify_checks_size_schema_and_site(sealer: Sealer) -> None:
    keys = {"s-01": sealer.key.public_key()}
    ok = verify(sealer.seal("drift", body()), keys, max_bytes=10_000, k=20, received=1.0)
    assert (ok.site_id, ok.seq, ok.kind, ok.model) == ("s-01", 1, "drift", "ab" * 32)
    for reason, wire, mx in (
            ("oversized", sealer.seal("drift", body()), 100),
            ("schema", sealer.seal("drift", body(raw=123.4)), 10_000),
            ("schema", sealer.seal("drift", body(windows=5)), 10_000),  # below k
            ("site_mismatch", sealer.seal("drift", body(site_id="s-02")), 10_000)):
        with pytest.raises(ReportRefused) as e:
            verify(wire, keys, max_bytes=mx, k=20, received=1.0)
        assert e.value.reason == reason


def test_overflow_pools_two_drift_reports_at_the_older_number(tmp_path: Path,
                                                              sealer: Sealer) -> None:
    ob = Outbox(tmp_path / "ob.sqlite", max_rows=2,
                merge=lambda a, b: merge_sealed(sealer, a, b, 20))
    put = SealedOutbox(ob, sealer, "drift")
    for i in range(3):
        put.put(body(interval_first=i, interval_last=i))
    rows = ob.peek_batch(10)
    envs = [open_envelope(r.payload, {"s-01": sealer.key.public_key()}) for r in rows]
    assert [e.seq for e in envs] == [1, 3]  # 2 was pooled into 1: a gap, never a reuse
    assert envs[0].body["intervals"] == 2 and envs[0].body["windows"] == 80


def test_reports_of_different_kinds_are_not_pooled(sealer: Sealer) -> None:
    from edge.core.errors import EgressError

    with pytest.raises(EgressError, match="cannot pool"):
        merge_sealed(sealer, sealer.seal("drift", body()), sealer.seal("health", b"{}"), 20)
    assert peek(sealer.seal("health", b'{"a":1}')).kind == "health"
