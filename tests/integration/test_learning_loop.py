"""The whole learning loop against real processes, one step after the other:

drift injected into a replayed stream -> the agent's drift alarm -> ``forewarn retrain
--if-needed`` (its own process) -> the replay gate accepts -> the registry's CANDIDATE
-> the running agent walks it through shadow and canary 5 / 20 / 50 % with short holds
-> promotion: the ACTIVE pointer, the scores and the drift monitor move to the new
version, and nothing is left to retrain. Every step is in the hash-chained audit log,
in order, by the actor that took it.

A real agent (in-process) on a real Mosquitto scores SKAB's anomaly-free run replayed
as JSON readings of asset ``bench-1``, timestamps moved to the last hour; after 720 rows
Accelerometer1RMS reads 0.005 g high (a sensor's bias, no model alert: the drifted rows
are normal data and the candidate learns them). While the candidate walks, the replay goes
on, drifted, for bench-1 and three more assets named so that each canary stage puts one
more of them on the candidate (sha256 of the model name and the asset id, as
``canary_assets`` draws them): bench-29 from 5 %, bench-12 from 20 %, bench-8 from 50 %;
bench-1 only at promotion. A stage passes only once its candidate group has scored
windows, so each stage really ran on the candidate.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from edge.app import Agent
from edge.core.audit import verify
from edge.core.config import load_config
from edge.drift.state import STATE_FILE, read_state
from edge.history import history_root
from edge.models.bundle import read_manifest
from edge.models.canary import canary_assets
from edge.models.registry import Registry
from edge.models.signing import key_id, load_public_key
from edge.models.walkstore import WALK_FILE
from tests import retrainkit as kit
from tests.agentkit import Client, ScoreLog, wait_until
from tests.conftest import Broker
from trainer.localhistory import newest_ts
from trainer.skab import load_anomaly_free

ROWS = range(1000, 3000)  # drift phase: inside the active's own training rows
WALK_ROWS = 1000  # rows 3000.. replayed while the candidate walks (their ts stay past)
BIAS_AT = 720  # rows: two drift intervals of 360 windows
BIAS = 0.005  # g, on Accelerometer1RMS
ASSET = "bench-1"
WALKERS = ["bench-1", "bench-29", "bench-12", "bench-8"]
MODEL = "skab-pca"
HOLD_S = 1.0
SHARES = (0.05, 0.2, 0.5)


def _toml(state: Path, bundle: Path, trusted: Path, key: Path, port: int) -> str:
    canary = ", ".join(f"{{share = {s}, hold_s = {HOLD_S}}}" for s in SHARES)
    return kit.drift_agent_toml(state, bundle, trusted, key, port, client_id="agent-loop",
                                bundle_extra=f"""rollout = "staged"
canary_min_windows = 5
[bundle.rollout_stages]
shadow_hold_s = {HOLD_S}
canary = [{canary}]""")


class Replay(threading.Thread):
    """The drifted replay goes on for every asset of WALKERS, one row each per 20 ms."""

    def __init__(self, port: int, names: list[str], ts: list[float],
                 rows: list[list[float]]) -> None:
        super().__init__(daemon=True)
        self.client = Client(port)
        self.names, self.ts, self.rows = names, ts, rows
        self.stop_event = threading.Event()

    def run(self) -> None:
        for t, row in zip(self.ts, self.rows, strict=True):
            if self.stop_event.is_set():
                return
            values = dict(zip(self.names, row, strict=True))
            for a in WALKERS:
                self.client.c.publish(f"forewarn/site1/{a}",
                                      json.dumps({"ts": t, "values": values}).encode(), qos=1)
            self.stop_event.wait(0.02)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)
        self.client.close()


def _publish(c: Client, names: list[str], ts: list[float], rows: list[list[float]]) -> None:
    for t, row in zip(ts, rows, strict=True):
        c.publish(f"forewarn/site1/{ASSET}", {"ts": t, "values": dict(zip(names, row,
                                                                            strict=True))})


def test_drift_retrains_gates_walks_every_stage_and_promotes_the_candidate(
        tmp_path: Path, mosquitto: Broker) -> None:
    # Each stage adds exactly one of the walk's assets; bench-1 stays on the active.
    on = [{a for a in WALKERS if canary_assets(a, s, MODEL)} for s in SHARES]
    assert on == [{"bench-29"}, {"bench-29", "bench-12"}, {"bench-29", "bench-12", "bench-8"}]

    skab = kit.skab_root()
    bundle, central_pub = kit.train_active(tmp_path / "central", skab)
    trusted, key = kit.site_keys(tmp_path / "keys", central_pub)
    state = tmp_path / "state"
    config = tmp_path / "agent.toml"
    config.write_text(_toml(state, bundle, trusted, key, mosquitto.port))
    names = read_manifest(bundle / "manifest.json").signal_names
    af = load_anomaly_free(skab)
    stop = ROWS.stop + WALK_ROWS
    values = af.select(names)[:, ROWS.start:stop].copy()
    values[names.index("Accelerometer1RMS"), BIAS_AT:] += BIAS
    ts = (af.ts[ROWS.start:stop] - af.ts[ROWS.start] + time.time() - 3600).tolist()
    assert ts[-1] < time.time() - 60  # the walk's replay never reaches the future
    rows = values.T.tolist()
    n = len(ROWS)
    drift_file = state / STATE_FILE
    old = f"{MODEL}/{bundle.name}"

    agent = Agent(load_config(config))
    rec = ScoreLog()
    agent.pipeline.sinks.append(rec)
    agent.start()
    pub = Client(mosquitto.port)
    replay: Replay | None = None
    reg = Registry(state / "models", [trusted])
    try:
        wait_until(agent.conn.connected.is_set, what="agent connected")
        _publish(pub, names, ts[:n], rows[:n])
        wait_until(lambda: (s := read_state(drift_file)) is not None and s.alarm
                   and s.alarm_for_s >= 360, 60, "the drift alarm on for 6 minutes of data")
        wait_until(lambda: newest_ts(history_root(state)) == ts[n - 1], 30,
                   "every reading in the history")
        st = read_state(drift_file)
        assert st is not None and st.model == old and st.alarm_intervals >= 2

        # The real command, in its own process, as the systemd timer runs it.
        r = kit.retrain("--config", str(config), "--if-needed", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "trigger fired: drift" in r.stdout
        fig = kit.figures(r)
        assert fig["accepted"] is True
        new = fig["candidate_model"]
        version = new.split("/")[1]
        assert version != bundle.name

        # The retrain's candidate is the running agent's: it walks the stages.
        walk_file = state / "models" / MODEL / WALK_FILE
        replay = Replay(mosquitto.port, names, ts[n:], rows[n:])
        replay.start()
        wait_until(lambda: reg.pointers(MODEL).active == version, 60,
                   "the candidate promoted by its walk")
        wait_until(lambda: agent.scorer.ident == new, 10, "the agent scoring with it")
        wait_until(lambda: {w.asset for _, w in rec.snapshot()[-200:] if w.model == new}
                   == set(WALKERS), 20, "every asset scored by the new version")
        # The drift monitor follows the new version, so its old alarm asks for nothing.
        wait_until(lambda: (s := read_state(drift_file)) is not None and s.model == new, 30,
                   "a drift interval of the new version")
        alerts, _ = agent.alert_store.query(limit=100)
    finally:
        if replay is not None:
            replay.stop()
        pub.close()
        agent.stop()
    assert reg.pointers(MODEL).candidate is None

    walk = json.loads(walk_file.read_text())
    assert (walk["version"], walk["status"]) == (version, "promoted")
    steps = [(e["event"], e["stage"], e["to"]) for e in walk["history"]]
    assert steps == [("started", "shadow", None), ("passed", "shadow", "canary-5"),
                     ("passed", "canary-5", "canary-20"), ("passed", "canary-20", "canary-50"),
                     ("promoted", "canary-50", "promoted")]
    starts = [e["ts"] for e in walk["history"]]
    for k in range(4):  # no stage passed before its hold had run
        assert starts[k + 1] - starts[k] >= HOLD_S - 0.02, f"stage {k}: {starts}"
    # Window by window: the candidate scored no asset before its stage put it there,
    # and every asset of a stage while it ran (shadow scores are never handed on).
    scored = rec.snapshot()
    for k, assets in enumerate([set(), *on]):
        before = {w.asset for t, w in scored if t < starts[k + 1] and w.model == new}
        during = {w.asset for t, w in scored if starts[k] < t < starts[k + 1]
                  and w.model == new}
        assert before <= assets and during == assets, (k, before, during)
    # From the first window bench-1 (never on the candidate) got from the new version,
    # the swap had happened: no window of the old model was handed on after it.
    first = next(i for i, (_, w) in enumerate(scored) if w.asset == ASSET and w.model == new)
    assert {w.model for _, w in scored[first:]} == {new}
    assert {w.model for _, w in scored if w.asset == ASSET and w.ts <= ts[n - 1]} == {old}
    assert np.isfinite([w.score for _, w in scored[first:]]).all()

    # No alert from either version (the canary judge compared their alert rates stage
    # by stage). The candidate learned from half an hour of a machine warming up; its
    # training ranges are that history's widened to the active's, so the warming
    # Thermocouple raises no limit alert the old version did not.
    old_sig = {x.name: x for x in read_manifest(bundle / "manifest.json").signals}
    for sig in read_manifest(state / "models" / MODEL / version / "manifest.json").signals:
        was = old_sig[sig.name]
        assert sig.train_min is not None and was.train_min is not None
        assert sig.train_max is not None and was.train_max is not None
        assert sig.train_min <= was.train_min and sig.train_max >= was.train_max, sig
    assert alerts == [], [(a.condition, a.model) for a in alerts]

    # Every step in the audit log, in order, by whom.
    log = kit.audit_actions(state / "audit.jsonl")
    start = next(i for i, e in enumerate(log) if e["action"] == "retrain.started")
    assert not [e for e in log[:start] if e["action"].startswith(("retrain.", "model.rollout."))]
    ent = log[start:]
    got = [(e["actor"], e["action"]) for e in ent]
    walk_steps = [("rollout", "model.rollout.passed")] * 3
    assert got[:3] == [("retrain", "retrain.started"), ("retrain", "retrain.gate"),
                       ("retrain", "model.install")]
    # The retrain's process writes the CANDIDATE pointer, then its audit entry; the
    # agent may see the pointer and audit the walk's start in between (two processes,
    # the agent reads pointers without the registry's lock): either order is true.
    assert sorted(got[3:5]) == [("agent", "model.rollout.started"),
                                ("retrain", "model.candidate")]
    assert got[5:] == [*walk_steps, ("rollout", "model.promote"),
                       ("rollout", "model.rollout.promoted"), ("agent", "model_activated")]
    by = {a: e["details"] for e in ent for a in [e["action"]] if a != "model.rollout.passed"}
    assert by["retrain.started"]["trigger"].startswith("drift (drift alarm on for")
    assert by["retrain.started"]["model"] == old
    assert (by["retrain.gate"]["result"], by["retrain.gate"]["candidate"]) == ("accepted", new)
    # Signed with the site's retrain key (the agent trusts it), not the central one.
    retrain_kid = key_id(load_public_key(key.with_suffix(".pub")))
    assert (by["model.install"]["name"], by["model.install"]["version"],
            by["model.install"]["signed_by"]) == (MODEL, version, retrain_kid)
    assert retrain_kid != key_id(load_public_key(central_pub))
    assert (by["model.candidate"]["version"], by["model.candidate"]["result"]) == (version, "ok")
    assert (by["model.rollout.started"]["version"], by["model.rollout.started"]["stage"]) \
        == (version, "shadow")
    passed = [e["details"] for e in ent if e["action"] == "model.rollout.passed"]
    assert [(d["stage"], d["to"], d["version"]) for d in passed] == [
        ("shadow", "canary-5", version), ("canary-5", "canary-20", version),
        ("canary-20", "canary-50", version)]
    assert by["model.promote"]["version"] == version
    assert (by["model.rollout.promoted"]["stage"], by["model.rollout.promoted"]["share"]) \
        == ("canary-50", 1.0)
    assert by["model_activated"]["model"] == new
    assert verify(state / "audit.jsonl").ok

    # The loop closes: the promoted model owes nothing to the old model's drift alarm.
    r = kit.retrain("--config", str(config), "--if-needed")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no trigger fired" in r.stdout

