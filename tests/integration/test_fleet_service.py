"""Appliance egress -> real Mosquitto (cloud) -> fleet service -> SQLite / real PostgreSQL.

Also: two collectors on one MQTT 5 shared subscription store every report once;
a site offline for a day delivers its backlog in order; forged, unsigned,
malformed, replayed and oversized reports are refused, counted, dead-lettered,
and the service keeps storing good ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.egress.envelope import Sealer, SequenceFile
from fleet.service import FleetService
from tests.agentkit import wait_until
from tests.conftest import Broker
from tests.fleetkit import TOKEN, appliance, drift_body, fleet_config, health_body
from tests.pgkit import Postgres, postgres  # noqa: F401  (fixture)

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(params=["sqlite", "postgres"])
def dsn(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    pg: Postgres = request.getfixturevalue("postgres")
    return pg.new_database()


def running(svc: FleetService) -> FleetService:
    svc.start()
    wait_until(svc.collector.subscribed.is_set, what="collector subscribed")
    return svc


@pytest.fixture
def service(tmp_path: Path, mosquitto: Broker, dsn: str | None) -> Iterator[FleetService]:
    (tmp_path / "enrol").mkdir()
    svc = running(FleetService(fleet_config(tmp_path, mosquitto.port, enrol=tmp_path / "enrol",
                                            dsn=dsn)))
    try:
        yield svc
    finally:
        svc.stop()


def stored(svc: FleetService, site: str) -> list[int]:
    return sorted(r.seq for r in svc.store.reports(site))


def sample(svc: FleetService, name: str, **labels: str) -> float | None:
    v = svc.metrics.registry.get_sample_value(name, labels)
    return None if v is None else float(v)


def test_reports_are_verified_stored_and_shown(tmp_path: Path, mosquitto: Broker,
                                               service: FleetService) -> None:
    app = appliance(tmp_path / "site", "s-01", mosquitto.port)
    app.enrol(tmp_path / "enrol")
    for i in range(6):
        app.drift().put(drift_body("s-01", i, alarm=i >= 4))
    app.health().put(health_body("s-01"))
    app.uplink.start()
    try:
        wait_until(lambda: len(stored(service, "s-01")) == 7, what="7 reports stored")
    finally:
        app.uplink.stop()
    assert stored(service, "s-01") == list(range(1, 8))
    assert sample(service, "forewarn_fleet_reports_stored_total", kind="drift") == 6
    assert sample(service, "forewarn_fleet_reports_stored_total", kind="health") == 1
    api = f"http://127.0.0.1:{service.cfg.api.port}"
    assert httpx.get(f"{api}/api/grid").status_code == 401  # auth on by default
    grid = httpx.get(f"{api}/api/grid", headers=AUTH).json()["sites"]
    (site,) = grid
    (cell,) = site["cells"]
    assert (cell["model"], cell["version"], cell["drift_alarms_recent"]) == ("cmapss", "3", 2)
    assert cell["retrain"] and site["gaps"] == 0 and not site["stale"]
    text = httpx.get(f"{api}/metrics", headers=AUTH).text
    assert 'forewarn_fleet_retrain_needed{model="cmapss",site="s-01"} 1.0' in text
    gate = httpx.get(f"{api}/api/gate", params={"sites": "s-01", "version": "3"},
                     headers=AUTH).json()
    assert gate["ok"] is False and "retraining" in gate["sites"]["s-01"]["why"]


def test_two_collectors_share_the_load_and_store_each_report_once(
        tmp_path: Path, mosquitto: Broker, service: FleetService) -> None:
    second = running(FleetService(fleet_config(
        tmp_path / "b", mosquitto.port, enrol=tmp_path / "enrol", client_id="fleet-2",
        dsn=service.cfg.store.postgres_dsn, sqlite=service.cfg.store.sqlite_path)))
    app = appliance(tmp_path / "site", "s-02", mosquitto.port)
    app.enrol(tmp_path / "enrol")
    try:
        for i in range(40):
            app.drift().put(drift_body("s-02", i))
        app.uplink.start()
        wait_until(lambda: len(stored(service, "s-02")) == 40, timeout=30,
                   what="40 reports stored")
    finally:
        app.uplink.stop()
        second.stop()
    a = sample(service, "forewarn_fleet_reports_stored_total", kind="drift") or 0
    b = sample(second, "forewarn_fleet_reports_stored_total", kind="drift") or 0
    assert a + b == 40 and a > 0 and b > 0  # both collectors took a share
    assert stored(service, "s-02") == list(range(1, 41))


def test_a_day_offline_backlog_arrives_in_order(tmp_path: Path, mosquitto: Broker,
                                                service: FleetService) -> None:
    app = appliance(tmp_path / "site", "s-03", mosquitto.port)
    app.enrol(tmp_path / "enrol")
    # A day of hourly drift reports (and a health report every 6 h) waited in the outbox.
    for hour in range(24):
        app.drift().put(drift_body("s-03", hour))
        if hour % 6 == 5:
            app.health().put(health_body("s-03"))
    app.uplink.start()
    try:
        wait_until(lambda: len(stored(service, "s-03")) == 28, timeout=30, what="backlog")
    finally:
        app.uplink.stop()
    rows = sorted(service.store.reports("s-03"), key=lambda r: r.received)
    assert [r.seq for r in rows] == list(range(1, 29))  # received in sequence order
    drift = [json.loads(r.body)["interval_first"] for r in rows if r.kind == "drift"]
    assert drift == list(range(24))


def publish(port: int, payloads: list[bytes]) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        for p in payloads:
            c.publish("forewarn/s-04/drift", p, qos=1).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


def test_bad_reports_are_refused_counted_dead_lettered(tmp_path: Path, mosquitto: Broker,
                                                       service: FleetService) -> None:
    app = appliance(tmp_path / "site", "s-04", mosquitto.port)
    app.enrol(tmp_path / "enrol")
    good = app.sealer.seal("drift", drift_body("s-04", 0))
    forger = Sealer("s-04", Ed25519PrivateKey.generate(), SequenceFile(tmp_path / "fseq"))
    unsigned = json.loads(app.sealer.seal("drift", drift_body("s-04", 1)))
    del unsigned["sig"]
    replay = app.sealer.seal("drift", drift_body("s-04", 9, alarm=True), seq=1)  # seq reused
    big = app.sealer.seal("drift", drift_body("s-04", 2)) + b" " * 300_000
    unknown = Sealer("s-99", app.sealer.key, SequenceFile(tmp_path / "useq"))
    publish(mosquitto.port, [
        good, good,  # the second is a redelivery: stored once
        forger.seal("drift", drift_body("s-04", 3)),
        json.dumps(unsigned).encode(), b"\x00\xffnot json", replay, big,
        unknown.seal("drift", drift_body("s-99", 4)),
        app.sealer.seal("drift", drift_body("s-04", 5)[:-1] + b',"raw":123.5}'),
    ])
    later = app.sealer.seal("drift", drift_body("s-04", 6))
    publish(mosquitto.port, [later])
    wait_until(lambda: len(stored(service, "s-04")) == 2, what="good reports stored")
    wait_until(lambda: sample(service, "forewarn_fleet_reports_refused_total",
                              reason="schema") == 1, what="all refusals counted")
    refused = {r: sample(service, "forewarn_fleet_reports_refused_total", reason=r)
               for r in ("bad_signature", "unsigned", "malformed", "replay", "oversized",
                         "unknown_site", "schema")}
    assert refused == dict.fromkeys(refused, 1.0)
    assert sample(service, "forewarn_fleet_reports_duplicate_total") == 1
    reasons = sorted(d["reason"] for d in service.store.dead_letters())
    assert reasons == sorted(refused)
    # the stored seq 1 is the genuine report, not the replay
    first = next(r for r in service.store.reports("s-04") if r.seq == 1)
    assert json.loads(first.body)["alarm"] is False
