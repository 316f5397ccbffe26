"""Verdicts over HTTP (FastAPI TestClient) on a real SQLite store, audit log and registry."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from edge.alerts import AlertManager, AlertStore, RuleSpec
from edge.api import ApiDeps, create_app
from edge.core.audit import verify
from edge.core.metrics import Metrics
from edge.models.bundle import load_bundle
from edge.models.infer import ScoredWindow
from edge.models.registry import Registry
from tests.bundlefactory import make_bundle

TOKENS = {"ana": "ana-0123456789abcdef", "bo": "bo-0123456789abcdef"}
ANA = {"Authorization": f"Bearer {TOKENS['ana']}"}
BO = {"Authorization": f"Bearer {TOKENS['bo']}"}


def sw(asset: str, score: float, model: str = "test-model/1") -> ScoredWindow:
    return ScoredWindow(asset=asset, ts=1.0, score=score, deviations=None, model=model)


class Site:
    def __init__(self, tmp_path: Path, **deps: Any) -> None:
        self.metrics = Metrics()
        self.mgr = AlertManager(AlertStore(tmp_path / "alerts.db"),
                                RuleSpec(warning=0.5, critical=0.9), None, "plant",
                                metrics=self.metrics)
        self.audit_path = tmp_path / "audit.jsonl"
        app = create_app(ApiDeps(manager=self.mgr, registry=self.metrics.registry,
                                 tokens=TOKENS, audit_path=self.audit_path, **deps))
        self.client = TestClient(app, base_url="http://localhost")

    def open(self, *assets: str, model: str = "test-model/1") -> list[int]:
        self.mgr.on_scores([sw(a, 0.7, model) for a in assets])
        return [a.id for a in self.mgr.open_alerts() if a.asset in assets]

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.audit_path.read_text().splitlines()]


@pytest.mark.parametrize(("body", "field"), [
    (None, ["body"]),
    ({}, ["body", "verdict"]),
    ({"note": "fixed"}, ["body", "verdict"]),
    ({"verdict": "fixed"}, ["body", "verdict"]),
    ({"verdict": "confirmed", "work_order": "WO<script>"}, ["body", "work_order"]),
    ({"verdict": "confirmed", "work_order": "W" * 65}, ["body", "work_order"]),
    ({"verdict": "confirmed", "note": "n" * 2001}, ["body", "note"]),
    ({"verdict": "confirmed", "by": "someone"}, ["body", "by"]),
])
def test_resolve_without_a_valid_verdict_is_422_naming_the_field(
        tmp_path: Path, body: dict[str, Any] | None, field: list[str]) -> None:
    site = Site(tmp_path)
    (alert_id,) = site.open("p1")
    r = site.client.post(f"/api/alerts/{alert_id}/resolve", headers=ANA, json=body)
    assert r.status_code == 422
    assert [e["loc"] for e in r.json()["detail"]] == [field]
    assert site.mgr.store.require(alert_id).state == "open"


def test_resolve_with_a_verdict_then_amend_audited_and_returned_by_the_reads(
        tmp_path: Path) -> None:
    site = Site(tmp_path)
    (alert_id,) = site.open("p1")
    c = site.client
    r = c.post(f"/api/alerts/{alert_id}/resolve", headers=ANA,
               json={"verdict": "false_alarm", "note": "valve test", "work_order": "WO-77"})
    assert r.status_code == 200
    assert (r.json()["verdict"], r.json()["work_order"], r.json()["verdict_by"]) == (
        "false_alarm", "WO-77", "ana")
    r = c.post(f"/api/alerts/{alert_id}/verdict", headers=BO,
               json={"verdict": "confirmed", "note": "seal was leaking after all"})
    assert r.status_code == 200 and r.json()["verdict"] == "confirmed"
    listed = c.get("/api/alerts?state=resolved").json()["items"][0]
    assert (listed["verdict"], listed["verdict_by"], listed["work_order"]) == (
        "confirmed", "bo", None)
    events = c.get(f"/api/alerts/{alert_id}").json()["events"]
    assert [(e["kind"], e["who"], e["verdict"], e["work_order"]) for e in events] == [
        ("opened", None, None, None), ("resolved", "ana", None, None),
        ("verdict", "ana", "false_alarm", "WO-77"), ("verdict", "bo", "confirmed", None)]
    audit = site.audit()
    assert [(e["action"], e["actor"], e["details"]["verdict"], e["details"]["work_order"],
             e["details"]["note"]) for e in audit] == [
        ("resolve", "ana", "false_alarm", "WO-77", "valve test"),
        ("verdict", "bo", "confirmed", None, "seal was leaking after all")]
    assert verify(site.audit_path).ok
    m = site.metrics.registry
    assert m.get_sample_value("forewarn_alert_verdicts_total",
                              {"model": "test-model", "verdict": "confirmed"}) == 1
    assert m.get_sample_value("forewarn_alert_precision", {"model": "test-model"}) == 1.0
    body = c.get("/metrics").content
    assert b'forewarn_alert_precision{model="test-model"} 1.0' in body
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: apt-get install -y prometheus")
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


def test_a_verdict_on_an_open_alert_is_409_and_audited_as_refused(tmp_path: Path) -> None:
    site = Site(tmp_path)
    (alert_id,) = site.open("p1")
    r = site.client.post(f"/api/alerts/{alert_id}/verdict", headers=ANA,
                         json={"verdict": "confirmed"})
    assert r.status_code == 409 and "resolve it with a verdict" in r.json()["detail"]
    assert site.client.post(f"/api/alerts/{alert_id}/verdict",
                            json={"verdict": "confirmed"}).status_code == 401
    assert site.client.post("/api/alerts/999/verdict", headers=ANA,
                            json={"verdict": "confirmed"}).status_code == 404
    assert [(e["action"], e["details"]["result"]) for e in site.audit()] == [
        ("verdict", "refused"), ("verdict", "refused")]  # no token: refused before the route


def test_precision_per_model_and_asset_beside_the_bundles_figures(tmp_path: Path) -> None:
    models = tmp_path / "models"
    v1, pub = make_bundle(models, signals=["a"], version="1",
                          metrics={"validation_precision": 0.8125, "validation_f1": 0.7})
    v2, _ = make_bundle(models, signals=["a"], version="2",
                        metrics={"test_window_precision": 0.6})
    v3, _ = make_bundle(models, signals=["a"], version="3", metrics={"train_windows": 9.0})
    reg = Registry(tmp_path / "state" / "models", [pub])
    for b in (v1, v2, v3):
        reg.install(b)
    active = load_bundle(v3, [pub]).manifest
    site = Site(tmp_path, models=SimpleNamespace(registry=reg), manifest=lambda: active)
    c = site.client
    empty = c.get("/api/precision").json()
    assert [(m["model"], m["active"], m["judged"], m["precision"], m["validation"])
            for m in empty["models"]] == [("test-model/3", True, 0, None, None)]
    ids = site.open("p1", "p2", "p3")
    for alert_id, verdict in zip(ids, ("confirmed", "confirmed", "false_alarm"), strict=True):
        c.post(f"/api/alerts/{alert_id}/resolve", headers=ANA, json={"verdict": verdict})
    (p4,) = site.open("p4", model="test-model/2")
    c.post(f"/api/alerts/{p4}/resolve", headers=ANA, json={"verdict": "unsure"})
    (p1b,) = site.open("p1", model="test-model/2")
    c.post(f"/api/alerts/{p1b}/resolve", headers=ANA, json={"verdict": "false_alarm"})
    got = c.get("/api/precision").json()
    by = {m["model"]: m for m in got["models"]}
    assert list(by) == ["test-model/1", "test-model/2", "test-model/3"]
    assert (by["test-model/1"]["precision"], by["test-model/1"]["judged"],
            by["test-model/1"]["validation"]) == (
        0.6667, 3, {"metric": "validation_precision", "precision": 0.8125})
    assert (by["test-model/2"]["precision"], by["test-model/2"]["unsure"],
            by["test-model/2"]["validation"]) == (
        0.0, 1, {"metric": "test_window_precision", "precision": 0.6})
    assert by["test-model/3"]["validation"] is None and by["test-model/3"]["active"]
    assets = {a["asset"]: a for a in got["assets"]}
    assert (assets["p1"]["confirmed"], assets["p1"]["false_alarm"],
            assets["p1"]["precision"]) == (1, 1, 0.5)
    assert assets["p4"]["precision"] is None and assets["p4"]["unsure"] == 1
    assert got["overall"]["precision"] == 0.5 and got["unjudged"] == 0
    schema = c.get("/openapi.json").json()
    assert "/api/precision" in schema["paths"] and "/api/alerts/{alert_id}/verdict" in \
        schema["paths"]
    resolve = schema["paths"]["/api/alerts/{alert_id}/resolve"]["post"]
    assert resolve["requestBody"]["required"] is True
    body = schema["components"]["schemas"]["VerdictBody"]
    assert body["required"] == ["verdict"]
    assert body["properties"]["verdict"]["enum"] == ["confirmed", "false_alarm", "unsure"]
