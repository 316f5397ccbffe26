"""/healthz tells the truth: 503 with a reason while the broker link is down or readings
have stopped, 200 again once they are back (real Mosquitto, the agent as a process).

Injected: the broker stopped and started again; readings stopped for longer than
``health.max_silence_s``. A site that has sent nothing since the start is not
flagged (idle but healthy).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from tests.agentkit import wait_until
from tests.conftest import Broker
from tests.faults.conftest import T0, Publisher, agent_process_config, report


def _health(api: str) -> tuple[int, dict[str, Any]]:
    try:
        r = httpx.get(f"{api}/healthz", timeout=2)
    except httpx.HTTPError:
        return 0, {}
    return r.status_code, r.json()


def test_healthz_follows_the_broker_link_and_the_readings(
        tmp_path: Path, mosquitto: Broker, bundle: tuple[Path, Path],
        agent_process: Any) -> None:
    cfg = agent_process_config(tmp_path / "state", *bundle, mosquitto.port,
                               health={"max_silence_s": 3.0})
    agent = agent_process(cfg)
    agent.start()
    seen: list[tuple[str, int, str]] = []

    def step(what: str, code: int, reason: str = "", timeout: float = 30) -> None:
        got = wait_until(lambda: (lambda c: c if c[0] == code else None)(_health(agent.api)),
                         timeout=timeout, what=f"/healthz {code} ({what})")
        assert reason in got[1].get("reason", ""), got
        seen.append((what, code, got[1].get("reason", "ok")))

    try:
        step("idle site, nothing sent yet", 200)
        time.sleep(3.5)  # longer than max_silence_s: still no readings ever, still fine
        step("still idle after max_silence_s", 200)
        mosquitto.stop()
        step("broker stopped", 503, "site broker link down")
        mosquitto.restart()
        step("broker back", 200)
        pub = Publisher(mosquitto.port, "health-pub")
        try:
            for i in range(5):
                pub.reading("mill-1", float(T0 + i), 10.0)
            assert pub.wait_all_acked(10) == 0
            wait_until(lambda: agent.metrics().get("forewarn_readings_received_total", 0) >= 10,
                       what="readings received")
            step("readings flowing", 200)
            step("readings stopped", 503, "no readings for", timeout=10)
            pub.reading("mill-1", float(T0 + 5), 10.0)
            step("readings again", 200)
        finally:
            pub.close()
    finally:
        assert agent.stop() == 0, agent.log_text()[-3000:]
    report("healthz", injected="broker stop/start, readings stopped > max_silence_s",
           answers="; ".join(f"{w}: {c} {r}" for w, c, r in seen), lost=0)
