"""The crew page's Model column under a template: learning with progress, refused with why.

Headless Chromium against the real API, whose commissioning view is a real
:class:`edge.models.commissioning.Commissioning` over a trained template: one asset
has counted 50 of its 111 commissioning windows, another was refused by the
learner (its verdict file), a third learned a normal that failed the held-back check
and is flagged, a fourth is not under commissioning at all.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import expect

from edge.alerts.rules import RuleSpec
from edge.models.bundle import load_bundle
from edge.models.commissioning import Commissioning, paths, write_json
from edge.models.infer import TemplateScorer
from edge.models.signing import generate_keypair, load_private_key
from edge.models.sitestore import SiteParamsRegistry
from edge.scoring.window import ReadyWindow
from tests.browser.test_crew_page import Site, new_page
from tests.commissionkit import ROWS, pump, train_template
from trainer.commission import Learner

pytestmark = [pytest.mark.browser]


def test_model_column_words_each_assets_commissioning(browser: Any, live_server: Any,
                                                      tmp_path: Path) -> None:
    path, pub = train_template(tmp_path)
    tpl = load_bundle(path, [pub])
    generate_keypair(tmp_path / "site.key", tmp_path / "site.pub")
    sites = SiteParamsRegistry(tmp_path / "models", [pub], site_keys=[tmp_path / "site.pub"])
    c = Commissioning(tpl, TemplateScorer(tpl), sites, tmp_path / "state")
    window = np.zeros((3, 10), np.float32)
    c.on_unscored([ReadyWindow("pump-9", 1_770_000_009.0 + i, window) for i in range(50)])
    write_json(paths(tmp_path / "state")[1], {"templates": {tpl.ident: {"pump-stuck": {
        "state": "insufficient_data",
        "reason": "flow_l_min constant at 100 over its first 120 rows"}}}})
    # pump-8's normal changed in its commissioning period's last quarter: the learner's
    # held-back check fails, and the template (flag) installs it marked unverified.
    rows = pump(8, ROWS + 1)
    rows[2, 90:] += 5.0
    learner = Learner(tpl, RuleSpec(warning=3.0, k=3, n=5, clear_after=5))
    learned = learner.learn("pump-8", 1_770_000_000.0 + np.arange(ROWS + 1), rows)
    assert learned is not None and learned.evidence["verification"] == "failed"
    sites.install(learner.package(tmp_path / "out", "pump-8", learned,
                                  load_private_key(tmp_path / "site.key")), tpl)
    c.poll()
    site = Site(tmp_path, commissioning=c.snapshot)
    site.engine_alert("engine-7", 12.2, 8142.0)
    with live_server(site.app()) as server:
        page = new_page(browser, "desktop")
        page.goto(server.url)
        cell = page.locator("#assets tr[data-asset='pump-9'] .model-cell")
        expect(cell).to_have_text("learning its normal: 45 %, no model alerts yet")
        expect(page.locator("#assets tr[data-asset='pump-stuck'] .model-cell")).to_have_text(
            "not enough data to learn its normal: flow_l_min constant at 100 over its first "
            "120 rows")
        flagged = page.locator("#assets tr[data-asset='pump-8'] .model-cell")
        expect(flagged).to_contain_text("own normal learned, not verified: held-back tail:")
        expect(flagged).to_have_class(re.compile(r"\bcm-unverified\b"))
        # Learning assets have no score yet, and their data age comes from their windows.
        expect(page.locator("#assets tr[data-asset='pump-9'] .score-cell")).to_have_text("—")
        expect(page.locator("#assets tr[data-asset='pump-9'] .data-age")).to_contain_text(
            "fresh")
        expect(page.locator("#assets tr[data-asset='engine-7'] .model-cell")).not_to_contain_text(
            "learning")
        page.close()
