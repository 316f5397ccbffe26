"""No name can blind the site.

Injected: an alert database as an older version left it, holding a maintenance
row for asset ``x\\x00y`` (a NUL: Mosquitto drops a client that publishes on such a
topic as a malformed packet) and an open alert for asset ``a+b`` (a wildcard: paho
refuses to publish it); API calls naming assets with a NUL, ``+``, ``#``, ``/`` or
HTML; readings on topics whose asset level breaks the name rule.

What must hold, against a real Mosquitto and the agent as a process: the link to
the broker stays up (no reconnect at all), the good asset's readings are scored
and its retained state published, each bad outgoing topic is refused, counted and
logged once, the API answers 422 naming the field, and a bad ingest topic is
counted as ``bad_name`` and dead-lettered.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from edge.alerts.store import AlertStore
from tests.agentkit import Client, wait_until
from tests.conftest import Broker
from tests.faults.conftest import T0, Publisher, agent_process_config, report

TOKEN = "t" * 32


def test_bad_names_in_old_state_api_and_ingest_never_break_the_link(
        tmp_path: Path, mosquitto: Broker, bundle: tuple[Path, Path],
        agent_process: Any) -> None:
    state = tmp_path / "state"
    state.mkdir()
    old = AlertStore(state / "alerts.sqlite")  # what an older version could have written
    old.set_maintenance("x\x00y", True, "ana", "probe")
    old.open_alert(asset="a+b", condition="score", severity="warning", score=99.0,
                   data_ts=T0, model="test-model/1")
    old.close()
    tokens = tmp_path / "tokens"
    tokens.write_text(f"ana:{TOKEN}\n")
    cfg = agent_process_config(state, *bundle, mosquitto.port, api={"tokens_file": str(tokens)})
    agent = agent_process(cfg)
    watcher = Client(mosquitto.port, ["forewarn/site1/alerts/#"])
    agent.start()
    pub = Publisher(mosquitto.port, "bad-names-pub")
    try:
        wait_until(agent.up, timeout=30, what="agent up and connected")
        for i in range(12):
            pub.reading("mill-1", float(T0 + i), 10.0)
            time.sleep(0.02)
        bad_topics = ["forewarn/site1/a b/temp", "forewarn/site1/<b>/temp",
                      "forewarn/site1/" + "x" * 80]
        for t in bad_topics:
            pub.send(t, {"ts": T0, "value": 1.0} if t.endswith("temp") else
                     {"ts": T0, "values": {"temp": 1.0}})
        assert pub.wait_all_acked(30) == 0
        wait_until(lambda: agent.metrics().get("forewarn_windows_scored_total", 0) >= 8,
                   timeout=30, what="the good asset's windows scored")
        wait_until(lambda: watcher.last_json("forewarn/site1/alerts/mill-1") is not None,
                   what="the good asset's retained state published")
        auth = {"Authorization": f"Bearer {TOKEN}"}
        refused = {}
        for name in ["x%00y", "%2B", "%23", "a%2Fb", "%3Cscript%3E", "a%0Ab", "a%20b"]:
            r = httpx.post(f"{agent.api}/api/assets/{name}/maintenance", json={"on": True},
                           headers=auth, timeout=5)
            refused[name] = r.status_code
            assert r.status_code in (404, 422), (name, r.status_code, r.text)
            if r.status_code == 422:
                detail = r.json()["detail"][0]
                assert detail["loc"] == ["path", "asset"], detail
        ok = httpx.post(f"{agent.api}/api/assets/mill-1/maintenance", json={"on": True},
                        headers=auth, timeout=5)
        assert ok.status_code == 200
        wait_until(lambda: (watcher.last_json("forewarn/site1/alerts/mill-1") or {}).get(
            "maintenance") is True, what="a good maintenance change still published")
        # Reconnects republish every state: the bad ones must stay refused each time.
        m = agent.metrics()
        wait_until(lambda: agent.metrics().get('forewarn_decode_errors_total{reason="bad_name"}',
                                               0) >= len(bad_topics),
                   what="bad ingest topics counted as bad_name")
        m = agent.metrics()
        time.sleep(1.5)  # a broken link would have dropped and reconnected by now
        m2 = agent.metrics()
    finally:
        pub.close()
        watcher.close()
        assert agent.stop() == 0, agent.log_text()[-3000:]
    log = agent.log_text()
    broker_log = mosquitto.log.read_text(errors="replace")
    dead = [json.loads(line) for line in
            (state / "dead-letter.jsonl").read_text().splitlines() if line.strip()]
    quarantine_lines = [ln for ln in log.splitlines() if "quarantined (skipped" in ln]
    report("bad names",
           injected="old SQLite rows for assets 'x\\x00y' and 'a+b', 7 bad API asset names, "
                    f"{len(bad_topics)} bad ingest topics",
           api_refused=sorted(set(refused.values())),
           mqtt_connected=m2.get("forewarn_mqtt_connected"),
           reconnects=m2.get("forewarn_mqtt_reconnects_total"),
           publish_refused=m2.get("forewarn_mqtt_publish_refused_total"),
           windows_scored=m2.get("forewarn_windows_scored_total"),
           dead_lettered_bad_name=sum(d.get("reason") == "bad_name" for d in dead),
           lost=0 if m2.get("forewarn_windows_scored_total", 0) >= 8 else "windows")
    assert m["forewarn_mqtt_connected"] == 1 and m2["forewarn_mqtt_connected"] == 1
    assert m2.get("forewarn_mqtt_reconnects_total", 0) == 0
    assert m2["forewarn_mqtt_publish_refused_total"] >= 2  # both old assets' states
    assert len(quarantine_lines) == 2, quarantine_lines  # each bad topic logged once
    assert "malformed" not in broker_log.lower()
    assert sum(d.get("reason") == "bad_name" for d in dead) >= len(bad_topics)
    assert 422 in refused.values()
