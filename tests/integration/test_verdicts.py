"""The crew's verdict in a real SQLite alert store, through the manager, MQTT and metrics."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from edge.alerts import AlertManager, AlertStateError, AlertStore, RuleSpec
from edge.alerts.verdicts import model_verdicts, read_rows, summarise
from edge.core.metrics import Metrics
from edge.models.infer import ScoredWindow

SPEC = RuleSpec(warning=0.5, critical=0.9, k=1, n=1, clear_after=1, cooldown_s=0)


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def sw(asset: str, ts: float, score: float, model: str = "pump-ad/3") -> ScoredWindow:
    return ScoredWindow(asset=asset, ts=ts, score=score, deviations=None, model=model)


def manager(path: Path, sent: list[tuple[str, dict, bool]] | None = None,
            metrics: Metrics | None = None, clock: Clock | None = None) -> AlertManager:
    def publish(topic: str, body: bytes, retain: bool) -> None:
        if sent is not None:
            sent.append((topic, json.loads(body), retain))

    clock = clock or Clock()
    return AlertManager(AlertStore(path, clock=clock), SPEC, publish, "plant",
                        metrics=metrics, clock=clock)


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_resolve_stores_the_verdict_with_its_events_and_survives_a_restart(
        tmp_path: Path) -> None:
    clock = Clock()
    mgr = manager(tmp_path / "a.db", clock=clock)
    mgr.on_scores([sw("p1", 1, 0.7)])
    (a,) = mgr.open_alerts()
    clock.t += 60
    done = mgr.resolve(a.id, "ana", "bearing worn", verdict="confirmed", work_order="WO-1234/7")
    assert (done.state, done.verdict, done.verdict_note, done.work_order, done.verdict_by,
            done.verdict_ts, done.model) == ("resolved", "confirmed", "bearing worn",
                                             "WO-1234/7", "ana", clock.t, "pump-ad/3")
    mgr.store.close()
    store = AlertStore(tmp_path / "a.db")  # what a restarted agent reads
    row = store.require(a.id)
    assert (row.verdict, row.work_order, row.resolved_note) == ("confirmed", "WO-1234/7",
                                                               "bearing worn")
    ev = [(e["kind"], e["who"], e["verdict"], e["work_order"]) for e in store.events(a.id)]
    assert ev == [("opened", None, None, None), ("resolved", "ana", None, None),
                  ("verdict", "ana", "confirmed", "WO-1234/7")]
    store.close()


def test_a_verdict_is_amended_by_a_person_and_the_last_one_counts(tmp_path: Path) -> None:
    m = Metrics()
    mgr = manager(tmp_path / "a.db", metrics=m)
    mgr.on_scores([sw("p1", 1, 0.7), sw("p2", 1, 0.7)])
    a, b = mgr.open_alerts()
    with pytest.raises(AlertStateError, match="resolve it with a verdict"):
        mgr.judge(a.id, "bo", "confirmed")  # still open: nothing to amend
    mgr.resolve(a.id, "ana", verdict="false_alarm")
    mgr.resolve(b.id, "ana", verdict="confirmed")
    assert value(m, "forewarn_alert_precision", model="pump-ad") == 0.5
    with pytest.raises(AlertStateError):
        mgr.resolve(a.id, "bo", verdict="confirmed")  # resolved already: amend instead
    mgr.judge(a.id, "bo", "confirmed", "found the crack at teardown", "WO-88")
    row = mgr.store.require(a.id)
    assert (row.verdict, row.verdict_by, row.work_order, row.resolved_by) == (
        "confirmed", "bo", "WO-88", "ana")
    assert [e["verdict"] for e in mgr.store.events(a.id) if e["kind"] == "verdict"] == [
        "false_alarm", "confirmed"]
    # every verdict given is counted; the precision uses each alert's last one
    assert value(m, "forewarn_alert_verdicts_total", model="pump-ad", verdict="confirmed") == 2
    assert value(m, "forewarn_alert_verdicts_total", model="pump-ad",
                 verdict="false_alarm") == 1
    assert value(m, "forewarn_alert_precision", model="pump-ad") == 1.0
    # a verdict is no state change
    assert value(m, "forewarn_alert_transitions_total", to_state="resolved") == 2
    mgr.store.close()
    m2 = Metrics()
    manager(tmp_path / "a.db", metrics=m2).store.close()  # restarted: the gauge from the store
    assert value(m2, "forewarn_alert_precision", model="pump-ad") == 1.0


def test_bad_verdicts_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    mgr = manager(tmp_path / "a.db")
    mgr.on_scores([sw("p1", 1, 0.7)])
    (a,) = mgr.open_alerts()
    for kw, needle in (({"verdict": "maybe"}, "verdict 'maybe'"),
                       ({"verdict": "unsure", "work_order": "WO\n1"}, "work_order"),
                       ({"verdict": "unsure", "work_order": "x" * 65}, "work_order"),
                       ({"verdict": "unsure", "note": "n" * 2001}, "note is 2001")):
        with pytest.raises(ValueError, match=needle):
            mgr.resolve(a.id, "ana", **kw)  # type: ignore[arg-type]
    assert mgr.store.require(a.id).state == "open"
    assert [e["kind"] for e in mgr.store.events(a.id)] == ["opened"]


def test_mqtt_events_carry_the_verdict_not_the_work_order(tmp_path: Path) -> None:
    sent: list[tuple[str, dict, bool]] = []
    mgr = manager(tmp_path / "a.db", sent)
    mgr.on_scores([sw("p1", 1, 0.7)])
    (a,) = mgr.open_alerts()
    mgr.resolve(a.id, "ana", "greased", verdict="confirmed", work_order="WO-SECRET-1")
    mgr.judge(a.id, "bo", "unsure", None, "WO-SECRET-2")
    events = [p for t, p, _ in sent if "/events/" in t]
    assert [(e["event"], e["verdict"], e["who"]) for e in events] == [
        ("opened", None, None), ("resolved", "confirmed", "ana"), ("verdict", "unsure", "bo")]
    assert b"WO-SECRET" not in b"".join(json.dumps(p).encode() for _, p, _ in sent)


def test_precision_counts_model_alerts_per_model_and_asset_only(tmp_path: Path) -> None:
    mgr = manager(tmp_path / "a.db")
    mgr.on_scores([sw("p1", 1, 0.7), sw("p2", 1, 0.7, model="pump-ad/4"), sw("p3", 1, 0.7)])
    p1, p2, p3 = mgr.open_alerts()
    mgr.resolve(p1.id, "ana", verdict="confirmed")
    mgr.resolve(p2.id, "ana", verdict="false_alarm")
    mgr.resolve(p3.id, "ana", verdict="unsure")
    mgr.on_scores([sw("p4", 2, 0.7)])
    mgr.on_scores([sw("p4", 3, 0.1)])  # auto-cleared: nobody judged it
    lim = mgr.store.open_alert(asset="p1", condition="limit:s4", severity="warning",
                               score=9.0, data_ts=4, kind="limit", model="pump-ad/3")
    mgr.resolve(lim.id, "ana", verdict="false_alarm")
    s = summarise(read_rows(tmp_path / "a.db"))
    assert {k: (t.confirmed, t.false_alarm, t.unsure) for k, t in s.by_model.items()} == {
        "pump-ad/3": (1, 0, 1), "pump-ad/4": (0, 1, 0)}
    assert s.by_asset["p1"].precision == 1.0 and s.by_asset["p2"].precision == 0.0
    assert s.by_asset["p3"].precision is None  # could not tell: neither right nor wrong
    assert s.by_kind["limit"].false_alarm == 1 and s.unjudged == 1
    assert s.overall.precision == 0.5
    # an auto-cleared alert can be judged later
    (auto,) = [a for a in mgr.store.query(asset="p4")[0]]
    mgr.judge(auto.id, "bo", "confirmed")
    assert summarise(read_rows(tmp_path / "a.db")).unjudged == 0


def test_a_store_from_before_verdicts_is_migrated(tmp_path: Path) -> None:
    """The previous schema (alerts with kind and detail, events without verdicts)."""
    AlertStore(tmp_path / "old.db").close()
    db = sqlite3.connect(tmp_path / "old.db")
    db.executescript("""
        DROP TABLE alerts; DROP TABLE alert_events;
        CREATE TABLE alerts (id INTEGER PRIMARY KEY AUTOINCREMENT, asset TEXT NOT NULL,
          condition TEXT NOT NULL, severity TEXT NOT NULL, state TEXT NOT NULL,
          opened_ts REAL NOT NULL, updated_ts REAL NOT NULL, data_ts REAL, score REAL,
          peak_score REAL, model TEXT NOT NULL DEFAULT '',
          top_features TEXT NOT NULL DEFAULT '[]', history TEXT NOT NULL DEFAULT '[]',
          ack_by TEXT, ack_ts REAL, ack_note TEXT, resolved_by TEXT, resolved_ts REAL,
          resolved_note TEXT, shelved_by TEXT, shelved_until REAL, shelved_note TEXT,
          kind TEXT NOT NULL DEFAULT 'model', detail TEXT NOT NULL DEFAULT '{}');
        CREATE TABLE alert_events (id INTEGER PRIMARY KEY AUTOINCREMENT,
          alert_id INTEGER NOT NULL, ts REAL NOT NULL, kind TEXT NOT NULL,
          state TEXT NOT NULL, severity TEXT NOT NULL, who TEXT, note TEXT, score REAL);
        INSERT INTO alerts (asset, condition, severity, state, opened_ts, updated_ts, score,
                            model, resolved_by, resolved_ts)
          VALUES ('e1', 'score', 'warning', 'resolved', 1, 2, 0.7, 'm/1', 'ana', 2),
                 ('e2', 'score', 'warning', 'open', 1, 1, 0.8, 'm/1', NULL, NULL);
        INSERT INTO alert_events (alert_id, ts, kind, state, severity, who)
          VALUES (1, 2, 'resolved', 'resolved', 'warning', 'ana');
    """)
    db.commit()
    db.close()
    store = AlertStore(tmp_path / "old.db")
    old = store.require(1)
    assert (old.state, old.verdict, old.work_order) == ("resolved", None, None)
    assert store.events(1)[0]["verdict"] is None
    store.record_verdict(2, "confirmed", "ana", work_order="WO-9", resolve=True)
    store.record_verdict(1, "false_alarm", "bo", resolve=False)  # judged after the upgrade
    assert summarise(store.verdict_rows()).by_model["m/1"].precision == 0.5
    with pytest.raises(sqlite3.IntegrityError):  # the column refuses what is not a verdict
        store._db.execute("UPDATE alerts SET verdict = 'maybe' WHERE id = 1")
    store.close()


def test_the_rollout_hook_counts_one_models_verdicts_since_the_walk_began(
        tmp_path: Path) -> None:
    clock = Clock()
    mgr = manager(tmp_path / "a.db", clock=clock)
    mgr.on_scores([sw("p1", 1, 0.7, model="pump-ad/4")])  # before the walk began
    (early,) = mgr.open_alerts()
    mgr.resolve(early.id, "ana", verdict="false_alarm")
    began = clock.t = clock.t + 60
    mgr.on_scores([sw("p2", 2, 0.7, model="pump-ad/4"), sw("p3", 2, 0.7, model="pump-ad/4"),
                   sw("p4", 2, 0.7)])  # p4: the stable model's alert
    for a, verdict in zip(mgr.open_alerts(), ("false_alarm", "confirmed", "false_alarm"),
                          strict=True):
        mgr.resolve(a.id, "ana", verdict=verdict)
    got = model_verdicts(tmp_path / "a.db", "pump-ad/4", began)
    assert sum(got.values()) == 2 and got.get("false_alarm", 0) + got.get("confirmed", 0) == 2
    assert model_verdicts(tmp_path / "a.db", "pump-ad/4", began - 120).get("false_alarm", 0) \
        == got.get("false_alarm", 0) + 1
    assert model_verdicts(tmp_path / "missing.db", "pump-ad/4", 0.0) == {}
