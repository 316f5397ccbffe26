"""The crew resolves with a verdict from the keyboard, and reads live precision.

Headless Chromium against the real API on a real SQLite alert store (the crew-page
``Site``), the active model's manifest carrying its validation precision: Resolve
opens a modal dialog (three large choices, note, work-order id) that traps Tab,
cancels on Esc and gives the focus back; the verdict reaches the store, the audit
log, the history and the precision panel beside the validation figure; a verdict
is changed later from the history, by keyboard too. Writes docs/screenshot-verdict-*.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from edge.models.bundle import load_bundle
from tests.browser.test_crew_page import RANGES, REPO, SIGNALS, SIZES, Site, new_page, sign_in
from tests.bundlefactory import make_bundle

pytestmark = [pytest.mark.browser]


def site_with_validation(tmp_path: Path) -> Site:
    site = Site(tmp_path)
    path, pub = make_bundle(tmp_path / "validated", signals=SIGNALS, kind="rul", unit="cycles",
                            alert_when="below", warning=30.0, critical=15.0, name="cmapss-rul",
                            units={"s14": "rpm", "s11": "psia"}, ranges=RANGES,
                            lineage={"dataset": "cmapss",
                                     "config": {"data": {"range_margin": 0.5}}},
                            metrics={"validation_precision": 0.85})
    site.manifest = load_bundle(path, [pub]).manifest  # the scorer's "cmapss-rul/1"
    return site


@pytest.mark.parametrize("size", list(SIZES))
def test_resolve_with_a_verdict_by_keyboard_then_change_it(browser: Any, live_server: Any,
                                                           tmp_path: Path, size: str) -> None:
    site = site_with_validation(tmp_path)
    site.engine_alert("engine-7", 12.2, 8142.0)
    site.engine_alert("engine-2", 24.0, 8131.0)
    with live_server(site.app()) as server:
        page = new_page(browser, size)
        page.goto(server.url)
        sign_in(page)
        expect(page.locator("#who")).to_contain_text("Signed in as ana on tablet-3")
        panel = page.locator("#precision tbody tr[data-model='cmapss-rul/1']")
        expect(panel).to_contain_text("cmapss-rul v1 (scoring now)")
        expect(panel.locator(".kpi-now")).to_have_text("no verdicts yet")
        expect(panel.locator(".validated")).to_have_text("85 % (validation data)")

        card = page.locator("#open-alerts article", has_text="engine-7")
        resolve = card.locator("button.resolve-btn")
        resolve.focus()
        page.keyboard.press("Enter")
        dialog = page.locator("#verdict")
        expect(dialog).to_be_visible()
        expect(dialog.locator("#verdict-title")).to_have_text("Resolve engine-7")
        expect(dialog.locator(".verdict-btn.confirmed")).to_be_focused()
        expect(dialog.locator("#verdict-ok")).to_be_disabled()  # a verdict comes first
        # the focus stays in the dialog both ways round
        page.keyboard.press("Shift+Tab")
        expect(dialog.locator("#verdict-cancel")).to_be_focused()
        page.keyboard.press("Tab")
        expect(dialog.locator(".verdict-btn.confirmed")).to_be_focused()
        # Esc cancels: nothing changed, the focus is back on Resolve
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
        expect(resolve).to_be_focused()
        assert site.mgr.store.query(asset="engine-7")[0][0].state == "open"

        page.keyboard.press("Enter")
        expect(dialog).to_be_visible()
        page.keyboard.press("Tab")
        expect(dialog.locator(".verdict-btn.false_alarm")).to_be_focused()
        page.keyboard.press("Space")
        expect(dialog.locator(".verdict-btn.false_alarm")).to_have_attribute("aria-pressed",
                                                                              "true")
        expect(dialog.locator(".verdict-btn.confirmed")).to_have_attribute("aria-pressed",
                                                                            "false")
        for _ in range(2):
            page.keyboard.press("Tab")
        expect(dialog.locator("#verdict-note")).to_be_focused()
        page.keyboard.type("Valve test on line 2")
        page.keyboard.press("Tab")
        page.keyboard.type("WO<4471>")  # not a work-order id: refused on the page
        page.keyboard.press("Enter")
        expect(dialog.locator("#verdict-msg")).to_contain_text("Work order: letters, digits")
        expect(dialog.locator("#verdict-wo")).to_be_focused()
        page.keyboard.press("Control+A")
        page.keyboard.type("WO-4471")
        page.keyboard.press("Tab")
        expect(dialog.locator("#verdict-ok")).to_be_focused()
        if size == "tablet":
            for b in [*dialog.locator(".verdict-btn").all(), dialog.locator("#verdict-ok"),
                      dialog.locator("#verdict-cancel")]:
                box = b.bounding_box()
                assert box is not None and box["height"] >= 44 and box["width"] >= 44, box
            page.screenshot(path=str(REPO / "docs" / "screenshot-verdict-tablet.png"))
        page.keyboard.press("Enter")

        expect(dialog).to_be_hidden()
        expect(page.locator("#toast")).to_have_text(
            "engine-7: resolved — false alarm, by ana")
        expect(page.locator("#open-alerts article", has_text="engine-7")).to_have_count(0)
        row = site.mgr.store.query(asset="engine-7")[0][0]
        assert (row.state, row.verdict, row.verdict_note, row.work_order, row.verdict_by) == (
            "resolved", "false_alarm", "Valve test on line 2", "WO-4471", "ana")
        resolved = [e for e in site.audit() if e["action"] == "resolve"]
        assert [(e["actor"], e["details"]["verdict"], e["details"]["work_order"],
                 e["details"]["device"]) for e in resolved] == [
            ("ana", "false_alarm", "WO-4471", "tablet-3")]
        hist = page.locator(f"#history tbody tr[data-alert-id='{row.id}']")
        expect(hist.locator(".verdict-text")).to_have_text("False alarm · WO-4471 (ana)")
        expect(panel.locator(".kpi-now")).to_have_text("0 % right — 0 of 1")
        expect(page.locator("#assets tr[data-asset='engine-7'] .precision-cell")).to_have_text(
            "0 % (0 of 1)")
        expect(page.locator("#assets tr[data-asset='engine-2'] .precision-cell")).to_have_text(
            "—")

        # the teardown found a crack after all: change the verdict from the history
        change = hist.locator("button.verdict-change")
        expect(change).to_have_text("Change")
        change.focus()
        page.keyboard.press("Enter")
        expect(dialog.locator("#verdict-title")).to_have_text(
            f"Verdict on alert #{row.id} (engine-7)")
        expect(dialog.locator("#verdict-lead")).to_have_text(
            "Now: False alarm · WO-4471 (ana). What did you find?")
        page.keyboard.press("Enter")  # "Fault confirmed" has the focus
        expect(dialog.locator("#verdict-ok")).to_have_text("Save verdict")
        for _ in range(5):
            page.keyboard.press("Tab")
        expect(dialog.locator("#verdict-ok")).to_be_focused()
        page.keyboard.press("Enter")
        expect(dialog).to_be_hidden()
        expect(hist.locator(".verdict-text")).to_have_text("Fault confirmed (ana)")
        expect(panel.locator(".kpi-now")).to_have_text("100 % right — 1 of 1")
        expect(page.locator("#assets tr[data-asset='engine-7'] .precision-cell")).to_have_text(
            "100 % (1 of 1)")
        assert site.mgr.store.require(row.id).verdict == "confirmed"
        assert [e["action"] for e in site.audit()][-1] == "verdict"
        expect(hist.locator("button.verdict-change")).to_be_focused()  # back where it was
        if size == "desktop":
            page.evaluate("document.getElementById('toast').hidden = true")
            page.screenshot(path=str(REPO / "docs" / "screenshot-verdict.png"), full_page=True)
        page.close()


def test_resolve_is_a_verdict_for_signed_in_people_only(browser: Any, live_server: Any,
                                                        tmp_path: Path) -> None:
    site = site_with_validation(tmp_path)
    site.engine_alert("engine-7", 12.2, 8142.0)
    with live_server(site.app()) as server:
        page = new_page(browser, "tablet")
        page.goto(server.url)
        page.locator("#open-alerts article button.resolve-btn").click()
        expect(page.locator("#verdict")).to_be_hidden()
        expect(page.locator("#toast")).to_have_text("Sign this device in first.")
        expect(page.locator("#token")).to_be_focused()
        assert site.mgr.store.query()[0][0].state == "open"
        page.close()
