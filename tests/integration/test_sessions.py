"""Remembered device sign-in over HTTP (TestClient) against real SQLite files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from edge.alerts import AlertManager, AlertStore, RuleSpec
from edge.api import ApiDeps, create_app
from edge.api.sessions import COOKIE, SessionStore
from tests.integration.test_api import ANA, TOKENS, sw

DAY = 86400.0
CSRF = {"X-Forewarn-Request": "1"}


def client(tmp_path: Path, tokens: dict[str, str] | None = None,
           base_url: str = "http://localhost", **kw: Any) -> tuple[TestClient, AlertManager]:
    mgr = AlertManager(AlertStore(tmp_path / "alerts.db"), RuleSpec(warning=0.5, critical=0.9),
                       None, "plant")
    deps = ApiDeps(manager=mgr, tokens=TOKENS if tokens is None else tokens,
                   audit_path=tmp_path / "audit.jsonl",
                   sessions_path=tmp_path / "state" / "sessions.sqlite", **kw)
    return TestClient(create_app(deps), base_url=base_url), mgr


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    """The chained audit log's entries, flattened: action, person (actor), details."""
    entries = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    return [{**e["details"], "action": e["action"], "person": e["actor"]} for e in entries]


def sign_in(c: TestClient, device: str = "tablet-3", token: str = TOKENS["ana"]) -> Any:
    return c.post("/api/session", json={"token": token, "device": device})


def test_sign_in_sets_a_strict_httponly_cookie_and_stores_only_a_hash(tmp_path: Path) -> None:
    c, _ = client(tmp_path, session_days=7)
    r = sign_in(c)
    assert r.status_code == 200, r.text
    assert (r.json()["person"], r.json()["device"]) == ("ana", "tablet-3")
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    for part in ("HttpOnly", "SameSite=strict", "Path=/", f"Max-Age={7 * 86400}"):
        assert part.lower() in cookie.lower(), (part, cookie)
    assert "secure" not in cookie.lower()  # plain HTTP: a Secure cookie would never come back
    secret = c.cookies[COOKIE]
    assert len(secret) >= 40
    me = c.get("/api/session").json()
    assert (me["person"], me["device"], me["current"]) == ("ana", "tablet-3", True)
    assert 7 * DAY - 60 < me["expires"] - me["created"] <= 7 * DAY
    db = b"".join(p.read_bytes() for p in (tmp_path / "state").iterdir())
    assert secret.encode() not in db  # only the hash is kept
    assert [(a["action"], a["person"], a["device"]) for a in audit(tmp_path)] == [
        ("session_start", "ana", "tablet-3")]


def test_secure_cookie_over_tls(tmp_path: Path) -> None:
    c, _ = client(tmp_path, base_url="https://localhost")
    assert "secure" in sign_in(c).headers["set-cookie"].lower()


def test_cookie_mutations_need_the_custom_header_and_name_person_and_device(
        tmp_path: Path) -> None:
    c, mgr = client(tmp_path)
    mgr.on_scores([sw("e1", 1, 0.6)])
    (alert,) = mgr.open_alerts()
    sign_in(c)
    # what a cross-site form would send: the cookie, no custom header
    r = c.post(f"/api/alerts/{alert.id}/ack", json={"note": "forged"})
    assert r.status_code == 403 and "X-Forewarn-Request" in r.json()["detail"]
    assert mgr.store.require(alert.id).ack_ts is None
    r = c.post(f"/api/alerts/{alert.id}/ack", json={"note": "greased"}, headers=CSRF)
    assert r.status_code == 200 and r.json()["ack_by"] == "ana"
    assert c.get("/api/whoami").json() == {"person": "ana"}  # reads need no header
    ack = [a for a in audit(tmp_path) if a["action"] == "ack"]
    assert [(a["person"], a["device"], a["result"]) for a in ack] == [("ana", "tablet-3", "ok")]
    # bearer tokens keep working unchanged for scripts (no cookie, no header)
    script = TestClient(c.app, base_url="http://localhost")
    assert script.post(f"/api/alerts/{alert.id}/resolve", headers=ANA,
                       json={"verdict": "unsure"}).status_code == 200


def test_sessions_survive_a_restart_and_end_on_revoke(tmp_path: Path) -> None:
    c, _ = client(tmp_path)
    sign_in(c, "tablet-3")
    secret = c.cookies[COOKIE]
    c2, _ = client(tmp_path)  # the agent restarted: a new app on the same state dir
    c2.cookies.set(COOKIE, secret)
    assert c2.get("/api/session").json()["device"] == "tablet-3"
    other = TestClient(c2.app, base_url="http://localhost")
    sessions = other.get("/api/sessions", headers=ANA).json()["items"]
    assert [(s["person"], s["device"], s["current"]) for s in sessions] == [
        ("ana", "tablet-3", False)]
    r = other.delete(f"/api/sessions/{sessions[0]['id']}", headers=ANA)
    assert r.status_code == 200
    assert c2.get("/api/session").status_code == 401
    assert c2.post("/api/alerts/1/ack", headers=CSRF).status_code == 401
    assert other.delete(f"/api/sessions/{sessions[0]['id']}", headers=ANA).status_code == 404
    revokes = [a for a in audit(tmp_path) if a["action"] == "session_revoke"]
    assert [(a["person"], a["device"], a["session_person"]) for a in revokes] == [
        ("ana", "tablet-3", "ana")]


def test_sign_out_ends_this_devices_session_only(tmp_path: Path) -> None:
    tablet, _ = client(tmp_path)
    sign_in(tablet, "tablet-3")
    desk = TestClient(tablet.app, base_url="http://localhost")
    sign_in(desk, "control-room")
    assert tablet.delete("/api/session").status_code == 403  # sign-out needs the header too
    assert tablet.delete("/api/session", headers=CSRF).json() == {"signed_out": True}
    assert tablet.get("/api/session").status_code == 401
    assert desk.get("/api/session").json()["device"] == "control-room"
    assert [a["action"] for a in audit(tmp_path)][-1] == "session_end"


def test_failed_sign_ins_count_in_the_limiter(tmp_path: Path) -> None:
    c, _ = client(tmp_path, max_failures=3)
    for _ in range(3):
        r = sign_in(c, token="not-a-valid-token-at-all")
        assert r.status_code == 401 and r.json()["detail"] == "token refused"
    r = sign_in(c, token="not-a-valid-token-at-all")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    assert COOKIE not in c.cookies
    assert [a["action"] for a in audit(tmp_path)] == ["auth_failed"] * 3
    # the lock-out refuses wrong tokens only: a colleague at the same address signs in
    assert sign_in(c).status_code == 200 and COOKIE in c.cookies
    assert c.post("/api/session", json={"token": "x", "device": "a\nb"}).status_code == 422


def test_a_person_removed_from_the_tokens_file_is_signed_out(tmp_path: Path) -> None:
    c, _ = client(tmp_path)
    sign_in(c)
    secret = c.cookies[COOKIE]
    c2, _ = client(tmp_path, tokens={"bo": "bo-0123456789abcdef"})
    c2.cookies.set(COOKIE, secret)
    assert c2.get("/api/session").status_code == 401


def test_sessions_expire_after_their_lifetime(tmp_path: Path) -> None:
    now = [1000.0]
    store = SessionStore(tmp_path / "s.sqlite", 30 * DAY, clock=lambda: now[0])
    secret, s = store.create("ana", "tablet-3", "10.0.0.7")
    assert store.lookup(secret, {"ana"}) is not None
    assert store.lookup(secret + "x", {"ana"}) is None
    now[0] += 30 * DAY - 1
    assert store.lookup(secret, {"ana"}) == s.__class__(s.id, "ana", "tablet-3", "10.0.0.7",
                                                        1000.0, 1000.0 + 30 * DAY, now[0])
    now[0] += 1
    assert store.lookup(secret, {"ana"}) is None and store.list() == []


def test_cli_lists_and_revokes_sessions(tmp_path: Path, capsys: Any) -> None:
    from edge.cli import main

    c, _ = client(tmp_path)
    sign_in(c, "tablet-3")
    state = str(tmp_path / "state")
    assert main(["sessions", "list", "--state-dir", state, "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert (listed["person"], listed["device"]) == ("ana", "tablet-3")
    assert main(["sessions", "revoke", str(listed["id"]), "--state-dir", state,
                 "--actor", "it-admin"]) == 0
    assert "revoked session" in capsys.readouterr().out
    assert c.get("/api/session").status_code == 401  # the running app sees it at once
    assert main(["sessions", "revoke", str(listed["id"]), "--state-dir", state]) == 2
    entry = json.loads((tmp_path / "state" / "audit.jsonl").read_text().splitlines()[-1])
    assert (entry["action"], entry["actor"], entry["details"]["device"]) == (
        "session_revoke", "it-admin", "tablet-3")
