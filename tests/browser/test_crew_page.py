"""The crew page tells the truth in the crew's words, at desktop and tablet sizes.

Headless Chromium against the real API (uvicorn) on a real SQLite alert store and
session store, with the manifest of a signed RUL bundle: loading, stale and
signed-out states never read as "no alerts"; scores, readings and times are in the
crew's words; a device signs in once, stays signed in across reloads and restarts,
and is signed out by a revoke; the action buttons work from the keyboard.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import Page, Route, expect

from edge.alerts import AlertManager, AlertStore, RuleSpec
from edge.alerts.bands import signal_bands
from edge.api import ApiDeps, create_app
from edge.models.bundle import Manifest, load_bundle
from edge.models.infer import ScoredWindow
from tests.bundlefactory import make_bundle

pytestmark = [pytest.mark.browser]
REPO = Path(__file__).resolve().parents[2]
TOKENS = {"ana": "ana-0123456789abcdef", "bo": "bo-0123456789abcdef"}
SIZES = {"desktop": {"width": 1280, "height": 800}, "tablet": {"width": 768, "height": 1024}}
SIGNALS = ["s14", "s11"]
# Trained on s14 8,120-8,135 rpm and s11 47.0-48.0 psia; the manifest's min/max are
# that range widened by the trainer's range_margin (0.5) of its span on each side.
RANGES = {"s14": (8112.5, 8142.5), "s11": (46.5, 48.5)}
CLOCK = re.compile(r"^\d\d:\d\d:\d\d · \d+ (s|min) ago$")


def rul_manifest(tmp_path: Path) -> Manifest:
    path, pub = make_bundle(tmp_path / "bundles", signals=SIGNALS, kind="rul", unit="cycles",
                            alert_when="below", warning=30.0, critical=15.0,
                            units={"s14": "rpm", "s11": "psia"}, ranges=RANGES,
                            lineage={"dataset": "cmapss",
                                     "config": {"data": {"range_margin": 0.5}}})
    return load_bundle(path, [pub]).manifest


def rul_window(asset: str, ts: float, rul: float, s14: float) -> ScoredWindow:
    raw = np.array([[8125.0, 8130.0, 8138.0, s14], [47.5, 47.6, 47.4, 47.5]], dtype=np.float32)
    return ScoredWindow(asset, ts, rul, np.array([8.2, -0.5]), "cmapss-rul/1", raw)


class Site:
    """An alert manager for a RUL model, its clock, and the app serving it."""

    def __init__(self, tmp_path: Path, **deps: Any) -> None:
        self.manifest = rul_manifest(tmp_path)
        self.now = [time.time()]
        m = self.manifest
        self.mgr = AlertManager(
            AlertStore(tmp_path / "alerts.db", clock=lambda: self.now[0]),
            RuleSpec.from_manifest(m), None, "plant", feature_names=m.output.feature_names,
            signal_names=m.signal_names, signal_bands=signal_bands(m),
            clock=lambda: self.now[0])
        self.audit_path = tmp_path / "audit.jsonl"
        self.deps = ApiDeps(manager=self.mgr, tokens=TOKENS, audit_path=self.audit_path,
                            manifest=lambda: self.manifest,
                            sessions_path=tmp_path / "state" / "sessions.sqlite", **deps)

    def app(self) -> Any:
        return create_app(self.deps)

    def engine_alert(self, asset: str, rul: float, s14: float, ago_s: float = 60.0) -> None:
        self.now[0] = time.time() - ago_s
        t = self.now[0]
        self.mgr.on_scores([rul_window(asset, t, rul + 2, s14),
                            rul_window(asset, t + 1, rul - 2, s14),
                            rul_window(asset, t + 2, rul, s14)])
        self.now[0] = time.time()

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.audit_path.read_text().splitlines()]


def new_page(browser: Any, size: str) -> Page:
    page: Page = browser.new_context(viewport=SIZES[size], locale="en-GB",
                                     has_touch=size == "tablet").new_page()
    return page


def sign_in(page: Page, token: str = TOKENS["ana"], device: str = "tablet-3") -> None:
    page.fill("#token", token)
    page.fill("#device", device)
    page.locator("#signin button[type=submit]").click()


@pytest.mark.parametrize("size", list(SIZES))
def test_scores_readings_and_times_in_the_crews_words(browser: Any, live_server: Any,
                                                     tmp_path: Path, size: str) -> None:
    site = Site(tmp_path)
    site.engine_alert("engine-7", 12.2, 8142.0)
    site.engine_alert("engine-2", 24.0, 8131.0, ago_s=2 * 86400 + 600)
    with live_server(site.app()) as server:
        page = new_page(browser, size)
        page.goto(server.url)
        card = page.locator("#open-alerts article", has_text="engine-7")
        expect(card.locator(".score")).to_have_text("≈ 12 cycles left (lowest 10 cycles)")
        expect(page.locator("#legend")).to_contain_text(
            "Alert levels: warning below 30 cycles, critical below 15 cycles.")
        first = card.locator(".signals li").first
        expect(first).to_contain_text("s14 8,142 rpm (above normal) — normal 8,120–8,135 rpm")
        expect(first.locator(".feat")).to_have_text("s14:mean, +8.2 σ from training")
        assert CLOCK.match(card.locator(".since time").inner_text()), \
            card.locator(".since time").inner_text()
        older = page.locator("#open-alerts article", has_text="engine-2")
        expect(older.locator(".since time")).to_have_text(
            re.compile(r"^\d{1,2} [A-Z][a-z]{2} \d\d:\d\d:\d\d · 2 days ago$"))
        expect(older.locator(".signals li").first).to_contain_text("s14 8,131 rpm — normal")
        expect(page.locator("#assets tbody tr", has_text="engine-7")).to_contain_text(
            "≈ 12 cycles left")
        # nothing is said only in a tooltip (a tablet cannot hover)
        assert page.locator("main [title], header [title]").count() == 0
        assert "worst" not in page.locator("main").inner_text()

        sign_in(page)
        expect(page.locator("#who")).to_contain_text("Signed in as ana on tablet-3")
        expect(page.locator("#devices tbody tr")).to_contain_text("tablet-3 (this device)")
        expect(page.locator("#devices tbody tr")).to_contain_text("30 days left")
        page.close()  # the screenshots are taken by test_crew_page_load.py


def test_anomaly_probability_and_alert_kinds_in_words(browser: Any, live_server: Any,
                                                     tmp_path: Path) -> None:
    site = Site(tmp_path)
    with live_server(site.app()) as server:
        page = new_page(browser, "tablet")
        page.goto(server.url)
        expect(page.locator("#list-state")).to_have_text("No open alerts.")
        got = page.evaluate("""() => {
          const anomaly = {kind: "anomaly", unit: "", alert_when: "above", reference_score: 2.0,
                           thresholds: {warning: 6.2, critical: 10.0}};
          const bare = {...anomaly, reference_score: null};
          const prob = {kind: "probability", unit: "", alert_when: "above",
                        horizon: {value: 30, unit: "cycles"},
                        thresholds: {warning: 0.5, critical: null}};
          return [Words.score(anomaly, 6.8), Words.thresholds(anomaly), Words.peak(anomaly, 8.0),
                  Words.score(bare, 12.4), Words.score(prob, 0.72), Words.thresholds(prob),
                  Words.score({...prob, horizon: {value: 7200, unit: "s"}}, 0.1),
                  Words.legend(anomaly)];
        }""")
        assert got[:7] == ["3.4× normal", "warning above 3.1× normal, critical above 5.0× normal",
                           "highest 4.0×", "2.0× the warning level",
                           "72 % chance of failure within 30 cycles", "warning above 50 %",
                           "10 % chance of failure within 2 hours"]
        assert "1.0× = typical" in got[7]
        # Limit and sensor-fault alerts (edge/alerts/limits.py) say what the reading was.
        # Rendered outside #open-alerts: a live refresh re-renders that box (and took
        # these cards with it when it landed after the append).
        page.evaluate("""() => {
          const box = document.createElement("div");
          document.querySelector("main").append(box);
          box.append(alertCard({id: 900, asset: "pump-1", severity: "warning", state: "open",
                                kind: "limit", opened_ts: Date.now() / 1000,
                                detail: {signal: "temp", value: 96.5, worst: 97.25, unit: "°C",
                                         bound: "training_max", limit: 90},
                                top_features: [], history: []}),
                     alertCard({id: 901, asset: "pump-2", severity: "warning", state: "open",
                                kind: "sensor_fault", opened_ts: Date.now() / 1000,
                                detail: {signal: "flow", value: -40, worst: -40, unit: "l/min",
                                         bound: "plausible_min", limit: 0},
                                top_features: [], history: []}));
        }""")
        expect(page.locator("[data-alert-id='900'] .badge.kind")).to_have_text(
            "Reading outside trained range")
        expect(page.locator("[data-alert-id='900'] .limit-detail")).to_have_text(
            "temp: 96.5 °C now, worst 97.3 °C, above the trained range limit 90 °C")
        expect(page.locator("[data-alert-id='901'] .badge.kind")).to_have_text("Sensor fault")
        expect(page.locator("[data-alert-id='901'] .limit-detail")).to_have_text(
            "flow: impossible reading -40 l/min (kept out of the model)")
        page.close()


class Held:
    """Holds the page's requests to ``pattern`` until :meth:`release`."""

    def __init__(self, page: Page, pattern: str) -> None:
        self.routes: list[Route] = []
        self.released = False
        page.route(pattern, self._handle)

    def _handle(self, route: Route) -> None:
        if self.released:
            route.continue_()
        else:
            self.routes.append(route)

    def release(self) -> None:
        self.released = True
        for r in self.routes:
            r.continue_()


@pytest.mark.parametrize("size", list(SIZES))
def test_loading_then_a_fresh_empty_list(browser: Any, live_server: Any, tmp_path: Path,
                                         size: str) -> None:
    site = Site(tmp_path)
    with live_server(site.app()) as server:
        page = new_page(browser, size)
        alerts = Held(page, "**/api/alerts?*")
        page.goto(server.url)
        expect(page.locator("#list-state")).to_have_text("Loading…")
        page.wait_for_timeout(500)  # long enough for an early "no alerts" to show, if any
        assert "No open alerts" not in page.locator("main").inner_text()
        expect(page.locator("#banner")).to_be_hidden()
        assert alerts.routes, "the page should be waiting for /api/alerts"
        alerts.release()
        expect(page.locator("#list-state")).to_have_text("No open alerts.")
        page.close()


@pytest.mark.parametrize("size", list(SIZES))
def test_agent_gone_keeps_the_last_alerts_marked_stale(browser: Any, live_server: Any,
                                                       tmp_path: Path, size: str) -> None:
    site = Site(tmp_path)
    for i in range(3):
        site.engine_alert(f"engine-{i}", 10.0 + i, 8142.0)
    server = live_server(site.app()).__enter__()
    page = new_page(browser, size)
    try:
        page.goto(server.url)
        expect(page.locator("#open-alerts article")).to_have_count(3)
        expect(page.locator("#live")).to_have_text("live")
        expect(page.locator("#banner")).to_be_hidden()
    finally:
        server.__exit__(None, None, None)  # the agent stops answering
    banner = page.locator("#banner")
    expect(banner).to_have_text(re.compile(
        r"^Cannot reach the agent since \d\d:\d\d:\d\d — the list below may be out of date"),
        timeout=15_000)
    expect(page.locator("#open-alerts article")).to_have_count(3)  # still listed ...
    expect(page.locator("#open-alerts")).to_have_class(re.compile(r"\bstale\b"))  # ... as stale
    expect(page.locator("#alarm-load")).to_have_class(re.compile(r"\bstale\b"))
    expect(page.locator("#list-state")).to_have_text(re.compile(r"^Last known alerts, as of "))
    assert "No open alerts" not in page.locator("main").inner_text()
    page.close()


def test_lost_live_updates_show_as_stale(browser: Any, live_server: Any,
                                         tmp_path: Path) -> None:
    site = Site(tmp_path, stream_max_s=1.0)  # the stream ends every second; the page reconnects
    site.engine_alert("engine-7", 12.0, 8142.0)
    with live_server(site.app()) as server:
        page = new_page(browser, "desktop")
        page.goto(server.url)
        expect(page.locator("#live")).to_have_text("live")
        page.route("**/api/events", lambda r: r.abort())  # a proxy drops the stream
        expect(page.locator("#banner")).to_have_text(
            re.compile(r"^Live updates lost since \d\d:\d\d:\d\d — the list below may be out "
                       r"of date"), timeout=15_000)
        expect(page.locator("#open-alerts article")).to_have_count(1)
        expect(page.locator("#open-alerts")).to_have_class(re.compile(r"\bstale\b"))
        page.unroute("**/api/events")
        expect(page.locator("#banner")).to_be_hidden(timeout=15_000)
        expect(page.locator("#live")).to_have_text("live")
        page.close()


def revoke(url: str, session_id: int) -> None:
    req = urllib.request.Request(f"{url}/api/sessions/{session_id}", method="DELETE",
                                 headers={"Authorization": f"Bearer {TOKENS['bo']}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200


def current_session(page: Page) -> dict[str, Any]:
    got: Callable[[], Any] = lambda: page.evaluate(  # noqa: E731
        "fetch('/api/session').then((r) => r.json())")
    body: dict[str, Any] = got()
    return body


@pytest.mark.parametrize("size", list(SIZES))
def test_sign_in_once_act_from_the_keyboard_then_revoke(browser: Any, live_server: Any,
                                                        tmp_path: Path, size: str) -> None:
    site = Site(tmp_path, read_open=False)
    site.engine_alert("engine-7", 12.0, 8142.0)
    app = site.app()
    with live_server(app) as server:
        page = new_page(browser, size)
        page.goto(server.url)
        expect(page.locator("#banner")).to_have_text(re.compile(r"^Signed out — "))
        expect(page.locator("#list-state")).to_have_text("Signed out.")
        sign_in(page, token="not-the-right-token-at-all")
        expect(page.locator("#signin-msg")).to_have_text(
            "Token refused — check it and try again.")
        expect(page.locator("#signin")).to_be_visible()
        sign_in(page)
        expect(page.locator("#who")).to_contain_text("Signed in as ana on tablet-3")
        card = page.locator("#open-alerts article", has_text="engine-7")
        expect(card.locator(".score")).to_have_text(re.compile(r"^≈ 12 cycles left"))
        expect(page.locator("#banner")).to_be_hidden()

        page.reload()  # the device stays signed in: no token typed again
        expect(page.locator("#who")).to_contain_text("Signed in as ana on tablet-3")
        expect(page.locator("#signin")).to_be_hidden()
        assert page.evaluate("document.cookie") == ""  # HttpOnly: scripts cannot read it

        # keyboard only: type a note, Tab to Acknowledge, Enter; the focus stays in the card
        note = card.locator("input.note")
        note.focus()
        page.keyboard.type("Bearing noise, checking")
        page.keyboard.press("Tab")
        expect(card.locator("button.ack-btn")).to_be_focused()
        page.keyboard.press("Enter")
        expect(card.locator(".badge.state")).to_have_text("acknowledged")
        expect(card.locator(".ack")).to_contain_text("Acknowledged by ana at ")
        expect(card.locator("button.resolve-btn")).to_be_focused()
        page.keyboard.press("Space")  # Resolve asks for the verdict (test_verdict_page.py)
        expect(page.locator("#verdict .verdict-btn.confirmed")).to_be_focused()
        page.keyboard.press("Space")
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")  # the note, pre-filled from the card's (empty now)
        page.keyboard.press("Enter")
        expect(page.locator("#list-state")).to_have_text("No open alerts.")
        acts = [(e["action"], e["actor"], e["details"].get("device")) for e in site.audit()]
        assert acts[-2:] == [("ack", "ana", "tablet-3"), ("resolve", "ana", "tablet-3")]
        done = site.mgr.store.query(state="resolved")[0][0]
        assert (done.ack_note, done.verdict) == ("Bearing noise, checking", "confirmed")

        # another person revokes this tablet from elsewhere: it is signed out
        revoke(server.url, current_session(page)["id"])
        site.engine_alert("engine-9", 11.0, 8142.0)  # a change: the page refreshes
        expect(page.locator("#signin-msg")).to_contain_text("revoked or has expired",
                                                            timeout=15_000)
        page.reload()
        expect(page.locator("#signin")).to_be_visible()
        expect(page.locator("#banner")).to_have_text(re.compile(r"^Signed out — "))
        page.close()
    revoked = [e for e in site.audit() if e["action"] == "session_revoke"]
    assert [(e["actor"], e["details"]["device"]) for e in revoked] == [("bo", "tablet-3")]


def test_a_refresh_during_a_held_key_waits_until_the_press_is_done(
        browser: Any, live_server: Any, tmp_path: Path) -> None:
    """A press is keydown then keyup on one element: a refresh that replaced the card in
    between swallowed Space on its Resolve button (seen under load)."""
    from tests.agentkit import wait_until

    site = Site(tmp_path)
    site.engine_alert("engine-7", 12.2, 8142.0)
    site.engine_alert("engine-2", 24.0, 8131.0)
    with live_server(site.app()) as server:
        page = new_page(browser, "desktop")
        page.goto(server.url)
        sign_in(page)
        card = page.locator("#open-alerts article", has_text="engine-7")
        expect(card.locator("button.resolve-btn")).to_be_visible()
        expect(page.locator("#open-alerts article")).to_have_count(2)
        card.locator("button.resolve-btn").focus()
        page.keyboard.down(" ")
        page.evaluate("for (const a of document.querySelectorAll('#open-alerts article')) "
                      "a.dataset.kept = '1'")
        other = next(a for a in site.mgr.store.unresolved() if a.asset == "engine-2")
        site.mgr.resolve(other.id, "bo", "from the control room", verdict="confirmed")
        page.evaluate("refresh()")
        # The page has the new list (a render would follow in the same task)...
        wait_until(lambda: page.evaluate("state.openItems.length") == 1,
                   what="the page's refresh with engine-2 resolved")
        # ...but the cards under the held key stay until it is released.
        assert page.locator("#open-alerts article[data-kept]").count() == 2
        page.keyboard.up(" ")
        expect(page.locator("#verdict")).to_be_visible()  # the press came through
        expect(page.locator("#open-alerts article")).to_have_count(1)  # then the render
        expect(page.locator("#open-alerts article[data-kept]")).to_have_count(0)
        page.close()
