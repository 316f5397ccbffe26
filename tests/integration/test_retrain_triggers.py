"""The retrain's inputs from a real alert store: live precision as a trigger, verdict spans."""

from __future__ import annotations

import math
from pathlib import Path

from edge.alerts.store import AlertStore
from edge.models.bundle import load_bundle
from edge.models.registry import Registry
from tests import retrainkit as kit
from tests.bundlefactory import make_bundle
from trainer.alertspans import read_spans
from trainer.triggers import precision


def judged(store: AlertStore, verdicts: list[str], model: str = "test-model/1") -> None:
    for i, v in enumerate(verdicts):
        a = store.open_alert(asset=f"p{i % 3}", condition="anomaly", severity="warning",
                             score=5.0, data_ts=100.0 * i, model=model)
        store.record_verdict(a.id, v, "crew", resolve=True)


def test_precision_fires_more_than_the_drop_below_the_bundles_figure(tmp_path: Path) -> None:
    path, pub = make_bundle(tmp_path / "m", signals=["a"], metrics={"test_window_precision": 0.9})
    m = load_bundle(path, [pub]).manifest
    store = AlertStore(tmp_path / "alerts.sqlite")
    judged(store, ["confirmed"] * 5 + ["false_alarm"] * 2 + ["unsure"] * 3)
    t = precision(tmp_path / "alerts.sqlite", m, 5.0, 10)
    assert not t.fired and "7 judged alerts" in t.detail  # "could not tell" is not judged
    judged(store, ["confirmed"] * 2 + ["false_alarm"])
    t = precision(tmp_path / "alerts.sqlite", m, 5.0, 10)
    assert t.fired and "live precision 70.0% (7 confirmed, 3 false alarms)" in t.detail
    assert "test_window_precision 90.0%" in t.detail
    assert not precision(tmp_path / "alerts.sqlite", m, 25.0, 10).fired  # 20 points < 25
    # Another version's verdicts do not count against this one.
    other = AlertStore(tmp_path / "other.sqlite")
    judged(other, ["false_alarm"] * 12, model="test-model/0")
    t = precision(tmp_path / "other.sqlite", m, 5.0, 10)
    assert not t.fired and "0 judged alerts of test-model/1" in t.detail


def test_a_bundle_without_a_precision_figure_never_fires(tmp_path: Path) -> None:
    path, pub = make_bundle(tmp_path / "m", signals=["a"])
    t = precision(tmp_path / "none.sqlite", load_bundle(path, [pub]).manifest, 5.0, 1)
    assert not t.fired and "records no precision figure" in t.detail


def test_if_needed_says_which_trigger_fired_and_refuses_a_bundle_without_its_config(
        tmp_path: Path) -> None:
    path, pub = make_bundle(tmp_path / "m", signals=["a"], metrics={"test_window_precision": 0.9})
    state = tmp_path / "state"
    Registry(state / "models", [pub]).install(path)
    store = AlertStore(state / "alerts.sqlite")
    judged(store, ["confirmed"] * 4 + ["false_alarm"] * 6)
    store.close()
    r = kit.retrain("--state-dir", str(state), "--trusted-key", str(pub), "--key",
                    str(tmp_path / "m" / "keys" / "signing.key"), "--if-needed")
    assert "precision: FIRED - live precision 40.0%" in r.stdout
    assert "drift: no" in r.stdout and "age: no" in r.stdout
    assert "trigger fired: precision" in r.stdout
    assert r.returncode == 2 and "lineage.config is missing" in r.stderr


def test_spans_in_data_time_from_the_store(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "alerts.sqlite", clock=lambda: 5_000.0)
    a = store.open_alert(asset="p", condition="anomaly", severity="warning", score=4.0,
                         data_ts=100.0, model="m/1")
    assert a.opened_data_ts == 100.0 and store.require(a.id).opened_data_ts == 100.0
    store.update_evidence(a.id, score=6.0, peak_score=6.0, data_ts=160.0, history=[])
    store.record_verdict(a.id, "false_alarm", "crew", resolve=True)
    b = store.open_alert(asset="p", condition="anomaly", severity="warning", score=4.0,
                         data_ts=300.0, model="m/1")
    # A store written before opened_data_ts: the row has none; the wall clock stands in.
    c = store.open_alert(asset="q", condition="anomaly", severity="warning", score=4.0,
                         data_ts=400.0, model="m/1")
    store._db.execute("UPDATE alerts SET opened_data_ts = NULL WHERE id = ?", (c.id,))
    spans = {s.id: s for s in read_spans(tmp_path / "alerts.sqlite", 0.0, 10_000.0)}
    assert (spans[a.id].start, spans[a.id].end, spans[a.id].verdict) == (100.0, 160.0,
                                                                         "false_alarm")
    assert spans[b.id].start == 300.0 and math.isinf(spans[b.id].end)  # still open
    assert spans[c.id].start == 5_000.0
    assert [s.id for s in read_spans(tmp_path / "alerts.sqlite", 320.0, 350.0)] == [b.id]
    assert [s.id for s in read_spans(tmp_path / "alerts.sqlite", 0, 1e9, ["q"])] == [c.id]
    assert read_spans(tmp_path / "missing.sqlite", 0, 1) == []
