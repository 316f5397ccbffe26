"""The crew page in headless Chromium: live alert, acknowledge, retained MQTT state, XSS."""

from __future__ import annotations

import json
import queue
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from playwright.sync_api import Page, expect

from edge.alerts import AlertManager, AlertStore, RuleSpec
from edge.api import ApiDeps, create_app
from edge.models.infer import ScoredWindow

pytestmark = [pytest.mark.browser]
SPEC = RuleSpec(warning=0.5, critical=0.9, reset=0.4, k=2, n=3, clear_after=3,
                condition="anomaly")
FEATURES = ["vibration.rms", "vibration.kurtosis", "temperature.mean", "current.std"]
SIGNALS = ["vibration", "temperature", "current"]
TOKENS = {"ana": "ana-0123456789abcdef"}


def windows(asset: str, scores: list[float], t0: float,
            dev: list[float] | None = None) -> list[ScoredWindow]:
    d = None if dev is None else np.asarray(dev)
    return [ScoredWindow(asset, t0 + 10 * i, s, d, "pump-anomaly/3") for i, s in enumerate(scores)]


def mqtt_client(port: int, name: str) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name,
                    protocol=mqtt.MQTTv311)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def retained_state(port: int, topic: str, want: str, timeout: float = 10.0) -> dict[str, Any]:
    """Subscribe afresh (as an andon light would) until the retained state is ``want``."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        got: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        c = mqtt_client(port, f"andon-{time.monotonic_ns()}")
        c.on_message = lambda _c, _u, msg, q=got: q.put(msg)
        c.subscribe(topic, qos=1)
        try:
            msg = got.get(timeout=2)
            assert msg.retain, "a new subscriber must get the state as a retained message"
            last = json.loads(msg.payload)
            if last["state"] == want:
                return last
        except queue.Empty:
            pass
        finally:
            c.loop_stop()
            c.disconnect()
        time.sleep(0.1)
    raise AssertionError(f"retained state on {topic} never became {want!r}; last: {last}")


def test_alert_appears_live_and_ack_reaches_mqtt(browser: Any, mosquitto: Any, live_server: Any,
                                                 tmp_path: Path) -> None:
    pub = mqtt_client(mosquitto.port, "forewarn-agent")

    def publish(topic: str, body: bytes, retain: bool) -> None:
        pub.publish(topic, body, qos=1, retain=retain).wait_for_publish(5)

    mgr = AlertManager(AlertStore(tmp_path / "alerts.db"), SPEC, publish, "plant",
                       feature_names=FEATURES, signal_names=SIGNALS)
    deps = ApiDeps(manager=mgr, tokens=TOKENS, audit_path=tmp_path / "audit.jsonl")
    now = time.time()
    # history for the screenshot: an older alert that cleared by itself
    mgr.on_scores(windows("fan-2", [0.1, 0.6, 0.7, 0.3, 0.2, 0.1], now - 3000,
                          [0.5, 3.0, 0.1, 0.2]))
    mgr.on_scores(windows("conveyor-4", [0.2, 0.25, 0.2], now - 100))
    with live_server(create_app(deps)) as server:
        page: Page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(server.url)
        expect(page.locator("#live")).to_have_text("live")
        expect(page.locator("#list-state")).to_have_text("No open alerts.")

        # the model's scores cross the warning level in 2 of 3 windows, then critical
        mgr.on_scores(windows("press-1", [0.2, 0.3, 0.35, 0.62, 0.3, 0.71, 0.8, 0.93, 0.95],
                              now - 60, [4.2, -0.4, 2.5, 1.1]))
        card = page.locator("#open-alerts article", has_text="press-1")
        expect(card).to_be_visible(timeout=10_000)  # no reload: the live feed brought it
        expect(card.locator("h3")).to_have_text("press-1")
        expect(card.locator(".badge.critical")).to_be_visible()
        expect(card.locator(".signals li").first).to_contain_text("vibration")
        assert card.locator("svg.spark polyline").count() == 1
        retained_state(mosquitto.port, "forewarn/plant/alerts/press-1", "open")

        page.fill("#token", TOKENS["ana"])
        page.fill("#device", "tablet-3")
        page.click("#signin button")
        expect(page.locator("#person")).to_have_text("ana")
        card.locator("input.note").fill("Checking the bearing now")
        card.locator("button.ack-btn").click()
        expect(card.locator(".badge.state")).to_have_text("acknowledged")
        expect(card.locator(".ack")).to_contain_text("Acknowledged by ana")

        state = retained_state(mosquitto.port, "forewarn/plant/alerts/press-1", "acknowledged")
        assert (state["ack_by"], state["severity"], state["asset"]) == ("ana", "critical",
                                                                       "press-1")
        assert state["top_signals"][0] == "vibration"

        expect(page.locator("#history tbody tr")).to_have_count(2)
        expect(page.locator("#signin")).to_be_hidden()
        page.close()
    pub.loop_stop()
    pub.disconnect()
    audit = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(a["action"], a["actor"], a["details"].get("note")) for a in audit] == [
        ("session_start", "ana", None), ("ack", "ana", "Checking the bearing now")]
    assert audit[1]["details"]["device"] == "tablet-3"


EVIL_ASSET = '<img src=x onerror="window.__xss=1">'
EVIL_NOTE = "<script>window.__xss=2</script><b>bold?</b>"
EVIL_FEATURE = '<svg onload="window.__xss=3">'


def test_strings_from_mqtt_render_as_text(browser: Any, live_server: Any,
                                          tmp_path: Path) -> None:
    mgr = AlertManager(AlertStore(tmp_path / "alerts.db"), SPEC, None, "plant",
                       feature_names=[EVIL_FEATURE, "x"], signal_names=[])
    mgr.on_scores(windows(EVIL_ASSET, [0.7, 0.8], time.time(), [9.0, 1.0]))
    (alert,) = mgr.open_alerts()
    mgr.ack(alert.id, "ana", EVIL_NOTE)
    with live_server(create_app(ApiDeps(manager=mgr, tokens=TOKENS))) as server:
        page: Page = browser.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(server.url)
        card = page.locator("#open-alerts article").first
        expect(card.locator("h3")).to_have_text(EVIL_ASSET)
        expect(card.locator(".ack")).to_contain_text(EVIL_NOTE)
        expect(card.locator(".signals li").first).to_contain_text(EVIL_FEATURE)
        expect(page.locator("#assets tbody td").first).to_have_text(EVIL_ASSET)
        expect(page.locator("#history tbody tr td").nth(1)).to_have_text(EVIL_ASSET)
        page.wait_for_timeout(300)
        # nothing from the data became markup, and no script ran
        assert page.locator("main img, main script, main b, .signals svg").count() == 0
        assert page.evaluate("window.__xss") is None
        assert dialogs == []
        page.close()


def test_a_limit_alert_says_what_it_is(browser: Any, live_server: Any, tmp_path: Path) -> None:
    from edge.alerts.limits import LimitSample
    from edge.models.bundle import LimitSpec, SignalSpec
    from edge.scoring.ranges import bounds_of

    bounds = bounds_of([SignalSpec(name="temperature", unit="degC", train_min=20.0,
                                   train_max=80.0)], LimitSpec())
    mgr = AlertManager(AlertStore(tmp_path / "alerts.db"), SPEC, None, "plant",
                       feature_names=FEATURES, signal_names=SIGNALS, bounds=bounds)
    now = time.time()
    mgr.on_readings([LimitSample("press-9", "temperature", now + i, v,
                                 bounds["temperature"].code(v))
                     for i, v in enumerate([70.0, 95.5, 97.25])])
    with live_server(create_app(ApiDeps(manager=mgr, tokens=TOKENS))) as server:
        page: Page = browser.new_page()
        page.goto(server.url)
        card = page.locator("#open-alerts article", has_text="press-9")
        expect(card.locator(".badge.kind")).to_have_text("Reading outside trained range")
        expect(card.locator(".limit-detail")).to_contain_text("temperature: 97.3 degC now")
        expect(card.locator(".limit-detail")).to_contain_text("worst 97.3")
        expect(card.locator(".limit-detail")).to_contain_text("above the trained range limit 80")
        expect(card.locator(".limit-detail")).to_contain_text("degC")
        row = page.locator("#assets tbody tr", has_text="press-9")
        expect(row.locator(".badge.state")).to_have_text("open · warning")
        page.close()


def test_a_sensor_sending_nan_says_no_number(browser: Any, live_server: Any,
                                             tmp_path: Path) -> None:
    import math

    from edge.alerts.limits import LimitSample
    from edge.scoring.ranges import FAULT

    mgr = AlertManager(AlertStore(tmp_path / "alerts.db"), SPEC, None, "plant",
                       feature_names=FEATURES, signal_names=SIGNALS, bounds={})
    mgr.on_readings([LimitSample("press-8", "temperature", time.time(), math.nan, FAULT)])
    with live_server(create_app(ApiDeps(manager=mgr, tokens=TOKENS))) as server:
        page: Page = browser.new_page()
        page.goto(server.url)  # the API's JSON carries null, never a bare NaN token
        card = page.locator("#open-alerts article", has_text="press-8")
        expect(card.locator(".badge.kind")).to_have_text("Sensor fault")
        expect(card.locator(".limit-detail")).to_contain_text(
            "temperature: sends NaN (no number), kept out of the model")
        page.close()
