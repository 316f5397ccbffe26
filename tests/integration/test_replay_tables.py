"""`forewarn replay --table` into a real Mosquitto: every payload format, CSV and
Parquet, several assets; a subscriber decodes what arrived with the agent's own
decoders and finds exactly the table's values, in exactly the messages the summary
counts. Also the file `forewarn export` writes, a training config's table, the
C-MAPSS preset through a config, and bad tables refused with their error text."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.ingest.decode import decode_json
from edge.ingest.readings import Reading, Series
from edge.ingest.sparkplug import SparkplugDecoder
from edge.ingest.topics import TopicMap
from tests.conftest import Broker

REPO = Path(__file__).resolve().parents[2]
T0 = 1_760_000_000
SITE = "rt"
Row = tuple[str, str, float, float]  # asset, signal, ts, value


def _cli(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "edge.cli", "replay", *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def _plant() -> dict[str, list[object]]:
    """Three assets: p1 with a missing b, p2 with a gap in time, p3 without any c."""
    cols: dict[str, list[object]] = {"ts": [], "asset": [], "a": [], "b": [], "c": []}
    times = {"p1": range(20), "p2": [*range(10), *range(15, 25)], "p3": range(5)}
    for k, (asset, steps) in enumerate(times.items()):
        for i in steps:
            cols["ts"].append(float(T0 + i))
            cols["asset"].append(asset)
            cols["a"].append(round(10 * k + i * 0.25, 2))
            cols["b"].append(None if (asset, i) == ("p1", 5) else round(-i * 1.5, 2))
            cols["c"].append(None if asset == "p3" else float(i % 3))
    return cols


def _expected(cols: dict[str, list[object]], shift: float = 0.0) -> list[Row]:
    out = []
    for i, asset in enumerate(cols["asset"]):
        for s in ("a", "b", "c"):
            v = cols[s][i]
            if v is not None:
                out.append((str(asset), s, float(cols["ts"][i]) + shift, float(v)))  # type: ignore[arg-type]
    return sorted(out)


def _write(tmp: Path, kind: str) -> Path:
    cols = _plant()
    if kind == "parquet":
        path = tmp / "plant.parquet"
        pq.write_table(pa.table(cols), path)
        return path
    path = tmp / "plant.csv"
    lines = ["ts,asset,a,b,c"] + [",".join("" if cols[c][i] is None else str(cols[c][i])
                                           for c in cols) for i in range(len(cols["ts"]))]
    path.write_text("\n".join(lines) + "\n")
    return path


class Subscriber:
    """Collects every message under forewarn/<site>/# and spBv1.0/#."""

    def __init__(self, broker: Broker) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.on_message = self._on_message
        ready = threading.Event()
        self.c.on_subscribe = lambda *_a: ready.set()
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        self.c.subscribe([(f"forewarn/{SITE}/#", 1), ("spBv1.0/#", 1)])
        assert ready.wait(10), "no SUBACK"

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.got.append((msg.topic, bytes(msg.payload)))

    def take(self, n: int, timeout: float = 30) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.got) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # anything beyond n would have arrived by now
        with self.lock:
            return list(self.got)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def sub(mosquitto: Broker) -> Iterator[Subscriber]:
    s = Subscriber(mosquitto)
    yield s
    s.close()


def _decode(msgs: list[tuple[str, bytes]], tmp: Path) -> tuple[list[Row], SparkplugDecoder]:
    topics = TopicMap(["forewarn/{site}/{asset}/{signal}", "forewarn/{site}/{asset}"], SITE)
    spb = SparkplugDecoder(tmp / "spb.json", lambda _g, _n: None, persist_interval_s=3600)
    rows: list[Row] = []
    now = time.time()
    for topic, payload in msgs:
        if topic.startswith("spBv1.0/"):
            res = spb.decode(topic, payload, now)
        else:
            match = topics.match(topic)
            assert match is not None, topic
            res = decode_json(match, payload, now, 1 << 20)
        assert res.dropped is None and res.stamped_on_receipt == 0, (topic, res)
        for it in res.items:
            if isinstance(it, Reading):
                rows.append((it.asset, it.signal, it.ts, it.value))
            else:
                assert isinstance(it, Series)
                rows += [(it.asset, it.signal, it.t0 + i * it.dt, float(v))
                         for i, v in enumerate(it.values)]
    return sorted(rows), spb


def _published(stdout: str) -> tuple[int, int]:
    m = re.search(r"published (\d+) messages \((\d+) readings\) for (\d+) assets", stdout)
    assert m is not None, stdout
    return int(m[1]), int(m[2])


@pytest.mark.parametrize("kind", ["csv", "parquet"])
@pytest.mark.parametrize("fmt", ["single", "signal", "batched", "sparkplug"])
def test_every_format_delivers_exactly_the_table(tmp_path: Path, mosquitto: Broker,
                                                 sub: Subscriber, fmt: str, kind: str) -> None:
    path = _write(tmp_path, kind)
    run = _cli("--table", path, "--asset-column", "asset", "--format", fmt, "--batch", "4",
               "--speed", "0", "--time", "keep", "--site", SITE, "--port", mosquitto.port)
    assert run.returncode == 0, run.stderr
    messages, readings = _published(run.stdout)
    got = sub.take(messages)
    assert len(got) == messages  # exactly what was sent, nothing lost or extra
    rows, spb = _decode(got, tmp_path)
    want = _expected(_plant())
    assert len(want) == readings == 20 * 3 - 1 + 20 * 3 + 5 * 2
    assert "6 missing values not sent" in run.stdout
    if fmt == "sparkplug":
        # the agent names a device <node>.<device>; the replay ended with the node's DEATH
        want = sorted((f"replay.{a}", s, t, v) for a, s, t, v in want)
        assert {t.split("/")[2] for t, _ in got} == {"NBIRTH", "DBIRTH", "DDATA", "NDEATH"}
        assert spb.is_stale("replay.p1") and spb.is_stale("replay.p3")
    assert rows == want
    if fmt == "batched":  # p2's gap, p1's missing b and the size limit end batches
        assert messages == sum(math.ceil(n / 4) for n in (20, 5, 14, 20, 10, 10, 10, 10, 10,
                                                          10, 5, 5))
    for asset in ("p1", "p2", "p3"):
        assert f"  {asset}: done" in run.stderr  # progress, per asset


@pytest.mark.parametrize("fmt", ["single", "signal", "batched", "sparkplug"])
def test_a_live_agent_takes_every_reading_and_scores_every_window(tmp_path: Path,
                                                                  mosquitto: Broker,
                                                                  fmt: str) -> None:
    from edge.app import Agent
    from tests.agentkit import agent_config, wait_until
    from tests.bundlefactory import make_bundle

    bundle = make_bundle(tmp_path / "b", signals=["a", "b", "c"], window=4, hop=1)
    agent = Agent(agent_config(tmp_path / "state", *bundle, mosquitto.port,
                               mqtt={"sparkplug": True}))
    agent.start()
    try:
        wait_until(agent.conn.connected.is_set, what="agent connected")
        time.sleep(0.3)  # its subscriptions are in place
        run = _cli("--table", _write(tmp_path, "parquet"), "--format", fmt, "--batch", "4",
                   "--speed", "0", "--site", "site1", "--port", mosquitto.port, "--quiet")
        assert run.returncode == 0, run.stderr
        _, readings = _published(run.stdout)
        value = agent.metrics.registry.get_sample_value
        wait_until(lambda: value("forewarn_readings_received_total") == readings,
                   timeout=30, what=f"{readings} readings received")
        errors = sum(m.value for f in agent.metrics.registry.collect()
                     if f.name == "forewarn_decode_errors" for m in f.samples
                     if m.name.endswith("_total"))
        assert errors == 0
        # p3 has no c at all, so only p1 and p2 fill windows: the agent scores some
        wait_until(lambda: (value("forewarn_windows_scored_total") or 0) > 0, timeout=30,
                   what="windows scored")
    finally:
        agent.stop()


def test_a_sparkplug_replay_answers_an_agent_that_missed_its_births(
        tmp_path: Path, mosquitto: Broker, sub: Subscriber) -> None:
    """An agent started after the replay's NBIRTH asks for a Rebirth (it scores nothing
    of an unknown node); the replay answers with its BIRTHs and the rest is read."""
    from edge.app import Agent
    from tests.agentkit import agent_config, wait_until
    from tests.bundlefactory import make_bundle

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    replay = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "replay", "--table", str(_write(tmp_path, "csv")),
         "--asset-column", "asset", "--format", "sparkplug", "--speed", "4", "--time", "keep",
         "--site", "site1", "--port", str(mosquitto.port), "--quiet"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    agent = None
    try:
        wait_until(lambda: any("/DDATA/" in t for t, _ in sub.take(0, timeout=0)),
                   timeout=30, what="the replay past its births")
        bundle = make_bundle(tmp_path / "b", signals=["a", "b", "c"], window=4, hop=1)
        agent = Agent(agent_config(tmp_path / "state", *bundle, mosquitto.port,
                                   mqtt={"sparkplug": True}))
        agent.start()
        out, err = replay.communicate(timeout=60)
        assert replay.returncode == 0, err
        value = agent.metrics.registry.get_sample_value
        wait_until(lambda: (value("forewarn_readings_received_total") or 0) > 0, timeout=20,
                   what="readings after the Rebirth")
    finally:
        if replay.poll() is None:
            replay.kill()
        if agent is not None:
            agent.stop()
    answered = re.search(r"(\d+) Rebirth commands answered", out)
    assert answered is not None and int(answered[1]) >= 1, out
    topics = [t for t, _ in sub.take(0, timeout=0)]
    assert any("/NCMD/replay" in t for t in topics)  # the agent's Rebirth command
    assert topics.count("spBv1.0/plant/NBIRTH/replay") >= 2  # the first, and the answer


def test_shifted_times_keep_the_spacing_and_lie_in_the_past(tmp_path: Path,
                                                            mosquitto: Broker,
                                                            sub: Subscriber) -> None:
    path = _write(tmp_path, "csv")
    started = time.time()
    run = _cli("--table", path, "--speed", "0", "--site", SITE, "--port", mosquitto.port)
    finished = time.time()
    assert run.returncode == 0, run.stderr
    messages, _ = _published(run.stdout)
    rows, _ = _decode(sub.take(messages), tmp_path)
    shift = float(re.search(r"shifted by \+(\d+) s", run.stdout)[1])  # type: ignore[index]
    assert shift == int(shift) and rows == _expected(_plant(), shift)
    # the last row a minute (to within one sample period) before the replay began
    assert started - 61 < max(r[2] for r in rows) <= finished - 60


def test_the_exported_history_replays_reading_for_reading(tmp_path: Path, mosquitto: Broker,
                                                          sub: Subscriber) -> None:
    from edge.history.export import export
    from edge.history.parquet import ParquetStore

    store = ParquetStore(tmp_path / "history")
    rng = np.random.default_rng(3)
    for asset in ("press-1", "press-2"):
        ts = T0 + np.arange(50.0)
        store.append(asset, "temp", ts, np.round(rng.normal(60, 2, 50), 3))
        store.append(asset, "vib", ts[::2], np.round(rng.normal(1, 0.1, 25), 3))
    store.close()
    out = tmp_path / "h.parquet"
    n = export(tmp_path / "history", out, T0, T0 + 1e6)
    table = pq.read_table(out)
    want = sorted(zip(table["asset"].to_pylist(), table["signal"].to_pylist(),
                      table["ts"].to_pylist(), table["value"].to_pylist(), strict=True))
    run = _cli("--table", out, "--format", "single", "--speed", "0", "--time", "keep",
               "--site", SITE, "--port", mosquitto.port)
    assert run.returncode == 0, run.stderr
    messages, readings = _published(run.stdout)
    rows, _ = _decode(sub.take(messages), tmp_path)
    assert readings == n == len(want) == 150 and messages == 100
    assert rows == [(a, s, float(t), float(v)) for a, s, t, v in want]
    assert "50 missing values not sent" in run.stdout  # vib every other second, twice


def test_a_training_configs_table_replays(tmp_path: Path, mosquitto: Broker,
                                          sub: Subscriber) -> None:
    config = REPO / "trainer" / "examples" / "plant_pca.toml"
    run = _cli("--config", config, "--format", "signal", "--speed", "0", "--site", SITE,
               "--port", mosquitto.port, "--assets", "pump-2")
    assert run.returncode == 0, run.stderr
    messages, readings = _published(run.stdout)
    rows, _ = _decode(sub.take(messages), tmp_path)
    assert messages == readings == len(rows) == 1200 * 3
    assert {(a, s) for a, s, _, _ in rows} == {
        ("pump-2", s) for s in ("bearing_temp_C", "flow_l_min", "vibration_mm_s")}


def test_cmapss_through_a_config_sends_the_models_inputs(tmp_path: Path, mosquitto: Broker,
                                                         sub: Subscriber) -> None:
    from trainer.cmapss import load_cmapss
    from trainer.config import load_config

    config = REPO / "trainer" / "configs" / "cmapss_fd002.toml"
    run = _cli("--config", config, "--units", "1-2", "--speed", "0", "--time", "shift",
               "--site", SITE, "--port", mosquitto.port)
    assert run.returncode == 0, run.stderr
    messages, _ = _published(run.stdout)
    rows, _ = _decode(sub.take(messages), tmp_path)
    inputs = load_config(config).inputs  # the sensors and the regime settings op1..op3
    test = load_cmapss("FD002").test
    assert messages == len(test[0]) + len(test[1])
    for unit in (1, 2):
        mine = [r for r in rows if r[0] == f"engine-{unit:03d}"]
        x = np.array([[v for a, s, t, v in mine if s == name] for name in inputs])
        assert np.array_equal(x, test[unit - 1].signals(inputs))


def test_publishes_the_broker_refuses_are_errors(tmp_path: Path) -> None:
    from tests.conftest import start_mosquitto

    (tmp_path / "acl").write_text("topic read forewarn/#\n")  # anyone may read, not write
    broker = start_mosquitto(tmp_path / "b", f"acl_file {tmp_path / 'acl'}\n")
    try:
        run = _cli("--table", _write(tmp_path, "csv"), "--speed", "0", "--port", broker.port,
                   "--site", SITE, "--quiet")
    finally:
        broker.stop()
    assert run.returncode == 1, run.stderr
    messages, _ = _published(run.stdout)
    assert f"{messages} errors (refused or never acknowledged by the broker)" in run.stdout


@pytest.mark.parametrize(("text", "args", "match"), [
    ("ts,asset,a\n1,p1,1\n2,p1,abc\n", [], r"bad\.csv: line 3, column a: 'abc' is not a number"),
    ("ts,asset,a\n1,p1,1\n1,p1,2\n", [],
     r"bad\.csv: line 2 and line 3, column ts: asset p1 has two rows at the same time"),
    ("ts,asset,a\n,p1,1\n", [], r"bad\.csv: line 2, column ts: missing timestamp"),
    ("ts,asset,a\n1,pump 1,1\n", [], r"asset 'pump 1' contains"),
    ("ts,asset,a\n1,p1,1\n", ["--signals", "a,zz"], r"data\.signals → \['zz'\] → no such column"),
    ("ts,asset,a\n1,p1,1\n", ["--timestamp", "time"],
     r"data\.table\.timestamp → 'time' → no such column"),
    ("a,b\n1,2\n", ["--timestamp", "", "--time", "keep"], r"--time keep: the table has no "
                                                          r"timestamp column"),
    ("ts,asset,a\n1,p1,1\n", ["--assets", "p9"], r"--assets: \['p9'\] not in"),
    ("ts,asset,a\n1,p1,1\n", ["--format", "sparkplug", "--node", "n.1"],
     r"node 'n\.1' contains '\.'"),
])
def test_bad_tables_and_names_are_refused_with_their_error(tmp_path: Path, text: str,
                                                           args: list[str], match: str) -> None:
    (tmp_path / "bad.csv").write_text(text)
    run = _cli("--table", tmp_path / "bad.csv", *args, "--speed", "0", "--port", "1")
    assert run.returncode == 2, run.stdout
    assert re.search(match, run.stderr), run.stderr
    assert "published" not in run.stdout  # nothing was sent


def test_a_history_config_says_to_export_first(tmp_path: Path) -> None:
    cfg = tmp_path / "h.toml"
    cfg.write_text('[bundle]\nname = "h"\n[data]\ndataset = "history"\npath = "hist"\n'
                   '[labels.failures]\nm1 = 1.0\n')
    run = _cli("--config", cfg, "--port", "1")
    assert run.returncode == 2
    assert "forewarn export --since ... --out h.parquet" in run.stderr, run.stderr


def test_help_shows_every_dataset_kind_and_format() -> None:
    run = _cli("--help")
    assert run.returncode == 0
    for text in ("--subset FD001", "--config trainer/configs/cmapss_fd002.toml",
                 "skab_pca.toml", "plant_pca.toml", "--table plant.csv",
                 "forewarn export", "--table h.parquet", "single", "signal", "batched",
                 "sparkplug", "--speed", "--time"):
        assert text in run.stdout, text
