"""The crew page's "Model" card follows a real agent's staged rollout and says why it ended.

Headless Chromium against a running agent (registry, API, a real Mosquitto and a live
stream): a paused candidate on its first canary stage reads as such, and once an
always-breaching candidate is rolled back automatically the card shows the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from edge.app import Agent
from tests.agentkit import agent_config, wait_until
from tests.bundlefactory import make_bundle
from tests.conftest import Broker, free_port
from tests.integration.test_rollout_stages import ANA, TOKEN, Streamer

pytestmark = [pytest.mark.browser]


def test_the_model_card_shows_the_stage_the_pause_and_the_rollback_reason(
        browser: Any, tmp_path: Path, mosquitto: Broker) -> None:
    models = tmp_path / "models"
    v1, pub = make_bundle(models, signals=["a", "b"], window=4, version="1", warning=50.0)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"ana:{TOKEN}\n")
    port = free_port()
    stages = {"shadow_hold_s": 0.0, "canary": [{"share": 0.05, "hold_s": 600.0},
                                               {"share": 0.5, "hold_s": 600.0}]}
    cfg = agent_config(tmp_path / "state", v1, pub, mosquitto.port,
                       bundle={"name": "test-model", "registry_poll_s": 0.1,
                               "canary_min_windows": 5, "rollout_stages": stages},
                       api={"port": port, "tokens_file": str(tokens)})
    agent = Agent(cfg)
    agent.start()
    stream = Streamer(mosquitto.port)
    stream.start()
    base = f"http://127.0.0.1:{port}"
    page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        reg = agent.registry
        assert reg is not None
        for version, offset in (("2", 0.0), ("3", 100.0)):
            b, _ = make_bundle(models, signals=["a", "b"], window=4, version=version,
                               warning=50.0, score_offset=offset)
            reg.install(b, actor="test")
        reg.set_candidate("test-model", "2", actor="test")
        wait_until(lambda: agent.pipeline.rollout is not None, what="the candidate running")
        r = httpx.post(f"{base}/api/models/test-model/rollout/pause", headers=ANA,
                       json={"reason": "shift change"})
        assert r.status_code == 200, r.text
        page.goto(base)
        expect(page.locator("#models-section")).to_be_visible()
        expect(page.locator("#model-active")).to_have_text("Scoring with test-model/1.")
        card = page.locator("#model-rollout")
        expect(card).to_contain_text("Candidate test-model/2 scores 5 % of the assets "
                                     "(canary 5 %, stage 1 of 2)")
        expect(card).to_contain_text("paused by ana, the hold clock is stopped")
        expect(card).to_have_class("model-card paused")
        expect(page.locator("#model-rollback")).to_be_hidden()

        reg.set_candidate("test-model", "3", actor="test")  # the always-breaching one
        wait_until(lambda: agent.lifecycle is not None and agent.lifecycle.walker is not None
                   and agent.lifecycle.walker.state is not None
                   and agent.lifecycle.walker.state.version == "3"
                   and agent.lifecycle.walker.state.status == "rolled_back",
                   timeout=30, what="the automatic rollback of 3")
        page.reload()
        notice = page.locator("#model-rollback")
        expect(notice).to_be_visible()
        expect(notice).to_contain_text("Candidate test-model/3 was rolled back automatically")
        expect(notice).to_contain_text(": canary 5 %: candidate alert rate 100.000%")
        expect(notice).to_have_class("rollback bad")
        expect(card).to_have_text("No candidate model is being tried.")
        page.screenshot(path=str(tmp_path / "rollout-card.png"), full_page=True)
        assert not errors, errors
    finally:
        page.close()
        stream.stop()
        agent.stop()
