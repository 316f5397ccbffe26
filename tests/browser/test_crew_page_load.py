"""The crew page shows a dead device as gone, and the alarm load against its targets.

Headless Chromium against the real API on a real SQLite alert store (the crew-page
``Site``): an asset whose Sparkplug source died (``set_source_dead``, as the agent does
on NDEATH/DDEATH) reads "No data — device reported offline at …" on the asset table and
on its alert card, its score marked out of date, never "fresh"; a silent one reads "No
data for N min"; the "Alarm load" panel words ``/api/alarm-kpis`` computed from seeded
events (a flood, a chattering alarm, a stale alarm) and names them by asset. These
tests also write the screenshots in docs/.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.test_crew_page import REPO, SIZES, Site, new_page, rul_window, sign_in

pytestmark = [pytest.mark.browser]
CLOCK = r"\d\d:\d\d:\d\d"


def seed(site: Site) -> dict[str, float]:
    """A flood (since cleared), a chattering alarm, a stale alarm, a silent asset and a
    dead one."""
    now = time.time()
    # inside fixed 10-minute periods that are over, so no run straddles a boundary
    flood_t = (now - 1200) // 600 * 600 + 30
    chatter_t = flood_t + 600
    for i in range(12):  # 12 assets alarm within one period: more than 10, a flood
        site.now[0] = flood_t + i
        site.mgr.on_scores([rul_window(f"f-{i}", flood_t + i, 25.0, 8131.0)])
    for i in range(12):  # ... and each cleared a few minutes later (2 transitions: no chatter)
        for k in range(3):
            site.now[0] = flood_t + 180 + 3 * i + k
            site.mgr.on_scores([rul_window(f"f-{i}", site.now[0], 50.0, 8131.0)])
    # c-1 opens, clears (3 healthy windows) and opens again within a minute: it chatters
    for j, rul in enumerate([25.0, 50.0, 50.0, 50.0, 25.0]):
        site.now[0] = chatter_t + 5 * j
        site.mgr.on_scores([rul_window("c-1", chatter_t + 5 * j, rul, 8131.0)])
    site.engine_alert("engine-2", 24.0, 8131.0, ago_s=2 * 86400 + 600)  # open 2 days: stale
    site.engine_alert("pump-9", 24.0, 8131.0, ago_s=360)  # silent for 6 min
    site.engine_alert("engine-7", 12.2, 8142.0, ago_s=600)  # alarmed, then its node died
    site.now[0] = now - 240
    site.mgr.set_source_dead("engine-7", True)  # its Sparkplug node sent NDEATH 4 min ago
    site.now[0] = time.time()
    return {"flood_t": flood_t}


@pytest.mark.parametrize("size", list(SIZES))
def test_dead_device_shows_offline_and_the_alarm_load(browser: Any, live_server: Any,
                                                      tmp_path: Path, size: str) -> None:
    site = Site(tmp_path)
    seed(site)
    stale_id = site.mgr.store.query(asset="engine-2")[0][0].id
    with live_server(site.app()) as server:
        page = new_page(browser, size)
        page.goto(server.url)

        # the dead device: offline on the table and its card, its score out of date
        row = page.locator("#assets tbody tr[data-asset='engine-7']")
        expect(row.locator(".data-age")).to_have_text(re.compile(
            rf"^No data — device reported offline at {CLOCK} · 4 min ago$"))
        expect(row.locator(".score-cell")).to_have_text("≈ 12 cycles left (out of date)")
        card = page.locator("#open-alerts article", has_text="engine-7")
        expect(card.locator(".offline")).to_have_text(re.compile(
            rf"^No data — device reported offline at {CLOCK} · 4 min ago$"))
        expect(card.locator(".score")).to_contain_text("— out of date")
        expect(card).to_have_class(re.compile(r"\bgone\b"))
        # a silent one says for how long; none of the stale ones reads "fresh"
        expect(page.locator("#assets tr[data-asset='pump-9'] .data-age")).to_have_text(
            "No data for 6 min")
        expect(page.locator("#open-alerts article", has_text="pump-9").locator(".offline")
               ).to_have_text("No data for 6 min")
        assert "fresh" not in page.locator("#assets").inner_text()
        expect(page.locator("#open-alerts article")).to_have_count(4)  # the flood cleared

        # the alarm load: each figure against its target, in words
        panel = page.locator("#alarm-load tbody")
        expect(page.locator("#alarm-load-msg")).to_have_text("Last 24 hours.")
        floods = panel.locator("tr", has_text="Alarm floods")
        expect(floods).to_contain_text(re.compile(r"1 \(10 min in flood, [\d.]+ % of the time\)"))
        expect(floods.locator(".kpi-verdict")).to_have_text("Above target")
        busiest = panel.locator("tr", has_text="Busiest 10 minutes")
        expect(busiest.locator(".kpi-now")).to_have_text("12 alarms")
        expect(busiest.locator(".kpi-verdict")).to_have_text("Above target")
        day = panel.locator("tr", has_text="Alarms in the last 24 hours")
        expect(day).to_contain_text("at most 150")
        expect(day.locator(".kpi-verdict")).to_have_text("OK")
        for what in ("Chattering alarms", "Stale alarms"):
            expect(panel.locator("tr", has_text=what).locator(".kpi-now")).to_have_text("1")
        items = page.locator("#alarm-items")
        expect(items.locator(".flood")).to_have_text(re.compile(
            rf"^Flood ({CLOCK}|\d+ \w+ {CLOCK})–\d\d:\d\d, 12 alarms: f-0, f-1, f-2, f-3, f-4 "
            r"and 7 more$"))
        expect(items.locator(".chattering")).to_have_text(
            "Chattering: c-1 — model score, 3 changes in the last 24 h")
        expect(items.locator(".stale")).to_have_text(re.compile(
            rf"^Stale: engine-2 — open since \d+ \w+ {CLOCK} · 2 days ago \(alert #{stale_id}\)$"))

        sign_in(page)  # the screenshots show a signed-in tablet, a dead device and the load
        expect(page.locator("#who")).to_contain_text("Signed in as ana on tablet-3")
        expect(page.locator("#devices tbody tr")).to_contain_text("tablet-3 (this device)")
        page.evaluate("document.getElementById('toast').hidden = true")
        name = "screenshot-alerts.png" if size == "desktop" else "screenshot-alerts-tablet.png"
        page.screenshot(path=str(REPO / "docs" / name), full_page=True)

        # the source is born again: the page refreshes on the change and says fresh data
        site.mgr.on_scores([rul_window("engine-7", time.time(), 12.0, 8142.0)])
        site.mgr.set_source_dead("engine-7", False)
        expect(row.locator(".data-age")).to_have_text(re.compile(r"^fresh, "), timeout=15_000)
        expect(card.locator(".offline")).to_have_count(0)

        page.close()
