"""The alert API over HTTP (FastAPI TestClient) against a real SQLite store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from edge.alerts import AlertManager, AlertStore, RuleSpec
from edge.api import ApiDeps, create_app, load_tokens
from edge.api.limits import RequestLimits
from edge.core.audit import AuditLog as ChainedAuditLog
from edge.core.audit import verify
from edge.core.audit import verify as verify_audit
from edge.core.errors import ConfigError
from edge.core.metrics import Metrics
from edge.models.infer import ScoredWindow

TOKENS = {"ana": "ana-0123456789abcdef", "bo": "bo-0123456789abcdef"}
ANA = {"Authorization": f"Bearer {TOKENS['ana']}"}
BAD = {"Authorization": "Bearer not-a-valid-token-at-all"}


def sw(asset: str, ts: float, score: float) -> ScoredWindow:
    return ScoredWindow(asset=asset, ts=ts, score=score, deviations=None, model="m/1")


def make(tmp_path: Path, **kw: Any) -> tuple[TestClient, AlertManager, Path]:
    metrics = Metrics()
    mgr = AlertManager(AlertStore(tmp_path / "alerts.db"), RuleSpec(warning=0.5, critical=0.9),
                       None, "plant", metrics=metrics)
    audit = tmp_path / "audit.jsonl"
    deps = ApiDeps(manager=mgr, registry=metrics.registry, tokens=TOKENS, audit_path=audit,
                   **kw)
    # "localhost": the Host allow-list refuses TestClient's default "testserver".
    return TestClient(create_app(deps), base_url="http://localhost"), mgr, audit


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, AlertManager, Path]]:
    client, mgr, audit = make(tmp_path)
    with client:
        yield client, mgr, audit


def raise_alerts(mgr: AlertManager) -> None:
    # e1 warning, e2 critical, e3 warning then auto-cleared (resolved)
    mgr.on_scores([sw("e1", 1, 0.6), sw("e2", 1, 0.95), sw("e3", 1, 0.7)])
    mgr.on_scores([sw("e3", t, 0.1) for t in (2, 3, 4)])


def test_reads_are_open_and_filtered(api: tuple[TestClient, AlertManager, Path]) -> None:
    client, mgr, _ = api
    raise_alerts(mgr)
    body = client.get("/api/alerts").json()
    assert body["total"] == 3
    # unresolved first, critical first
    assert [a["asset"] for a in body["items"]] == ["e2", "e1", "e3"]
    assert client.get("/api/alerts?state=unresolved").json()["total"] == 2
    assert [a["asset"] for a in client.get("/api/alerts?state=resolved").json()["items"]] == ["e3"]
    assert [a["asset"] for a in
            client.get("/api/alerts?severity=critical").json()["items"]] == ["e2"]
    assert client.get("/api/alerts?asset=e1").json()["total"] == 1
    assert client.get("/api/alerts?since=99999999999").json()["total"] == 0
    page1 = client.get("/api/alerts?limit=2").json()
    page2 = client.get("/api/alerts?limit=2&offset=2").json()
    assert (page1["total"], len(page1["items"]), len(page2["items"])) == (3, 2, 1)
    ids = {a["id"] for a in page1["items"] + page2["items"]}
    assert len(ids) == 3
    one = client.get(f"/api/alerts/{page2['items'][0]['id']}").json()
    assert [e["kind"] for e in one["events"]] == ["opened", "auto_cleared"]
    assets = {a["asset"]: a for a in client.get("/api/assets").json()["items"]}
    assert assets["e2"]["state"] == "open" and assets["e3"]["state"] == "normal"


@pytest.mark.parametrize("url", [
    "/api/alerts?state=bogus", "/api/alerts?limit=0", "/api/alerts?limit=100000",
    "/api/alerts?offset=-1", "/api/alerts?since=nan", "/api/alerts?since=abc",
    "/api/alerts/0", "/api/alerts/abc", f"/api/alerts/{2**70}", "/api/alerts?severity=x",
])
def test_bad_queries_are_422_not_500(api: tuple[TestClient, AlertManager, Path],
                                     url: str) -> None:
    assert api[0].get(url).status_code == 422


def test_unknown_alert_is_404(api: tuple[TestClient, AlertManager, Path]) -> None:
    client = api[0]
    assert client.get("/api/alerts/999").status_code == 404
    assert client.post("/api/alerts/999/ack", headers=ANA, json={}).status_code == 404


def test_mutations_need_a_token_and_are_audited(
        api: tuple[TestClient, AlertManager, Path]) -> None:
    client, mgr, audit = api
    raise_alerts(mgr)
    alert_id = mgr.open_alerts()[0].id
    r = client.post(f"/api/alerts/{alert_id}/ack", json={"note": "x"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert client.post(f"/api/alerts/{alert_id}/ack", headers=BAD).status_code == 401
    assert mgr.store.require(alert_id).state == "open"
    r = client.post(f"/api/alerts/{alert_id}/ack", headers=ANA, json={"note": "on my way"})
    assert r.status_code == 200
    assert (r.json()["state"], r.json()["ack_by"], r.json()["ack_note"]) == (
        "acknowledged", "ana", "on my way")
    assert client.post(f"/api/alerts/{alert_id}/ack", headers=ANA).status_code == 409
    r = client.post(f"/api/alerts/{alert_id}/resolve", headers=ANA,
                    json={"verdict": "confirmed", "note": "fixed"})
    assert r.json()["resolved_by"] == "ana"
    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    assert [(x["action"], x["actor"], x["details"].get("result")) for x in lines] == [
        ("auth_failed", "anonymous", None), ("ack", "ana", "ok"), ("ack", "ana", "refused"),
        ("resolve", "ana", "ok")]
    assert lines[-1]["details"]["target"] == f"alert/{alert_id}"
    assert lines[-1]["details"]["note"] == "fixed"
    assert verify(audit).ok  # the API writes the same hash-chained log as the registry
    assert TOKENS["ana"] not in audit.read_text()


def test_bad_bodies_are_422(api: tuple[TestClient, AlertManager, Path]) -> None:
    client, mgr, _ = api
    raise_alerts(mgr)
    alert_id = mgr.open_alerts()[0].id
    url = f"/api/alerts/{alert_id}/ack"
    assert client.post(url, headers=ANA, json={"nope": 1}).status_code == 422
    assert client.post(url, headers=ANA, json={"note": "x" * 3000}).status_code == 422
    assert client.post(url, headers=ANA, content=b"{not json",
                       ).status_code == 422
    assert client.post(f"/api/alerts/{alert_id}/shelve", headers=ANA,
                       json={"minutes": 0}).status_code == 422
    assert client.post("/api/assets/e1/maintenance", headers=ANA, json={}).status_code == 422


def test_wrong_tokens_lock_out_wrong_tokens_only(tmp_path: Path) -> None:
    client, mgr, audit = make(tmp_path, max_failures=3)
    raise_alerts(mgr)
    alert_id = mgr.open_alerts()[0].id
    url = f"/api/alerts/{alert_id}/ack"
    codes = [client.post(url, headers=BAD).status_code for _ in range(6)]
    assert codes == [401, 401, 401, 429, 429, 429]
    r = client.post(url, headers=BAD)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert "wrong tokens" in r.json()["detail"]
    # Same address: anonymous open reads and a valid token are not anyone's hostage.
    assert client.get("/api/alerts").json()["total"] == 3
    assert client.get("/api/alerts", headers=ANA).status_code == 200
    assert client.post(url, headers=ANA).status_code == 200
    assert mgr.store.require(alert_id).state == "acknowledged"
    actions = [json.loads(x)["action"] for x in audit.read_text().splitlines()]
    # three failures audited, then one line for the whole lock-out, not one per guess
    assert actions == ["auth_failed"] * 3 + ["auth_locked", "ack"]


def test_host_allow_list_and_body_limit_come_before_auth(tmp_path: Path) -> None:
    client, mgr, audit = make(tmp_path, limits=RequestLimits(max_body_bytes=2048))
    raise_alerts(mgr)
    alert_id = mgr.open_alerts()[0].id
    r = client.get("/api/alerts", headers={"Host": "rebind.attacker.example"})
    assert r.status_code == 400 and "api.allowed_hosts" in r.json()["detail"]
    assert client.get("/api/alerts", headers={"Host": "10.1.2.3:8080"}).status_code == 200
    assert client.get("/api/alerts", headers={"Host": "[::1]:8080"}).status_code == 200
    big = b'{"note": "' + b"x" * 4096 + b'"}'
    r = client.post(f"/api/alerts/{alert_id}/ack", content=big,
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "api.max_body_bytes" in r.json()["detail"]
    # no Content-Length: the counted body is cut at the limit, with a token or without
    r = client.post(f"/api/alerts/{alert_id}/ack", content=iter([big[:2000], big[2000:]]),
                    headers={**ANA, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert mgr.store.require(alert_id).state == "open"
    assert not audit.exists()  # refused before auth: no token was even looked at


def test_closed_reads_need_a_token(tmp_path: Path) -> None:
    client, _, _ = make(tmp_path, read_open=False)
    assert client.get("/api/alerts").status_code == 401
    assert client.get("/api/assets").status_code == 401
    assert client.get("/api/alerts", headers=ANA).status_code == 200
    assert client.get("/api/whoami", headers=ANA).json() == {"person": "ana"}


def test_shelve_and_maintenance_over_http(api: tuple[TestClient, AlertManager, Path]) -> None:
    client, mgr, _ = api
    raise_alerts(mgr)
    e1 = next(a for a in mgr.open_alerts() if a.asset == "e1")
    r = client.post(f"/api/alerts/{e1.id}/shelve", headers=ANA, json={"minutes": 30})
    assert r.json()["state"] == "shelved" and r.json()["shelved_by"] == "ana"
    r = client.post(f"/api/alerts/{e1.id}/unshelve", headers=ANA)
    assert r.json()["state"] == "open"
    r = client.post("/api/assets/e2/maintenance", headers=ANA, json={"on": True, "note": "PM"})
    assert r.json() == {"asset": "e2", "maintenance": True, "changed": True}
    assert client.get("/api/alerts?state=suppressed").json()["items"][0]["asset"] == "e2"
    assets = {a["asset"]: a for a in client.get("/api/assets").json()["items"]}
    assert assets["e2"]["maintenance"] is True


def test_page_metrics_health_and_stream(tmp_path: Path) -> None:
    ok = {"ok": True}
    client, mgr, _ = make(tmp_path, status=lambda: ok, stream_max_s=0.6)
    raise_alerts(mgr)
    page = client.get("/")
    assert page.status_code == 200 and "<title>Forewarn" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200
    metrics = client.get("/metrics").text
    assert 'forewarn_alerts_open{severity="critical"} 1.0' in metrics
    assert client.get("/healthz").status_code == 200
    ok["ok"] = False
    assert client.get("/healthz").status_code == 503
    status = client.get("/api/status").json()
    assert status["site"] == "plant" and status["rules"]["warning"] == 0.5
    with client.stream("GET", "/api/events") as r:
        text = b"".join(r.iter_bytes()).decode()
    assert f'event: change\ndata: {{"version":{mgr.version}}}' in text
    assert "/api/alerts" in client.get("/openapi.json").json()["paths"]


def test_load_tokens(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text("# crew\nana: ana-0123456789abcdef\n\nbo:bo-0123456789abcdef\n")
    assert load_tokens(f) == TOKENS
    f.write_text("ana: short\n")
    with pytest.raises(ConfigError, match=r"tokens:1: token of 'ana' is shorter"):
        load_tokens(f)
    f.write_text("ana: ana-0123456789abcdef\nbo: ana-0123456789abcdef\n")
    with pytest.raises(ConfigError, match="share a token"):
        load_tokens(f)


def test_the_agents_chained_audit_log_plugs_in(tmp_path: Path) -> None:
    chained = ChainedAuditLog(tmp_path / "chained.jsonl")
    client, mgr, plain = make(tmp_path, audit=chained)
    raise_alerts(mgr)
    alert_id = mgr.open_alerts()[0].id
    assert client.post(f"/api/alerts/{alert_id}/ack", headers=ANA,
                       json={"note": "ok"}).status_code == 200
    assert verify_audit(tmp_path / "chained.jsonl").ok
    (entry,) = [json.loads(x) for x in (tmp_path / "chained.jsonl").read_text().splitlines()]
    assert (entry["actor"], entry["action"], entry["details"]["note"]) == ("ana", "ack", "ok")
    assert not plain.exists()


@pytest.mark.parametrize(("raw", "problem"), [
    ("x%00y", "control character"), ("%2B", "wildcard '+'"), ("%23", "wildcard '#'"),
    ("a%0Ab", "control character"), ("%3Cb%3E", "character '<'"), ("a%20b", "character ' '"),
    ("-x", "start with a letter or digit"), ("a" * 65, "65 characters"),
])
def test_maintenance_refuses_unsafe_asset_names_with_a_422_naming_the_field(
        api: tuple[TestClient, AlertManager, Path], raw: str, problem: str) -> None:
    client, mgr, _ = api
    r = client.post(f"/api/assets/{raw}/maintenance", headers=ANA, json={"on": True})
    assert r.status_code == 422, r.text
    (detail,) = r.json()["detail"]
    assert detail["loc"] == ["path", "asset"] and problem in detail["msg"], detail
    assert not mgr.store.maintenance() and mgr.assets() == []  # no phantom asset
    # without a token the name is never looked at: still 401
    assert client.post(f"/api/assets/{raw}/maintenance", json={"on": True}).status_code == 401
