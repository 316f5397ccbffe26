"""Drift injected into a live stream -> the drift alarm -> `forewarn retrain --if-needed`
-> the candidate passes the gate -> the registry's CANDIDATE, every step audited.

A real agent (in-process) scores SKAB's anomaly-free run streamed through a real
Mosquitto as JSON readings, with timestamps moved to the last hour. After 720 rows
the Accelerometer1RMS sensor reads 0.005 g high (about two standard deviations, a
bias a sensor picks up): the score's distribution leaves the bundle's reference, the
drift monitor's 2-of-3 rule alarms from the fourth interval on, and the agent
records the run in drift-state.json. No alert opens (the score stays below its
warning level), so the drifted rows are normal data and the candidate learns them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge.app import Agent
from edge.core.audit import verify
from edge.core.config import load_config
from edge.drift.state import STATE_FILE, read_state
from edge.history import history_root
from edge.models.bundle import read_manifest
from edge.models.registry import Registry
from tests import retrainkit as kit
from tests.agentkit import Client, wait_until
from tests.conftest import Broker
from trainer.localhistory import newest_ts
from trainer.skab import load_anomaly_free

ROWS = range(1000, 3000)  # inside the active's own training rows: no drift before the bias
BIAS_AT = 720  # rows: two drift intervals of 360 windows
BIAS = 0.005  # g, on Accelerometer1RMS
ASSET = "bench-1"


def _toml(state: Path, bundle: Path, trusted: Path, key: Path, port: int) -> str:
    return kit.drift_agent_toml(state, bundle, trusted, key, port, client_id="agent-drift")


def _publish(c: Client, names: list[str], ts: list[float], rows: list[list[float]]) -> None:
    for t, row in zip(ts, rows, strict=True):
        c.publish(f"forewarn/site1/{ASSET}", {"ts": t, "values": dict(zip(names, row,
                                                                            strict=True))})


def test_injected_drift_triggers_a_retrain_whose_candidate_passes_the_gate(
        tmp_path: Path, mosquitto: Broker) -> None:
    skab = kit.skab_root()
    bundle, central_pub = kit.train_active(tmp_path / "central", skab)
    trusted, key = kit.site_keys(tmp_path / "keys", central_pub)
    state = tmp_path / "state"
    config = tmp_path / "agent.toml"
    config.write_text(_toml(state, bundle, trusted, key, mosquitto.port))
    names = read_manifest(bundle / "manifest.json").signal_names
    af = load_anomaly_free(skab)
    values = af.select(names)[:, ROWS.start:ROWS.stop].copy()
    values[names.index("Accelerometer1RMS"), BIAS_AT:] += BIAS
    ts = (af.ts[ROWS.start:ROWS.stop] - af.ts[ROWS.start] + time.time() - 3600).tolist()
    rows = values.T.tolist()
    drift_file = state / STATE_FILE

    agent = Agent(load_config(config))
    agent.start()
    pub = Client(mosquitto.port)
    try:
        wait_until(agent.conn.connected.is_set, what="agent connected")
        # Before the bias: two intervals close without an alarm, and nothing is due.
        _publish(pub, names, ts[:BIAS_AT + 40], rows[:BIAS_AT + 40])
        wait_until(lambda: (s := read_state(drift_file)) is not None and s.intervals >= 2,
                   60, "two drift intervals")
        st = read_state(drift_file)
        assert st is not None and not st.alarm and st.model == "skab-pca/" + bundle.name
        r = kit.retrain("--config", str(config), "--if-needed")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "drift: no" in r.stdout and "no trigger fired" in r.stdout

        _publish(pub, names, ts[BIAS_AT + 40:], rows[BIAS_AT + 40:])
        wait_until(lambda: (s := read_state(drift_file)) is not None and s.alarm
                   and s.alarm_for_s >= 360, 60, "the drift alarm on for 6 minutes of data")
        wait_until(lambda: newest_ts(history_root(state)) == ts[-1], 30,
                   "every reading in the history")
        st = read_state(drift_file)
        assert st is not None and st.alarm_intervals >= 2 and st.intervals >= 5

        r = kit.retrain("--config", str(config), "--if-needed", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "drift: FIRED" in r.stdout and "trigger fired: drift" in r.stdout
        fig = kit.figures(r)
        assert fig["accepted"] is True
        a, c = fig["active"], fig["candidate"]
        print("gate", a, c, fig["training_rows"], fig["training_windows"])
        assert a["windows"] == c["windows"] > 250 and a["faults"] == 0
        assert c["false_alarm_rate"] <= a["false_alarm_rate"]
        assert fig["training_rows"]["unjudged"] == 0 and fig["training_windows"] > 1000

        reg = Registry(state / "models", [trusted])
        version = fig["candidate_model"].split("/")[1]
        wait_until(lambda: reg.pointers("skab-pca").candidate == version, 5, "candidate")
        assert reg.pointers("skab-pca").active == bundle.name
    finally:
        pub.close()
        agent.stop()
    log = kit.audit_actions(state / "audit.jsonl")
    ours = [e for e in log if e["actor"] == "retrain"]
    assert [e["action"] for e in ours] == ["retrain.started", "retrain.gate", "model.install",
                                           "model.candidate"]
    assert ours[0]["details"]["trigger"].startswith("drift (drift alarm on for")
    assert ours[1]["details"]["result"] == "accepted"
    assert ours[3]["details"]["version"] == version
    assert verify(state / "audit.jsonl").ok


@pytest.mark.parametrize("hours", [1.0])
def test_the_drift_trigger_waits_for_its_duration(tmp_path: Path, hours: float) -> None:
    """The same alarm, shorter than retrain.drift_alarm_hours, does not fire."""
    from edge.drift.state import DriftState, write_state
    from trainer.triggers import drift

    s = DriftState.start("m/1")
    for i in range(4):
        s = s.update(alarm=i >= 1, first_ts=i * 360.0, last_ts=i * 360.0 + 359,
                     closed_at=float(i), over=("score",))
    write_state(tmp_path / STATE_FILE, s)
    t = drift(tmp_path, "m/1", hours)
    assert not t.fired and "on for 0.30 h" in t.detail
    assert drift(tmp_path, "m/1", 0.25).fired
    assert not drift(tmp_path, "m/2", 0.25).fired  # another model's alarm
