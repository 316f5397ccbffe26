"""The fleet page in headless Chromium: the grid shows sites, sorts, filters; stale stands out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from edge.api.auth import TokenAuth
from fleet.api import FleetApiDeps, create_fleet_app
from fleet.metrics import FleetMetrics
from fleet.store import Report, SqlStore, open_sqlite
from tests.fleetkit import TOKEN, drift_body, health_body

pytestmark = [pytest.mark.browser]


def fill(store: SqlStore, now: float) -> None:
    # s-a: healthy; s-b: drifting (retrain); s-c: silent for 3 h (stale), other model
    seq = {"s-a": 0, "s-b": 0, "s-c": 0}

    def put(site: str, kind: str, body: bytes, at: float, model: str = "") -> None:
        seq[site] += 1
        store.put(Report(site, seq[site], kind, at, 1, model, 0, body.decode()))

    put("s-a", "health", health_body("s-a", p99_ms=1.5), now - 60)
    put("s-b", "health", health_body("s-b", p99_ms=9.0), now - 60)
    put("s-c", "health", health_body("s-c", model="cd" * 32, name="bearing"), now - 3 * 3600)
    for i in range(4):
        put("s-a", "drift", drift_body("s-a", i, alert_rate=0.01), now - 50, "ab" * 32)
        put("s-b", "drift", drift_body("s-b", i, alarm=i >= 1, alert_rate=0.2), now - 50,
            "ab" * 32)
        put("s-c", "drift", drift_body("s-c", i, model="cd" * 32), now - 3 * 3600, "cd" * 32)


def sites(page: Page) -> list[str]:
    return [str(x) for x in page.eval_on_selector_all(
        "#grid-body tr", "rows => rows.map(r => r.dataset.site)")]


def test_grid_sorts_filters_and_marks_stale_and_retrain(
        tmp_path: Path, browser: Any, live_server: Any) -> None:
    store = open_sqlite(tmp_path / "f.sqlite")
    fill(store, time.time())
    app = create_fleet_app(FleetApiDeps(store=store, auth=TokenAuth({"ops": TOKEN}),
                                        registry=FleetMetrics().registry,
                                        stale_after_s=3600))
    errors: list[str] = []
    with live_server(app) as server:
        page = browser.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url)
        expect(page.locator("#error")).to_contain_text("401")  # auth on: no token, no data
        page.fill("#token", TOKEN)
        page.click("#login button")
        expect(page.locator("#grid-body tr")).to_have_count(3)
        assert sites(page) == ["s-a", "s-b", "s-c"]
        # stale stands out: class and a visibly different background
        stale = page.locator('#grid-body tr[data-site="s-c"]')
        expect(stale).to_have_class("stale")
        expect(stale.locator("td.age")).to_contain_text("stale")
        bg = page.eval_on_selector('tr[data-site="s-c"] td.site',
                                   "e => getComputedStyle(e).backgroundColor")
        fresh = page.eval_on_selector('tr[data-site="s-a"] td.site',
                                      "e => getComputedStyle(e).backgroundColor")
        assert bg != fresh
        # the drifting model needs retraining: its cell stands out
        cell = page.locator('#grid-body tr[data-site="s-b"] td[data-model="cmapss"]')
        expect(cell).to_have_class("cell retrain drift")
        # sort by p99, descending on the second click
        page.click('th[data-key="p99"]')
        assert sites(page) == ["s-a", "s-c", "s-b"]
        page.click('th[data-key="p99"]')
        assert sites(page)[0] == "s-b"
        # filter by model name, then only the sites needing attention
        page.fill("#filter", "bearing")
        assert sites(page) == ["s-c"]
        page.fill("#filter", "")
        page.check("#attention")
        assert sorted(sites(page)) == ["s-b", "s-c"]
        # a cell links to the site's history with inline SVG plots
        page.click('#grid-body tr[data-site="s-b"] td[data-model="cmapss"] a')
        expect(page.locator("#site-title")).to_contain_text("s-b")
        expect(page.locator("svg.plot")).to_have_count(5)
        points = page.get_attribute('svg.plot[data-title="drift alarm"] polyline', "points")
        assert points and len(points.split()) == 4
        expect(page.locator("#history tbody tr")).to_have_count(5)
        page.screenshot(path=str(tmp_path / "fleet.png"))
    store.close()
    assert errors == []
