"""Helpers to run a real agent in-process against a real broker in tests."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.core.config import AgentConfig, parse_config
from edge.models.infer import ScoredWindow
from tests.conftest import free_port


def agent_config(state: Path, bundle_path: Path, pub: Path, port: int,
                 **overrides: Any) -> AgentConfig:
    raw: dict[str, Any] = {
        "site": "site1",
        "state_dir": str(state),
        "mqtt": {"host": "127.0.0.1", "port": port, "client_id": f"agent-{state.name}"},
        "bundle": {"path": str(bundle_path), "trusted_keys": [str(pub)]},
        "api": {"host": "127.0.0.1", "port": free_port()},
        "storage": {"flush_interval_s": 0.2},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    return parse_config(raw)


def wait_until(cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Client:
    """A paho client that records what it receives (topic -> list of payloads)."""

    def __init__(self, port: int, subscribe: list[str] | None = None) -> None:
        self.received: dict[str, list[bytes]] = {}
        self.lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        for t in subscribe or []:
            self.c.subscribe(t, qos=1)
        time.sleep(0.1)

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.received.setdefault(msg.topic, []).append(msg.payload)

    def publish(self, topic: str, payload: Any, qos: int = 1, retain: bool = False) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.c.publish(topic, body, qos=qos, retain=retain).wait_for_publish(10)

    def last_json(self, topic: str) -> Any:
        with self.lock:
            msgs = self.received.get(topic) or []
            return json.loads(msgs[-1]) if msgs and msgs[-1] else None

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class ScoreLog:
    """A score sink: every scored window, in the order the pipeline handed them on
    (after scoring), with the wall time it did."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, ScoredWindow]] = []
        self.lock = threading.Lock()

    def on_scores(self, windows: list[ScoredWindow]) -> None:
        now = time.time()
        with self.lock:
            self.rows.extend((now, w) for w in windows)

    def snapshot(self) -> list[tuple[float, ScoredWindow]]:
        with self.lock:
            return list(self.rows)

    def between(self, t0: float, t1: float) -> list[ScoredWindow]:
        """Windows handed on strictly between two wall times."""
        with self.lock:
            return [w for t, w in self.rows if t0 < t < t1]
