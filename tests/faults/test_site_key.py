"""Scenario: a stolen site key tries to replace the model.

Injected, against the agent as a process on a real Mosquitto: a full bundle that
silences every alert (warning level 1e9), signed with the appliance's own site key
(made by ``forewarn keys generate --site``). First through the front door
(``forewarn model install``), then by someone with write access to the state
directory who drops it into the registry and points ``ACTIVE`` at it.

What must hold: both are refused naming the key and its limited rights, both are
in the audit log, and the agent keeps scoring with its active model: windows keep
coming, and a breach of that model's level still opens a model alert.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from edge.core.audit import verify
from edge.models.signing import key_id, load_private_key, load_public_key, sign_bundle
from tests.agentkit import Client, wait_until
from tests.bundlefactory import make_bundle
from tests.conftest import REPO, Broker
from tests.faults.conftest import T0, Publisher, agent_process_config, merge, report

RIGHTS = "is a site key: it may sign only site parameters of a centrally signed template"


def forewarn(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_site_signed_model_is_refused_and_the_active_model_keeps_scoring(
        tmp_path: Path, mosquitto: Broker, bundle: tuple[Path, Path],
        agent_process: Any) -> None:
    state = tmp_path / "state"
    state.mkdir()
    r = forewarn("keys", "generate", "--site", "--state-dir", state)
    assert r.returncode == 0, r.stderr
    site_pub = state / "keys/site.pub"
    site_id = key_id(load_public_key(site_pub))
    v1, pub = bundle
    cfg = merge(agent_process_config(state, v1, pub, mosquitto.port), {"bundle": {
        "name": "test-model", "site_keys": [str(site_pub)], "registry_poll_s": 0.2}})
    agent = agent_process(cfg)
    watcher = Client(mosquitto.port, ["forewarn/site1/alerts/#"])
    agent.start()
    publisher = Publisher(mosquitto.port, "site-key-pub")
    evil, _ = make_bundle(tmp_path / "evil", signals=["temp", "vib"], window=4, version="2",
                          warning=1e9, key_dir=tmp_path / "models/keys")
    sign_bundle(evil, load_private_key(state / "keys/site.key"), role="site")
    slot = 0

    def send(n: int, temp: float) -> None:
        nonlocal slot
        for _ in range(n):
            publisher.reading("p1", float(T0 + slot), temp)
            slot += 1
            time.sleep(0.01)
        assert publisher.wait_all_acked(30) == 0

    def scored() -> float:
        return agent.metrics().get("forewarn_windows_scored_total", 0.0)

    try:
        wait_until(agent.up, timeout=30, what="agent up and connected")
        send(10, 10.0)
        wait_until(lambda: scored() >= 6, timeout=30, what="windows scored by test-model/1")
        # 1. the front door
        install = forewarn("model", "install", "--config", agent.config_path, evil)
        # 2. the back door: files dropped into the registry, ACTIVE pointed at them
        dest = state / "models/test-model/2"
        shutil.copytree(evil, dest)
        (state / "models/test-model/ACTIVE").write_text("2\n")
        wait_until(lambda: "not switching to test-model/2" in agent.log_text(), timeout=30,
                   what="the agent refusing the dropped-in version")
        before = scored()
        send(8, 10.0)
        wait_until(lambda: scored() >= before + 8, timeout=30,
                   what="windows still scored after the refusals")
        send(6, 100.0)  # above test-model/1's warning level of 50; v2 would say nothing
        alert = wait_until(
            lambda: (s := watcher.last_json("forewarn/site1/alerts/p1")) and
            s.get("kind") == "model" and s.get("state") == "open" and s, timeout=30,
            what="a model alert from the active model")
        info = {k: v for k, v in agent.metrics().items() if k.startswith("forewarn_model_info")}
        final = scored()
    finally:
        publisher.close()
        watcher.close()
        assert agent.stop() == 0, agent.log_text()[-3000:]
    audit = [json.loads(x) for x in (state / "audit.jsonl").read_text().splitlines()]
    refusals = [(e["action"], e["details"]["error"]) for e in audit
                if e["details"].get("result") == "refused"]
    report("site key", injected="full bundle signed by the site key: CLI install, then "
           "dropped into the registry with ACTIVE=2",
           cli_exit=install.returncode, refusals=[a for a, _ in refusals],
           alert_model=alert["model"], windows_scored=final,
           windows_after_refusals=final - before)
    assert install.returncode == 2 and f"key {site_id} {RIGHTS}" in install.stderr, \
        install.stderr
    assert [a for a, _ in refusals] == ["model.install", "model.activate"], refusals
    assert all(f"key {site_id} {RIGHTS}" in err for _, err in refusals), refusals
    assert verify(state / "audit.jsonl").ok
    assert alert["model"] == "test-model/1"
    assert any('version="1"' in k for k in info), info
