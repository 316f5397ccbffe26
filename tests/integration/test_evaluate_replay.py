"""`forewarn evaluate`'s bulk replay against the agent's reading-by-reading path.

The fast path (block-wise ``add_series``, pooled onnxruntime calls, a RuleMachine
that skips idle stretches) must give the same windows, scores and alerts as the
agent does when every reading arrives on its own through ``add_point``,
``Scorer.score`` and ``RuleMachine.update``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.alerts.rules import RuleMachine, RuleSpec
from edge.models.bundle import load_bundle
from edge.models.infer import Scorer
from edge.scoring.window import ReadyWindow, WindowSet
from tests.bundlefactory import make_bundle
from tests.conftest import Broker
from trainer.calibrate import run_rules
from trainer.evaluate import (
    HOLDOUT_SPLITS,
    Series,
    holdout_folds,
    replay,
    replay_window_set,
    rule_trace,
    window_series,
)

AGENT_LATENESS = 5  # edge.core.config's default max_lateness_slots


def _series(rng: np.random.Generator, n: int, signals: int) -> tuple[np.ndarray, np.ndarray]:
    """Time-ordered rows with NaN and inf readings, gaps within the hold, gaps up to a
    window (6 slots) and beyond, a lone row between two long gaps, a duplicate row."""
    slots = np.arange(n, dtype=np.float64)
    keep = np.ones(n, dtype=bool)
    keep[40:42] = False  # within the hold
    keep[60:65] = False  # a step of exactly one window
    keep[90:97] = False  # longer than a window
    keep[150:170] = keep[171:185] = False  # row 170 alone between two long gaps
    keep[rng.choice(n, 6, replace=False)] = False
    values = rng.normal(10.0, 3.0, (signals, n))
    values[rng.random((signals, n)) < 0.02] = np.nan
    values[1, 230] = np.inf
    values[-1, 170] = np.nan  # the lone row misses a reading: held, as in the agent
    # Bursts that breach the warning level so alerts open, escalate and clear.
    for lo in (120, 200, 330):
        values[0, lo:lo + 15] += 25.0
    idx = np.flatnonzero(keep)
    dup = int(np.flatnonzero(np.isfinite(values[:, idx]).all(axis=0))[50])
    idx = np.insert(idx, dup + 1, idx[dup])  # same slot twice: the second is late
    return 1e9 + slots[idx] * 2.0, values[:, idx]


def _per_reading(ws: WindowSet, asset: str, ts: np.ndarray, values: np.ndarray,
                 ) -> list[ReadyWindow]:
    """The agent's path: every finite reading on its own through ``add_point``."""
    for j in range(len(ts)):
        for si, s in enumerate(ws.signals):
            if np.isfinite(values[si, j]):  # the agent's decoder drops NaN and inf
                ws.add_point(asset, s, float(ts[j]), float(values[si, j]))
    # One reading a lateness bound after the last row closes every row, nothing after it.
    ws.add_point(asset, ws.signals[0], float(ts[-1]) + (ws.max_lateness + 1) * ws.period, 0.0)
    return ws.drain()


@pytest.mark.parametrize(("hop", "hold"), [(1, 2), (3, 2), (1, 30)])
def test_bulk_windows_equal_reading_by_reading(tmp_path: Path, hop: int, hold: int) -> None:
    signals = ["a", "b", "c"]
    path, pub = make_bundle(tmp_path, signals=signals, window=6, hop=hop, period=2.0,
                            max_hold=hold)
    m = load_bundle(path, [pub]).manifest
    ts, values = _series(np.random.default_rng(hop), 400, len(signals))
    slow = _per_reading(WindowSet(signals, period=2.0, window=6, hop=hop, max_hold=hold,
                                  max_lateness=AGENT_LATENESS), "m1", ts, values)
    for rows in (len(ts), 50):  # one block, and several blocks (lateness bound 50)
        ws = replay_window_set(m, rows)
        end_ts, wins = window_series(ws, "m1", ts, values)
        assert end_ts.tolist() == [w.end_ts for w in slow]
        np.testing.assert_array_equal(wins, np.stack([w.values for w in slow]))
    assert len(slow) > 300 // hop  # the gaps cost some windows, not most


def test_replay_gives_the_agents_scores_and_alerts(tmp_path: Path) -> None:
    signals = ["a", "b"]
    path, pub = make_bundle(tmp_path, signals=signals, window=5, hop=1, period=2.0,
                            warning=20.0, critical=28.0, max_hold=2)
    bundle = load_bundle(path, [pub])
    spec = replace(RuleSpec.from_manifest(bundle.manifest), k=2, n=3, clear_after=2,
                   cooldown_s=20.0)
    scorer = Scorer(bundle)
    rng = np.random.default_rng(7)
    assets = [Series(f"m{i}", *_series(rng, 300 + 50 * i, len(signals))) for i in range(4)]
    # pool=100: windows of several assets share calls and some pools split assets' runs.
    fast = list(replay(bundle, scorer, spec, assets, pool=100))
    assert [r.asset for r in fast] == [s.asset for s in assets]
    opened_total = 0
    for s, r in zip(assets, fast, strict=True):
        ws = WindowSet(signals, period=2.0, window=5, hop=1, max_hold=2,
                       max_lateness=AGENT_LATENESS)
        scored = scorer.score(_per_reading(ws, s.asset, s.ts, s.values))
        machine = RuleMachine(spec)
        active, opened, kinds = [], [], set()
        for w in scored:
            for tr in machine.update(w.ts, w.score):
                kinds.add(tr.kind)
                if tr.kind == "opened":
                    opened.append(tr.ts)
            active.append(machine.active)
        assert r.win_ts.tolist() == [w.ts for w in scored]
        np.testing.assert_array_equal(r.scores, [w.score for w in scored])
        assert r.active.tolist() == active and r.opened == opened
        assert {"opened", "escalated", "cleared"} <= kinds
        opened_total += len(opened)
    assert opened_total >= 8


@pytest.mark.parametrize("direction", ["above", "below"])
def test_rule_trace_skipping_matches_every_update(direction: str) -> None:
    rng = np.random.default_rng(3)
    sign = 1.0 if direction == "above" else -1.0
    for case in range(60):
        k = int(rng.integers(1, 5))
        n = k + int(rng.integers(0, 5))
        spec = RuleSpec(warning=sign * 1.0, critical=sign * 2.0 if case % 2 else None,
                        reset=sign * 0.5 if case % 3 == 0 else None, direction=direction,
                        k=k, n=n, clear_after=int(rng.integers(1, 6)),
                        cooldown_s=float(rng.choice([0.0, 5.0, 40.0])))
        size = int(rng.integers(1, 600))
        scores = sign * np.where(rng.random(size) < 0.1, rng.normal(2.0, 1.0, size),
                                 rng.normal(0.0, 0.6, size))
        scores[rng.random(size) < 0.03] = np.nan
        scores[rng.random(size) < 0.01] = np.inf
        ts = np.cumsum(rng.integers(1, 3, size)).astype(np.float64)
        want, got = run_rules(spec, ts, scores), rule_trace(spec, ts, scores)
        assert got.active.tolist() == want.active.tolist(), case
        assert got.opened == want.opened, case


def test_holdout_folds_are_fixed_disjoint_and_both_present() -> None:
    names = ([f"valve1/{i}" for i in range(16)] + [f"valve2/{i}" for i in range(4)]
             + [f"other/{i}" for i in range(9, 23)])
    for split in HOLDOUT_SPLITS:
        a, b = holdout_folds(names, split)
        assert (a, b) == holdout_folds(list(names), split)
        assert a and b and not set(a) & set(b)
        assert sorted(a + b) == list(range(len(names)))
    a, b = holdout_folds(names, "group")
    assert {names[i].split("/")[0] for i in a} == {"valve1"}
    assert {names[i].split("/")[0] for i in b} == {"valve2", "other"}
    a, b = holdout_folds(names, "alternate")
    assert abs(len(a) - len(b)) <= 1
    with pytest.raises(ValueError, match="empty fold"):
        holdout_folds(["valve1/1", "valve1/2"], "group")
    with pytest.raises(ValueError, match="expected one of"):
        holdout_folds(names, "random")


def test_replay_applies_the_agents_range_rule(tmp_path: Path) -> None:
    """Impossible values left out and readings past the limit clipped, as the agent's
    Pipeline does (the manifest asks for clipping): same windows and scores."""
    import queue

    from edge.core.metrics import Metrics
    from edge.ingest.decode import DecodeResult
    from edge.ingest.message import Message
    from edge.ingest.readings import Reading
    from edge.scoring.pipeline import Pipeline
    from edge.scoring.ranges import bounds_of

    signals = ["a", "b"]
    path, pub = make_bundle(tmp_path, signals=signals, window=5, hop=1, period=2.0,
                            warning=20.0, max_hold=2,
                            training={"a": (5.0, 15.0), "b": (5.0, 15.0)},
                            plausible={"a": (-100.0, 100.0)},
                            limits={"margin": 0.1, "clip": True})
    bundle = load_bundle(path, [pub])
    m, scorer = bundle.manifest, Scorer(bundle)
    ts, values = _series(np.random.default_rng(11), 300, len(signals))
    values[0, 50:60] = 60.0  # outside training: clipped to 16 for the model
    values[0, 100] = 500.0  # impossible: a gap the hold rule bridges
    values[0, 200:203] = -300.0  # impossible, longer than the hold
    fast = next(iter(replay(bundle, scorer, RuleSpec.from_manifest(m), [Series("m1", ts,
                                                                                values)])))

    got: list[tuple[float, float]] = []

    class Sink:
        def on_scores(self, windows: list) -> None:  # type: ignore[type-arg]
            got.extend((w.ts, w.score) for w in windows)

    rows = {float(t): j for j, t in enumerate(ts)}

    def decode(topic: str, payload: bytes, now: float) -> DecodeResult:
        if payload == b"tail":  # closes the last rows, as in _per_reading
            return DecodeResult([Reading("m1", "a", float(topic), 0.0)])
        j = rows[float(topic)]
        return DecodeResult([Reading("m1", s, float(ts[j]), float(values[i, j]))
                             for i, s in enumerate(signals) if np.isfinite(values[i, j])])

    p = Pipeline(queue.Queue(), decode, WindowSet(signals, period=2.0, window=5, hop=1,
                                                  max_hold=2, max_lateness=AGENT_LATENESS),
                 scorer, Metrics(), sinks=[Sink()], bounds=bounds_of(m.signals, m.limits),
                 max_future_skew_s=1e12)
    seen: set[float] = set()
    for t in ts.tolist():
        if t not in seen:  # the duplicate row is one message
            seen.add(t)
            p.process([Message(repr(t), b"row", t, 0, 0)])
    tail = float(ts[-1]) + (AGENT_LATENESS + 1) * 2.0
    p.process([Message(repr(tail), b"tail", tail, 0, 0)])
    assert fast.win_ts.tolist() == [t for t, _ in got]
    # Other batch sizes than the agent's: float32 sums may differ in the last bit.
    np.testing.assert_allclose(fast.scores, [s for _, s in got], rtol=1e-6, atol=0)
    clipped = [s for t, s in got if ts[50] + 8 <= t <= ts[59]]
    assert clipped and max(clipped) < 16.5  # the model saw 16, not 60
    assert p.metrics.readings_dropped.labels("implausible")._value.get() == 4


def _write_cmapss(root: Path, subset: str, test_cycles: tuple[int, ...]) -> Path:
    """A tiny directory in the NASA C-MAPSS text format (unit, cycle, 3 settings, 21
    sensors per row); FD003/FD004 are not shipped, so their argument path runs on this."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)

    def rows(cycles: tuple[int, ...]) -> str:
        out = []
        for unit, n in enumerate(cycles, start=1):
            for c in range(1, n + 1):
                vals = [f"{v:.4f}" for v in rng.normal(500.0, 5.0, 24)]
                out.append(" ".join([str(unit), str(c), *vals]))
        return "\n".join(out) + "\n"

    (root / f"train_{subset}.txt").write_text(rows((40, 35)))
    (root / f"test_{subset}.txt").write_text(rows(test_cycles))
    (root / f"RUL_{subset}.txt").write_text("".join(f"{10 * (i + 1)}\n"
                                                    for i in range(len(test_cycles))))
    return root


@pytest.mark.parametrize(("subset", "flag"), [("FD003", "--data"), ("FD004", "--data-root")])
def test_replay_plays_an_unshipped_subset_from_data(tmp_path: Path, mosquitto: Broker,
                                                    subset: str, flag: str) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    root = _write_cmapss(tmp_path / "cmapss", subset, (12, 8))
    got: list[tuple[str, dict[str, Any]]] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2)
    sub.on_message = lambda _c, _u, msg: got.append((msg.topic, json.loads(msg.payload)))
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe("forewarn/syn/#", qos=1)
    sub.loop_start()
    try:
        time.sleep(0.5)  # the subscription is in place before the first publish
        run = subprocess.run(
            [sys.executable, "-m", "edge.cli", "replay", "--subset", subset, flag, str(root),
             "--units", "all", "--speed", "0", "--port", str(mosquitto.port), "--site", "syn"],
            capture_output=True, text=True, timeout=120, check=False)
        assert run.returncode == 0, run.stderr
        assert "published 20 messages" in run.stdout
        deadline = time.monotonic() + 10
        while len(got) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert sorted({t for t, _ in got}) == ["forewarn/syn/engine-001", "forewarn/syn/engine-002"]
    assert len(got) == 20 and all(len(p["values"]) == 14 for _, p in got)
    # The old spelling still works and says it is deprecated; the new one says nothing.
    assert ("--data-root is deprecated" in run.stderr) == (flag == "--data-root")


def test_replay_of_an_unshipped_subset_without_data_says_so() -> None:
    run = subprocess.run([sys.executable, "-m", "edge.cli", "replay", "--subset", "FD003",
                          "--speed", "0"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert run.returncode == 2
    assert "FD003" in run.stderr and "give --data" in run.stderr, run.stderr
    assert "invalid choice" not in run.stderr


@pytest.mark.parametrize("hop", [1, 3])
def test_short_and_long_engines_end_on_the_trainers_last_window(tmp_path: Path,
                                                                hop: int) -> None:
    from trainer.cmapss import load_cmapss
    from trainer.evaluate import _padded
    from trainer.windows import last_window

    signals = ["s2", "s3", "s4"]
    path, pub = make_bundle(tmp_path, signals=signals, window=10, hop=hop, period=1.0)
    m = load_bundle(path, [pub]).manifest
    data = load_cmapss("FD003", _write_cmapss(tmp_path / "c", "FD003", (4, 10, 17, 23)))
    for u in data.test:
        s = _padded(u.unit, u.signals(signals), m.window, m.hop, m.sample_period_s)
        ws = replay_window_set(m, len(s.ts))
        end_ts, wins = window_series(ws, s.asset, s.ts, s.values)
        assert end_ts[-1] == s.ts[-1], u.unit
        np.testing.assert_array_equal(wins[-1], last_window(u.signals(signals), 10)
                                      .astype(wins.dtype))
