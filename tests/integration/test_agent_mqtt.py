"""The agent end to end on a real Mosquitto with a hand-built signed bundle."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from edge.app import Agent
from edge.core.errors import BundleError, SignatureError
from edge.history.history import read_history
from tests.agentkit import Client, agent_config, wait_until
from tests.bundlefactory import make_bundle
from tests.conftest import Broker


@pytest.fixture
def bundle(tmp_path: Path) -> tuple[Path, Path]:
    return make_bundle(tmp_path / "models", signals=["temp", "vib"], window=4, warning=50.0,
                       reset=40.0)


def publish_series(c: Client, asset: str, start: int, values: list[float]) -> None:
    for i, v in enumerate(values):
        c.publish(f"forewarn/site1/{asset}", {"ts": 1_700_000_000 + start + i,
                                              "values": {"temp": v, "vib": 1.0}})


def test_readings_are_scored_and_a_threshold_crossing_opens_a_retained_alert(
        tmp_path: Path, mosquitto: Broker, bundle: tuple[Path, Path]) -> None:
    cfg = agent_config(tmp_path / "state", *bundle, mosquitto.port)
    agent = Agent(cfg)
    agent.start()
    watcher = Client(mosquitto.port, ["forewarn/site1/alerts/#", "forewarn/site1/events/#"])
    pub = Client(mosquitto.port)
    try:
        wait_until(agent.conn.connected.is_set, what="agent connected")
        publish_series(pub, "press-1", 0, [10.0] * 6)
        wait_until(lambda: agent.pipeline.scored_total >= 3, what="healthy windows scored")
        assert agent.alert_store.unresolved() == []
        publish_series(pub, "press-1", 6, [100.0] * 4)
        state = wait_until(lambda: (watcher.last_json("forewarn/site1/alerts/press-1") or {})
                           .get("state") == "open" and watcher.last_json(
                               "forewarn/site1/alerts/press-1"), what="retained open alert")
        assert state["asset"] == "press-1"
        assert watcher.received.get("forewarn/site1/events/press-1")
        base = f"http://127.0.0.1:{cfg.api.port}"
        wait_until(lambda: _up(base), what="API up")
        body = httpx.get(f"{base}/api/alerts").json()
        items = body["items"] if isinstance(body, dict) else body
        assert [a["asset"] for a in items] == ["press-1"]
        # the explanation carries the driving signal's reading from the scored window
        top = items[0]["top_features"][0]
        assert (top["signal"], top["reading"]) == ("temp", 100.0)
        model = httpx.get(f"{base}/api/model").json()
        assert (model["kind"], model["alert_when"]) == ("anomaly", "above")
        assert [s["name"] for s in model["signals"]] == ["temp", "vib"]
        metrics = httpx.get(f"{base}/metrics").text
        assert _sample(metrics, "forewarn_windows_scored_total") == agent.pipeline.scored_total
        assert _sample(metrics, "forewarn_readings_received_total") == 20.0
        # The history landed on disk (write-ahead log or Parquet) and the alert in SQLite.
        wait_until(lambda: read_history(tmp_path / "state" / "history", 0, 4e9).num_rows == 20,
                   what="20 readings in the history")
        db = sqlite3.connect(tmp_path / "state" / "alerts.sqlite")
        assert db.execute("select count(*) from alerts").fetchone()[0] == 1
    finally:
        pub.close()
        watcher.close()
        agent.stop()
    # A restarted agent still knows the open alert.
    again = Agent(cfg)
    try:
        assert [a.asset for a in again.alert_store.unresolved()] == ["press-1"]
    finally:
        again.alert_store.close()


def test_malformed_and_unknown_messages_are_counted_and_the_stream_goes_on(
        tmp_path: Path, mosquitto: Broker, bundle: tuple[Path, Path]) -> None:
    cfg = agent_config(tmp_path / "state", *bundle, mosquitto.port)
    agent = Agent(cfg)
    agent.start()
    pub = Client(mosquitto.port)
    try:
        wait_until(agent.conn.connected.is_set, what="agent connected")
        pub.publish("forewarn/site1/press-2", b"{not json")
        pub.publish("forewarn/site1/press-2/temp", {"ts": 1, "value": "hot"})
        publish_series(pub, "press-2", 0, [1.0] * 5)
        wait_until(lambda: agent.pipeline.scored_total >= 2, what="windows scored")
        reg = agent.metrics.registry
        assert reg.get_sample_value("forewarn_decode_errors_total",
                                    {"reason": "malformed_json"}) == 1
        assert reg.get_sample_value("forewarn_decode_errors_total", {"reason": "bad_type"}) == 1
        dead = (tmp_path / "state" / "dead-letter.jsonl").read_text().splitlines()
        assert [json.loads(x)["reason"] for x in dead] == ["malformed_json", "bad_type"]
    finally:
        pub.close()
        agent.stop()


def test_tampered_or_untrusted_bundle_is_refused(tmp_path: Path,
                                                 bundle: tuple[Path, Path]) -> None:
    path, pub = bundle
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["thresholds"]["warning"] = 1e9  # someone edits the alert level by hand
    (path / "manifest.json").write_text(json.dumps(manifest))
    cfg = agent_config(tmp_path / "state", path, pub, 1883)
    with pytest.raises(SignatureError, match="tampered"):
        Agent(cfg)
    other, other_pub = make_bundle(tmp_path / "elsewhere", signals=["temp", "vib"])
    cfg = agent_config(tmp_path / "state", other, pub, 1883)
    with pytest.raises(SignatureError, match="not among the trusted keys"):
        Agent(cfg)
    (other / "SIGNATURE").unlink()
    with pytest.raises(BundleError, match="unsigned"):
        Agent(agent_config(tmp_path / "state", other, other_pub, 1883))


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_readings_published_while_the_agent_is_down_are_scored_after_restart(
        tmp_path: Path, mosquitto: Broker, bundle: tuple[Path, Path]) -> None:
    cfg = agent_config(tmp_path / "state", *bundle, mosquitto.port)
    agent = Agent(cfg)
    agent.start()
    pub = Client(mosquitto.port)
    try:
        wait_until(agent.conn.connected.is_set, what="agent connected")
        publish_series(pub, "press-3", 0, [1.0] * 10)
        wait_until(lambda: agent.pipeline.scored_total == 7, what="first windows")
        agent.stop()
        publish_series(pub, "press-3", 10, [1.0] * 40)  # QoS 1, nobody listening
        again = Agent(cfg)
        again.start()
        try:
            # The persistent session (MQTT 5 session expiry) kept all 40 for us, and the
            # window buffers are warmed from the write-ahead log: every one of the 40
            # new slots ends a window (47 over the stream, none lost, none twice).
            wait_until(lambda: again.pipeline.scored_total == 40, what="windows after restart")
            assert again.warm_start.windows_skipped == 7  # scored by the first agent
            assert again.metrics.registry.get_sample_value(
                "forewarn_readings_received_total") == 80
        finally:
            again.stop()
    finally:
        pub.close()


def test_an_idle_state_code_suppresses_alerts_and_a_running_code_lifts_it(
        tmp_path: Path, mosquitto: Broker, bundle: tuple[Path, Path]) -> None:
    cfg = agent_config(tmp_path / "state", *bundle, mosquitto.port,
                       alerts={"state_signal": "mode", "suppress_states": [0]})
    agent = Agent(cfg)
    agent.start()
    watcher = Client(mosquitto.port, ["forewarn/site1/alerts/#"])
    pub = Client(mosquitto.port)
    try:
        wait_until(agent.conn.connected.is_set, what="agent connected")
        publish_series(pub, "press-4", 0, [100.0] * 5)  # breaches: an alert opens
        wait_until(lambda: (watcher.last_json("forewarn/site1/alerts/press-4") or {})
                   .get("state") == "open", what="alert open")
        pub.publish("forewarn/site1/press-4/mode", {"ts": 1_700_000_005, "value": 0})
        wait_until(lambda: (watcher.last_json("forewarn/site1/alerts/press-4") or {})
                   .get("state") == "suppressed", what="suppressed while idle")
        assert agent.alert_store.unresolved()[0].state == "suppressed"
        pub.publish("forewarn/site1/press-4/mode", {"ts": 1_700_000_006, "value": 1})
        wait_until(lambda: (watcher.last_json("forewarn/site1/alerts/press-4") or {})
                   .get("state") == "open", what="back to open when running")
        # The state code is context, not model input: no window was lost to it.
        assert agent.windows.dropped["unknown_signal"] == 0
    finally:
        pub.close()
        watcher.close()
        agent.stop()


def test_readings_from_the_future_are_refused_and_counted(
        tmp_path: Path, mosquitto: Broker, bundle: tuple[Path, Path]) -> None:
    cfg = agent_config(tmp_path / "state", *bundle, mosquitto.port,
                       ingest={"max_future_skew_s": 60})
    agent = Agent(cfg)
    agent.start()
    pub = Client(mosquitto.port)
    try:
        wait_until(agent.conn.connected.is_set, what="agent connected")
        now = int(time.time())
        publish_series(pub, "press-5", now - 1_700_000_000 + 3600, [1.0] * 3)  # 1 h ahead
        publish_series(pub, "press-5", now - 1_700_000_000 - 10, [1.0] * 5)  # just past
        wait_until(lambda: agent.pipeline.scored_total == 2, what="windows of good readings")
        assert agent.metrics.registry.get_sample_value(
            "forewarn_readings_dropped_total", {"reason": "future"}) == 6
    finally:
        pub.close()
        agent.stop()
