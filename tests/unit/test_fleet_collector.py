"""Collector decisions (pure logic, a fake store): what is acknowledged and what is not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge.core.errors import StorageError
from edge.egress.envelope import SEQ_FILE, Sealer, SequenceFile, load_or_create_key
from fleet.collector import Collector
from fleet.config import BrokerConfig
from fleet.metrics import FleetMetrics
from fleet.store import PutResult, Report
from tests.fleetkit import drift_body


class FlakyStore:
    def __init__(self) -> None:
        self.fail = True
        self.rows: dict[tuple[str, int], Report] = {}
        self.dead: list[str] = []

    def put(self, r: Report) -> PutResult:
        if self.fail:
            raise StorageError("db down")
        if (r.site_id, r.seq) in self.rows:
            return "duplicate"
        self.rows[(r.site_id, r.seq)] = r
        return "stored"

    def dead_letter(self, received: float, reason: str, site_id: str | None, detail: str,
                    payload: bytes) -> None:
        if self.fail:
            raise StorageError("db down")
        self.dead.append(reason)

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)


def test_a_failed_write_is_not_acknowledged_and_the_retry_stores_once(tmp_path: Path) -> None:
    sealer = Sealer("s-01", load_or_create_key(tmp_path), SequenceFile(tmp_path / SEQ_FILE))
    store = FlakyStore()
    m = FleetMetrics()
    c = Collector(BrokerConfig(host="127.0.0.1"), store,  # type: ignore[arg-type]
                  lambda: {"s-01": sealer.key.public_key()}, m, max_bytes=10_000, k=20)
    wire = sealer.seal("drift", drift_body("s-01", 0))
    assert c.handle(wire) is False  # not acked: the broker redelivers
    assert c.handle(b"junk") is False  # even a refusal waits until its dead letter is kept
    assert m.registry.get_sample_value("forewarn_fleet_store_errors_total") == 2
    store.fail = False
    assert c.handle(wire) is True and c.handle(wire) is True  # redelivered twice
    assert list(store.rows) == [("s-01", 1)]
    assert m.registry.get_sample_value("forewarn_fleet_reports_duplicate_total") == 1
    assert c.handle(b"junk") is True and store.dead == ["malformed"]
