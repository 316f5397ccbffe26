"""End to end: real C-MAPSS engines replayed through a real Mosquitto into the agent.

The agent must raise exactly the alerts that the same bundle and the same alert
rules give offline on the same windows, and those alerts must track the truth:
engines that are close to failure at the end of their record get an alert,
engines far from failure mostly do not (the model's real error is allowed for,
with bounds stated as fractions of counts from the data).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge.alerts.rules import RuleMachine, RuleSpec
from edge.app import Agent
from edge.core.config import AlertRuleConfig
from edge.models.bundle import load_bundle
from tests.agentkit import agent_config, wait_until
from tests.conftest import Broker, TrainedBundle
from trainer.cmapss import asset_name, load_cmapss
from trainer.replayer import replay
from trainer.windows import sliding_windows

UNITS = list(range(1, 101))


def offline_alerts(bundle: Path, pub: Path) -> tuple[set[str], int]:
    """Assets the rules open an alert for, scoring every window offline; and #windows."""
    b = load_bundle(bundle, [pub])
    m = b.manifest
    sess = ort.InferenceSession(b.model_bytes, providers=["CPUExecutionProvider"])
    spec = RuleSpec.from_manifest(m, AlertRuleConfig())
    data = load_cmapss("FD001")
    opened, n_windows = set(), 0
    for u in UNITS:
        series = data.test[u - 1].signals(m.signal_names).astype(np.float32)
        if series.shape[1] < m.window:
            continue
        wins = sliding_windows(series, m.window, m.hop)
        scores = sess.run([m.output.score_output], {m.input_name: wins})[0].ravel()
        n_windows += len(scores)
        machine = RuleMachine(spec)
        for t, s in enumerate(scores.tolist()):
            if any(tr.kind == "opened" for tr in machine.update(float(t), s)):
                opened.add(asset_name(u))
    return opened, n_windows


def test_replayed_engines_raise_the_alerts_the_bundle_predicts_and_track_truth(
        tmp_path: Path, mosquitto: Broker, cmapss_bundle: TrainedBundle) -> None:
    expected, n_windows = offline_alerts(cmapss_bundle.path, cmapss_bundle.public_key)
    cfg = agent_config(tmp_path / "state", cmapss_bundle.path, cmapss_bundle.public_key,
                       mosquitto.port, site="e2e")
    agent = Agent(cfg)
    agent.start()
    try:
        wait_until(agent.conn.connected.is_set, what="agent connected")
        data = load_cmapss("FD001")
        res = replay(data, UNITS, host="127.0.0.1", port=mosquitto.port, site="e2e", speed=0)
        wait_until(lambda: agent.pipeline.scored_total >= n_windows, timeout=60,
                   what=f"{n_windows} windows scored")
        assert agent.pipeline.scored_total == n_windows  # each window once, none lost
        assert agent.metrics.registry.get_sample_value(
            "forewarn_readings_received_total") == res.readings
        alerted = {a.asset for a in agent.alert_store.query(limit=1000)[0]}
    finally:
        agent.stop()

    # Same bundle, same rules, same windows: the agent agrees with the offline replay.
    assert alerted == expected

    # And the alerts mean something on the real data.
    truth = {asset_name(u): int(data.test_rul[u - 1]) for u in UNITS}
    failing = {a for a, rul in truth.items() if rul < 30}
    healthy = {a for a, rul in truth.items() if rul > 60}
    caught = len(failing & alerted) / len(failing)
    false_alarms = len(healthy & alerted) / len(healthy)
    print(f"\nfailing within 30 cycles: {len(failing)}, alerted {len(failing & alerted)}; "
          f"healthy (>60 cycles left): {len(healthy)}, alerted {len(healthy & alerted)}")
    assert len(failing) >= 10 and len(healthy) >= 30  # the data set really has both kinds
    assert caught >= 0.8
    assert false_alarms <= 0.1
