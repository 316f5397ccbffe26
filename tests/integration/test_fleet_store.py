"""The fleet store on both backends: idempotent by (site_id, seq), conflicts, queries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.store import Report, SqlStore, open_postgres, open_sqlite
from tests.pgkit import Postgres, postgres  # noqa: F401  (fixture)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    if request.param == "sqlite":
        s = open_sqlite(tmp_path / "reports.sqlite")
    else:
        pg: Postgres = request.getfixturevalue("postgres")
        s = open_postgres(pg.new_database())
    try:
        yield s
    finally:
        s.close()


def rep(seq: int, kind: str = "drift", body: str = '{"alarm":false,"alert_rate":0.1}',
        site: str = "s-01", model: str = "ab" * 32) -> Report:
    return Report(site, seq, kind, 100.0 + seq, 1, model if kind == "drift" else "", 0, body)


def test_a_report_is_stored_once_and_a_conflict_is_told_apart(store: SqlStore) -> None:
    assert store.put(rep(1)) == "stored"
    assert store.put(rep(1)) == "duplicate"
    assert store.put(rep(1, body='{"alarm":true,"alert_rate":0.1}')) == "conflict"
    assert [r.seq for r in store.reports("s-01")] == [1]


def test_queries_give_latest_health_recent_drift_and_gaps(store: SqlStore) -> None:
    for seq in (1, 2, 3, 5, 6, 7):
        store.put(rep(seq))
    store.put(rep(4, "health", '{"agent_version":"0.1.0"}'))
    store.put(rep(8, "health", '{"agent_version":"0.2.0"}'))
    store.put(rep(2, site="s-02"))
    assert [(h.site_id, h.seq) for h in store.latest_health()] == [("s-01", 8)]
    assert [r.seq for r in store.recent_drift(3) if r.site_id == "s-01"] == [7, 6, 5]
    stats = {s[0]: s for s in store.site_stats()}
    assert stats["s-01"][1:4] == (8, 1, 8)
    assert stats["s-02"][1:4] == (1, 2, 2)
    store.dead_letter(1.0, "bad_signature", "s-09", "detail", b"\x00abc")
    assert store.dead_letters()[0]["reason"] == "bad_signature"


def test_collectors_opening_a_new_postgres_database_together_all_start(
        postgres: Postgres) -> None:  # noqa: F811  (fixture)
    """Several collectors started at once create the schema once; none fails."""
    import threading

    dsn = postgres.new_database()
    barrier = threading.Barrier(6)
    opened: list[SqlStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        barrier.wait()
        try:
            opened.append(open_postgres(dsn))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors
        assert len(opened) == 6 and opened[0].put(rep(1)) == "stored"
    finally:
        for s in opened:
            s.close()
