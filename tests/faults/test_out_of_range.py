"""Scenario 7: readings outside their ranges, through a real Mosquitto and the real agent.

* The plant engineer's probe: one C-MAPSS FD001 test engine replayed twice, once
  as recorded and once with s4 x 1.3 for its last 60 cycles (far above its
  training range). Nothing may be lost: every reading is received and every
  window scored; the modified copy must end with a limit alert (value, unit,
  bound) visible through the API and not look NORMAL on the page's asset list.
* A physically impossible value inside a batch of samples is a sensor fault: it
  is dead-lettered, counted as ``readings_dropped{reason="implausible"}``, raises
  a data-quality alert, and its batch-mates are kept (same windows as a clean
  copy of the stream).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from edge.models.bundle import load_bundle
from tests.agentkit import wait_until
from tests.bundlefactory import make_bundle
from tests.conftest import Broker, TrainedBundle
from tests.faults.conftest import T0, Publisher, agent_process_config, report
from trainer.cmapss import load_cmapss

UNIT = 34  # FD001 test engine 34: 203 cycles, 7 cycles of life left at its end
HOT_CYCLES = 60
FACTOR = 1.3


def _alerts(api: str, asset: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = httpx.get(f"{api}/api/alerts", params={"asset": asset},
                                            timeout=5).json()["items"]
    return items


def _asset_state(api: str, asset: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = httpx.get(f"{api}/api/assets", timeout=5).json()["items"]
    return next(r for r in rows if r["asset"] == asset)


def test_a_value_beyond_training_alarms_and_nothing_is_lost(
        tmp_path: Path, mosquitto: Broker, cmapss_bundle: TrainedBundle,
        agent_process: Any) -> None:
    m = load_bundle(cmapss_bundle.path, [cmapss_bundle.public_key]).manifest
    s4 = next(s for s in m.signals if s.name == "s4")
    assert s4.train_max is not None and s4.train_min is not None
    signals = m.signal_names
    series = load_cmapss("FD001").test[UNIT - 1].signals(signals)
    n = series.shape[1]
    hot = series.copy()
    hot[signals.index("s4"), n - HOT_CYCLES:] *= FACTOR
    limit = s4.train_max + m.limits.margin * (s4.train_max - s4.train_min)
    assert (hot[signals.index("s4"), n - HOT_CYCLES:] > limit).all()  # the probe's premise

    agent = agent_process(agent_process_config(tmp_path / "state", cmapss_bundle.path,
                                               cmapss_bundle.public_key, mosquitto.port))
    agent.start()
    wait_until(agent.up, timeout=30, what="agent API up")
    wait_until(lambda: "subscribed to " in agent.log_text(), timeout=30,
               what="agent connected")
    pub = Publisher(mosquitto.port, "probe-pub")
    assets = {"engine-034": series, "engine-034-s4hot": hot}
    for i in range(n):  # both copies in lockstep, one message per cycle each
        for asset, rows in assets.items():
            pub.send(f"forewarn/site1/{asset}",
                     {"ts": T0 + i, "values": dict(zip(signals, rows[:, i].tolist(),
                                                       strict=True))})
    assert pub.wait_all_acked() == 0
    sent = len(assets) * n * len(signals)
    windows = len(assets) * (n - m.window + 1)
    wait_until(lambda: agent.metrics().get("forewarn_windows_scored_total", 0) >= windows,
               timeout=60, what=f"{windows} windows scored")
    wait_until(lambda: any(a["kind"] == "limit" for a in _alerts(agent.api, "engine-034-s4hot")),
               timeout=15, what="limit alert")
    met = agent.metrics()
    received = met["forewarn_readings_received_total"]
    scored = met["forewarn_windows_scored_total"]
    dropped = sum(v for k, v in met.items() if k.startswith("forewarn_readings_dropped_total"))
    skipped = sum(v for k, v in met.items() if k.startswith("forewarn_windows_skipped_total"))
    outside = met['forewarn_readings_outside_training_total{bound="high"}']
    hot_alerts = _alerts(agent.api, "engine-034-s4hot")
    plain_alerts = _alerts(agent.api, "engine-034")
    limit_alert = next(a for a in hot_alerts if a["kind"] == "limit")
    page_row = _asset_state(agent.api, "engine-034-s4hot")
    report("out-of-range", injected=f"s4 x{FACTOR} for the last {HOT_CYCLES} of {n} cycles",
           sent=sent, received=int(received), dropped=int(dropped),
           windows_expected=windows, scored=int(scored), skipped=int(skipped),
           outside_training=int(outside),
           limit_alert=f"{limit_alert['condition']} {limit_alert['detail']['bound']} "
                       f"{limit_alert['detail']['limit']:.1f} worst "
                       f"{limit_alert['detail']['worst']:.1f} {limit_alert['detail']['unit']}",
           hot_copy=sorted(f"{a['kind']}:{a['severity']}" for a in hot_alerts),
           plain_copy=sorted(f"{a['kind']}:{a['severity']}" for a in plain_alerts))

    assert received == sent and dropped == 0  # nothing lost
    assert scored == windows and skipped == 0
    assert outside == HOT_CYCLES
    # One limit alert for the asset and signal, not one per reading.
    assert [a["condition"] for a in hot_alerts if a["kind"] == "limit"] == ["limit:s4"]
    d = limit_alert["detail"]
    assert d["signal"] == "s4" and d["bound"] == "training_max" and d["unit"] == s4.unit
    assert abs(d["limit"] - limit) < 1e-9
    assert d["worst"] == max(hot[signals.index("s4"), n - HOT_CYCLES:].tolist())
    assert d["value"] == hot[signals.index("s4"), -1]
    assert limit_alert["state"] == "open" and limit_alert["top_signals"] == ["s4"]
    assert page_row["state"] != "normal"
    # The unmodified copy goes to a critical model alert and has no limit alert.
    assert {(a["kind"], a["severity"]) for a in plain_alerts} == {("model", "critical")}


def test_an_impossible_value_is_a_sensor_fault_and_its_batch_mates_are_kept(
        tmp_path: Path, mosquitto: Broker, agent_process: Any) -> None:
    path, pub_key = make_bundle(tmp_path / "models", signals=["temp", "vib"], window=4,
                                warning=50.0, reset=40.0,
                                training={"temp": (0.0, 100.0), "vib": (0.0, 2.0)},
                                plausible={"temp": (-50.0, 500.0)})
    state = tmp_path / "state"
    agent = agent_process(agent_process_config(state, path, pub_key, mosquitto.port,
                                               alerts={"limits": {"clear_after": 3}},
                                               # chunks of one signal lead the other by 5
                                               ingest={"max_lateness_slots": 8}))
    agent.start()
    wait_until(agent.up, timeout=30, what="agent API up")
    wait_until(lambda: "subscribed to " in agent.log_text(), timeout=30,
               what="agent connected")
    pub = Publisher(mosquitto.port, "fault-pub")
    temp = [10.0 + (i % 3) for i in range(20)]
    faulty = list(temp)
    faulty[7] = 9999.0  # a broken thermocouple reads full scale
    # The dropped sample is no reading: its slot closes once the lateness bound passes
    # (as for a reading that never came), and the hold rule bridges it.
    for lo in range(0, 20, 5):
        for asset, values in (("press-clean", temp), ("press-fault", faulty)):
            pub.send(f"forewarn/site1/{asset}/temp",
                     {"t0": T0 + lo, "dt": 1.0, "values": values[lo:lo + 5]})
            pub.send(f"forewarn/site1/{asset}/vib",
                     {"t0": T0 + lo, "dt": 1.0, "values": [1.0] * 5})
    assert pub.wait_all_acked() == 0
    alert = wait_until(lambda: [a for a in _alerts(agent.api, "press-fault")
                                if a["kind"] == "sensor_fault"], timeout=15,
                       what="sensor-fault alert")[0]
    # Plausible readings afterwards: the fault clears itself after clear_after of them.
    for asset in ("press-clean", "press-fault"):
        pub.send(f"forewarn/site1/{asset}/temp", {"t0": T0 + 20, "dt": 1.0, "values": [11.0] * 5})
        pub.send(f"forewarn/site1/{asset}/vib", {"t0": T0 + 20, "dt": 1.0, "values": [1.0] * 5})
    assert pub.wait_all_acked() == 0
    wait_until(lambda: _alerts(agent.api, "press-fault")[0]["state"] == "resolved",
               timeout=15, what="sensor fault auto-cleared")
    windows = 2 * (25 - 4 + 1)  # both copies, 25 slots, window 4
    wait_until(lambda: agent.metrics().get("forewarn_windows_scored_total", 0) >= windows,
               timeout=15, what=f"{windows} windows scored")
    met = agent.metrics()
    last = {a: _asset_state(agent.api, a)["last_data_ts"] for a in ("press-clean", "press-fault")}
    letters = [json.loads(line) for line in
               (state / "dead-letter.jsonl").read_text().splitlines()]
    report("sensor-fault", injected="temp = 9999 (plausible [-50, 500]) in a batch of 5",
           received=int(met["forewarn_readings_received_total"]),
           implausible=int(met['forewarn_readings_dropped_total{reason="implausible"}']),
           dead_letters=len(letters), alert=alert["condition"],
           scored=int(met["forewarn_windows_scored_total"]), windows_expected=windows)

    assert met['forewarn_readings_dropped_total{reason="implausible"}'] == 1
    assert met["forewarn_readings_received_total"] == 2 * (40 + 10) - 1  # only the bad one
    assert [(x["reason"], x["topic"]) for x in letters] == [
        ("implausible", "forewarn/site1/press-fault/temp")]
    assert "press-fault/temp = 9999" in letters[0]["detail"]
    assert alert["condition"] == "sensor_fault:temp" and alert["detail"]["bound"] == "plausible"
    assert alert["detail"]["worst"] == 9999.0 and alert["detail"]["limit"] is None
    # The bad sample was a gap the hold rule bridged: every window of both copies scored.
    assert met["forewarn_windows_scored_total"] == windows
    assert sum(v for k, v in met.items() if k.startswith("forewarn_windows_skipped")) == 0
    assert last["press-fault"] == last["press-clean"] == T0 + 24
    assert not _alerts(agent.api, "press-clean")
