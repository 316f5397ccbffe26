"""Limit and sensor-fault alerts in the real alert store: lifecycle, MQTT, restart, migration."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

from edge.alerts import AlertManager, AlertStore, RuleSpec
from edge.alerts.limits import LimitSample, LimitSettings
from edge.models.bundle import LimitSpec, SignalSpec
from edge.models.infer import ScoredWindow
from edge.scoring.ranges import FAULT, OK, bounds_of

SPEC = RuleSpec(warning=30, critical=10, reset=40, direction="below", condition="rul")
BOUNDS = bounds_of([SignalSpec(name="s4", unit="degR", train_min=1380.0, train_max=1440.0,
                               plausible_min=0.0, plausible_max=3000.0)], LimitSpec())


def manager(path: Path, sent: list[tuple[str, dict, bool]]) -> AlertManager:
    def publish(topic: str, body: bytes, retain: bool) -> None:
        sent.append((topic, json.loads(body), retain))

    return AlertManager(AlertStore(path), SPEC, publish, "plant", signal_names=["s4"],
                        bounds=BOUNDS, limit_settings=LimitSettings(clear_after=2))


def feed(mgr: AlertManager, values: list[float], asset: str = "e1", t0: float = 0.0) -> None:
    b = BOUNDS["s4"]
    mgr.on_readings([LimitSample(asset, "s4", t0 + i, v, b.code(v))
                     for i, v in enumerate(values)])


def test_limit_alert_lifecycle_and_payloads(tmp_path: Path) -> None:
    sent: list[tuple[str, dict, bool]] = []
    mgr = manager(tmp_path / "a.db", sent)
    feed(mgr, [1450.0, 1460.0, 1455.0])
    (a,) = mgr.open_alerts()
    assert (a.kind, a.condition, a.severity, a.state) == ("limit", "limit:s4", "warning", "open")
    assert a.detail == {"signal": "s4", "unit": "degR", "bound": "training_max", "limit": 1440.0,
                        "value": 1455.0, "worst": 1460.0, "ts": 2.0, "since_ts": 0.0}
    assert (a.score, a.peak_score) == (1455.0, 1460.0)
    events = [b for t, b, _ in sent if "/events/" in t]
    assert [(e["event"], e["kind"]) for e in events] == [("opened", "limit")]  # one, not three
    state = [b for t, b, r in sent if "/alerts/" in t and r][-1]
    assert (state["state"], state["kind"], state["condition"]) == ("open", "limit", "limit:s4")
    assert state["top_signals"] == ["s4"]
    # The evidence survives a restart, and the restarted manager carries on the same alarm.
    mgr.store.close()
    sent.clear()
    mgr = manager(tmp_path / "a.db", sent)
    assert ("e1", "s4") in mgr.limit_watch
    feed(mgr, [1470.0], t0=3.0)
    (a,) = mgr.open_alerts()
    assert a.detail["worst"] == 1470.0 and not [b for t, b, _ in sent if "/events/" in t]
    feed(mgr, [1400.0, 1400.0], t0=4.0)  # back in range for clear_after readings
    assert mgr.open_alerts() == []
    assert mgr.store.events(alert_id=a.id)[-1]["kind"] == "auto_cleared"
    assert ("e1", "s4") not in mgr.limit_watch


def test_maintenance_suppresses_and_a_resolved_alarm_reopens(tmp_path: Path) -> None:
    sent: list[tuple[str, dict, bool]] = []
    mgr = manager(tmp_path / "a.db", sent)
    mgr.set_maintenance("e1", True, "ana")
    feed(mgr, [1500.0, 5000.0])
    assert mgr.open_alerts() == []  # planned stop: neither limit nor sensor fault
    mgr.set_maintenance("e1", False, "ana")
    feed(mgr, [5000.0], t0=2.0)
    (a,) = mgr.open_alerts()
    assert (a.kind, a.condition, a.detail["bound"]) == ("sensor_fault", "sensor_fault:s4",
                                                       "plausible")
    mgr.resolve(a.id, "ana", "replaced the sensor", verdict="confirmed")
    assert mgr.open_alerts() == [] and ("e1", "s4") not in mgr.limit_watch
    feed(mgr, [5000.0], t0=3.0)  # still broken: a new alarm
    assert [x.kind for x in mgr.open_alerts()] == ["sensor_fault"]


def test_a_store_from_before_alert_kinds_is_migrated(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "old.db")
    db.executescript("""
        CREATE TABLE alerts (id INTEGER PRIMARY KEY AUTOINCREMENT, asset TEXT NOT NULL,
          condition TEXT NOT NULL, severity TEXT NOT NULL, state TEXT NOT NULL,
          opened_ts REAL NOT NULL, updated_ts REAL NOT NULL, data_ts REAL, score REAL,
          peak_score REAL, model TEXT NOT NULL DEFAULT '',
          top_features TEXT NOT NULL DEFAULT '[]', history TEXT NOT NULL DEFAULT '[]',
          ack_by TEXT, ack_ts REAL, ack_note TEXT, resolved_by TEXT, resolved_ts REAL,
          resolved_note TEXT, shelved_by TEXT, shelved_until REAL, shelved_note TEXT);
        INSERT INTO alerts (asset, condition, severity, state, opened_ts, updated_ts, score)
          VALUES ('e1', 'rul', 'warning', 'open', 1, 1, 20);
    """)
    db.commit()
    db.close()
    store = AlertStore(tmp_path / "old.db")
    (a,) = store.unresolved()
    assert (a.kind, a.detail, a.condition) == ("model", {}, "rul")


def test_a_sensor_sending_nan_is_an_alert_whose_evidence_is_json_and_survives_restart(
        tmp_path: Path) -> None:
    sent: list[tuple[str, dict, bool]] = []
    mgr = manager(tmp_path / "a.db", sent)
    # "s9" has no bounds in the manifest: a NaN from it is still shown to a person.
    mgr.on_readings([LimitSample("e1", "s4", 1.0, math.nan, FAULT),
                     LimitSample("e1", "s9", 1.0, math.nan, FAULT)])
    alerts = {a.condition: a for a in mgr.open_alerts()}
    assert set(alerts) == {"sensor_fault:s4", "sensor_fault:s9"}
    a = alerts["sensor_fault:s4"]
    assert (a.kind, a.severity, a.score) == ("sensor_fault", "warning", None)
    assert a.detail == {"signal": "s4", "unit": "degR", "bound": "plausible", "limit": None,
                        "value": None, "worst": None, "ts": 1.0, "since_ts": 1.0,
                        "reason": "non_finite", "value_text": "NaN (no number)",
                        "worst_text": "NaN (no number)"}
    for _, body, _ in sent:  # what MQTT carried is strict JSON (no NaN token)
        json.dumps(body, allow_nan=False)
    mgr.store.close()
    mgr = manager(tmp_path / "a.db", sent)
    assert ("e1", "s9") in mgr.limit_watch  # the restarted agent carries the alarm on
    (row,) = [x for x in mgr.open_alerts() if x.condition == "sensor_fault:s4"]
    assert row.detail["reason"] == "non_finite" and row.detail["value"] is None
    mgr.on_readings([LimitSample("e1", "s4", 2.0 + i, 1400.0, OK) for i in range(2)])
    assert [x.condition for x in mgr.open_alerts()] == ["sensor_fault:s9"]


def test_a_limit_alert_names_the_model_whose_range_it_left(tmp_path: Path) -> None:
    """Just after a swap the asset's last window is still the old model's: the alert
    names the model whose training range the reading left (the crew's verdict on it
    counts for that model)."""
    mgr = AlertManager(AlertStore(tmp_path / "a.db"), SPEC, None, "plant", signal_names=["s4"],
                       bounds=BOUNDS, bounds_model="m/1")
    mgr.on_scores([ScoredWindow("e1", 0.0, 50.0, None, "m/1")])
    narrow = bounds_of([SignalSpec(name="s4", unit="degR", train_min=1380.0, train_max=1400.0)],
                       LimitSpec(margin=0.0))
    mgr.set_bounds(narrow, "m/2")
    mgr.on_readings([LimitSample("e1", "s4", 1.0, 1420.0, narrow["s4"].code(1420.0))])
    (a,) = mgr.open_alerts()
    assert (a.condition, a.model, a.detail["limit"]) == ("limit:s4", "m/2", 1400.0)
