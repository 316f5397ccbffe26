"""No raw reading or raw timestamp leaves the site: sentinels through the whole egress path.

Drift reports and the signed health report (last test) are both checked; the
health report carries the crew's verdict counts, and the crew's notes and
work-order ids (text sentinels) must never leave with them.

Unique sentinel values go into raw windows, through the feature step and a
DriftMonitor, into drift reports, the outbox and the uplink to a real Mosquitto
("cloud"); a subscriber captures every payload and topic byte. The scanner looks
for each sentinel as text (repr/str/%g/fixed/integer part) and as packed
float32/float64, little and big endian. A raw field is refused by the schema, and
a payload that bypasses the schema is caught by the scanner. Outbound sockets to
anything but loopback are refused for the whole test (catches import-time telemetry).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from edge.core.config import CloudMQTTConfig, EgressConfig
from edge.core.errors import EgressError
from edge.drift.monitor import DriftMonitor, reference_histogram
from edge.egress.ledger import Ledger
from edge.egress.outbox import Outbox
from edge.egress.schema import build_report, merge_payloads, report_dict, validate
from edge.egress.uplink import Uplink
from edge.models.bundle import Manifest
from tests.conftest import Broker

SENTINELS = [123456.789012, -98765.4321987, 31415.9265358, 2718.28182846]
RAW_TS = [1712345678.123457, 1712349999.654321]
# What a person types when resolving: a note and a work-order id, unique strings.
NOTE_SENTINEL = "zq7-note bearing cage cracked 4471"
WORK_ORDER_SENTINEL = "WO-ZQ7/88213"
WINDOW = 8


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def check(sock: socket.socket, addr: object) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = addr[0] if isinstance(addr, tuple) else str(addr)
            try:
                ok = ipaddress.ip_address(host).is_loopback
            except ValueError:
                ok = host == "localhost"
            if not ok:
                raise PermissionError(f"test blocks outbound connection to {addr!r}")

    def connect(sock: socket.socket, addr: object) -> None:
        check(sock, addr)
        real_connect(sock, addr)

    def connect_ex(sock: socket.socket, addr: object) -> int:
        check(sock, addr)
        return real_connect_ex(sock, addr)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)


def test_guard_blocks_non_loopback() -> None:
    with socket.socket() as s, pytest.raises(PermissionError, match="blocks"):
        s.connect(("192.0.2.1", 443))


def needles(values: list[float], timestamps: list[float]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for v in values + timestamps:
        for name, text in (("repr", repr(v)), ("str", str(v)), ("g", f"{v:g}"),
                           (".2f", f"{v:.2f}"), (".4f", f"{v:.4f}"), ("int", str(int(v)))):
            out[f"{v} {name}"] = text.encode()
        for fmt in ("<f", ">f", "<d", ">d"):
            out[f"{v} packed {fmt}"] = struct.pack(fmt, v)
    return out


def scan(blob: bytes, values: list[float] = SENTINELS,
         timestamps: list[float] = RAW_TS) -> list[str]:
    return [k for k, n in needles(values, timestamps).items() if n in blob]


def text_needles(texts: list[str]) -> dict[str, bytes]:
    """Each string as UTF-8 (also in JSON-escaped and case-folded form), UTF-16 and base64
    at the three alignments (a base64-encoded body would carry it so)."""
    out: dict[str, bytes] = {}
    for t in texts:
        raw = t.encode()
        out[f"{t!r} utf-8"] = raw
        out[f"{t!r} json"] = json.dumps(t).encode()[1:-1]
        out[f"{t!r} lower"] = t.lower().encode()
        out[f"{t!r} upper"] = t.upper().encode()
        out[f"{t!r} utf-16"] = t.encode("utf-16-le")
        for i in range(3):
            b64 = base64.b64encode(b"\0" * i + raw)[4 if i else 0:-4]
            out[f"{t!r} base64+{i}"] = b64
    return out


def scan_text(blob: bytes, texts: tuple[str, ...] = (NOTE_SENTINEL, WORK_ORDER_SENTINEL)
              ) -> list[str]:
    return [k for k, n in text_needles(list(texts)).items() if n in blob]


def test_text_scanner_catches_plain_escaped_and_encoded_forms() -> None:
    assert scan_text(json.dumps({"n": NOTE_SENTINEL}).encode())
    assert scan_text(WORK_ORDER_SENTINEL.lower().encode())
    assert scan_text(b"x" + base64.b64encode(b"ab" + NOTE_SENTINEL.encode()) + b"x")
    assert scan_text(WORK_ORDER_SENTINEL.encode("utf-16-le"))
    assert not scan_text(b'{"verdicts":{"confirmed":20},"note":null}')


def test_scanner_catches_text_and_packed_forms() -> None:
    assert scan(b'{"x":123456.789012}')
    assert scan(b"...1712345678...")
    assert scan(b"\x00" + struct.pack(">f", SENTINELS[1]) + b"\x00")
    assert scan(struct.pack("<d", SENTINELS[2]))
    assert not scan(b'{"psi":0.1234,"ms":-0.5}')


def features(windows: np.ndarray) -> np.ndarray:
    """Per-signal mean, min, max of raw windows [n, signals, window]."""
    return np.concatenate([windows.mean(2), windows.min(2), windows.max(2)], axis=1)


def make_manifest(rng: np.random.Generator) -> tuple[Manifest, list[str]]:
    ref = features(rng.normal(size=(4000, 2, WINDOW)))
    names = [f"{s}_{f}" for f in ("mean", "min", "max") for s in ("sig_a", "sig_b")]
    hists = {n: reference_histogram(ref[:, j]) for j, n in enumerate(names)}
    m = Manifest.model_validate({
        "schema_version": 2, "name": "m", "version": "1",
        "signals": [{"name": "sig_a"}, {"name": "sig_b"}],
        "sample_period_s": 1.0, "window": WINDOW, "hop": WINDOW,
        "output": {"kind": "anomaly", "score_output": "score", "alert_when": "above",
                   "feature_names": names},
        "thresholds": {"warning": 3.0},
        "reference": {"features": {n: h.model_dump() for n, h in hists.items()},
                      "score": reference_histogram(ref.max(1)).model_dump()},
        "drift_thresholds": {n: 0.3 for n in names}, "model_sha256": "ab" * 32,
    })
    return m, names


def reports_with_sentinels(cfg: EgressConfig) -> list[bytes]:
    rng = np.random.default_rng(7)
    manifest, _ = make_manifest(rng)
    mon = DriftMonitor(manifest, interval_windows=25)
    raw = rng.normal(size=(100, 2, WINDOW))
    # every sentinel sits in raw windows, alone in some intervals and as a window max
    for i, v in enumerate(SENTINELS):
        raw[3 + 25 * i, i % 2, 1] = v
        raw[10 + 25 * i, (i + 1) % 2, :] = v  # a whole window of it: feature mean == v
    ts = np.linspace(RAW_TS[0], RAW_TS[1], 100)
    f = features(raw)
    scores = f.max(1)
    intervals = mon.update(f, scores, missing=np.zeros(100), ts=ts)
    assert len(intervals) == 4
    out = [build_report(iv, cfg) for iv in intervals]
    assert all(p is not None for p in out)
    return [p for p in out if p is not None]


def db_bytes(path: Path) -> bytes:
    """An SQLite database as it is on disk: the file, its WAL and journal."""
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-journal"))
                    if p.exists())


def publish_and_capture(tmp_path: Path, broker: Broker, payloads: list[bytes],
                        bypass: bytes | None = None,
                        files: dict[str, bytes] | None = None) -> bytes:
    """What the cloud broker received; ``files`` gets the outbox as queued (before the
    uplink drains it) and the ledger afterwards, as bytes on disk."""
    got: list[bytes] = []
    lock = threading.Lock()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cloud-capture")

    def on_msg(c: object, u: object, m: mqtt.MQTTMessage) -> None:
        with lock:
            got.append(m.topic.encode() + b"\n" + m.payload)

    sub.on_message = on_msg
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("#", qos=1)
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    time.sleep(0.3)
    ob = Outbox(tmp_path / "outbox.sqlite", merge=merge_payloads)
    up = Uplink(ob, Ledger(tmp_path / "ledger.sqlite"),
                CloudMQTTConfig(host=broker.host, port=broker.port), "site-7f3a")
    for p in payloads:
        ob.put(p)
    if bypass is not None:
        ob.put(bypass)
    if files is not None:
        files["outbox"] = db_bytes(tmp_path / "outbox.sqlite")
    want = len(payloads) + (bypass is not None)
    up.start()
    try:
        deadline = time.monotonic() + 10
        while len(got) < want and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        up.stop()
        sub.loop_stop()
    assert len(got) == want
    if files is not None:
        files["ledger"] = db_bytes(tmp_path / "ledger.sqlite")
    return b"\x00".join(got)


def test_no_sentinel_or_raw_timestamp_reaches_the_cloud(tmp_path: Path,
                                                       mosquitto: Broker) -> None:
    cfg = EgressConfig(site_id="site-7f3a", k=20, include_bins=True)
    payloads = reports_with_sentinels(cfg)
    wire = publish_and_capture(tmp_path, mosquitto, payloads)
    assert b'"psi"' in wire  # the reports did arrive
    assert scan(wire) == []
    assert b"sig_a" not in wire and b"sig_b" not in wire  # no site strings either


def test_raw_field_is_refused_by_the_schema() -> None:
    cfg = EgressConfig(site_id="site-7f3a", k=20)
    rng = np.random.default_rng(1)
    manifest, _ = make_manifest(rng)
    (iv,) = DriftMonitor(manifest, 25).update(features(rng.normal(size=(25, 2, WINDOW))),
                                              np.zeros(25))
    data = report_dict(iv, cfg.site_id, cfg.k)
    data["last_value"] = SENTINELS[0]
    with pytest.raises(EgressError, match="last_value"):
        validate(data, cfg.k)
    data = report_dict(iv, cfg.site_id, cfg.k)
    data["features"][0]["max"] = SENTINELS[0]
    with pytest.raises(EgressError, match="max"):
        validate(data, cfg.k)


def test_scanner_catches_a_payload_that_bypasses_the_schema(tmp_path: Path,
                                                            mosquitto: Broker) -> None:
    cfg = EgressConfig(site_id="site-7f3a", k=20)
    payloads = reports_with_sentinels(cfg)
    doc = json.loads(payloads[0])
    doc["raw"] = SENTINELS[0]
    wire = publish_and_capture(tmp_path, mosquitto, payloads, json.dumps(doc).encode())
    assert any(str(SENTINELS[0]) in hit for hit in scan(wire))


def test_health_report_carries_no_sentinel_asset_name_or_raw_timestamp(
        tmp_path: Path, mosquitto: Broker) -> None:
    """The health report, signed and sequenced, through the same outbox and uplink.

    The crew judged 24 alerts with the note and work-order sentinels: their counts
    leave (outbox, ledger, cloud), the note and work-order id never do."""
    from edge.alerts.store import AlertStore
    from edge.core.metrics import Metrics
    from edge.egress.envelope import SEQ_FILE, Sealer, SequenceFile, load_or_create_key
    from edge.egress.health_report import HealthReporter, ModelRef

    store = AlertStore(tmp_path / "alerts.sqlite")
    # Site data where a careless report could pick it up: alert scores, evidence and
    # data timestamps carry the sentinels, asset names are the site's signal names.
    for i, v in enumerate(SENTINELS):
        a = store.open_alert(asset=f"sig_a-{i}", condition="score", severity="warning",
                             score=v, data_ts=RAW_TS[i % 2],
                             top_features=[{"signal": "sig_b", "value": v}],
                             history=[[RAW_TS[0], v]])
        store.update_evidence(a.id, score=v, peak_score=v, data_ts=RAW_TS[1],
                              history=[[RAW_TS[1], v]])
    for i in range(24):  # over k: the verdict counts are sent, per model too
        a = store.open_alert(asset=f"sig_a-v{i}", condition="score", severity="warning",
                             score=SENTINELS[i % 4], data_ts=RAW_TS[0], model="m/1")
        store.record_verdict(a.id, "false_alarm" if i % 4 == 0 else "confirmed", "ana",
                             f"{NOTE_SENTINEL} #{i}", WORK_ORDER_SENTINEL, resolve=True)
        if i % 8 == 0:  # amended later, with the sentinels again
            store.record_verdict(a.id, "unsure", "bo", NOTE_SENTINEL, WORK_ORDER_SENTINEL,
                                 resolve=False)
    assert scan_text(db_bytes(tmp_path / "alerts.sqlite"))  # the site does keep them
    m = Metrics()
    m.windows_scored.inc(100)
    for v in SENTINELS:
        m.inference_seconds.observe(abs(v) / 1e6)
    sealer = Sealer("site-7f3a", load_or_create_key(tmp_path), SequenceFile(tmp_path / SEQ_FILE))
    bodies: list[bytes] = []
    rep = HealthReporter(site_id="site-7f3a", k=20, registry=m.registry,
                         store_path=tmp_path / "alerts.sqlite",
                         models=lambda: [ModelRef(0, "m", "1", "ab" * 32)], state_dir=tmp_path,
                         operators=1, put=bodies.append, interval_s=0)
    assert rep.send_once()
    store.close()
    files: dict[str, bytes] = {}
    wire = publish_and_capture(tmp_path, mosquitto,
                               [sealer.seal("health", b) for b in bodies], files=files)
    assert b'"kind":"health"' in wire and b'"sig"' in wire  # it did arrive, signed
    # the counts did leave: 18 confirmed, 6 false alarms of which 3 amended to unsure
    assert b'"verdicts":{"confirmed":18,"false_alarm":3,"unsure":3}' in wire
    assert b'"model_verdicts":[{"confirmed":18,"false_alarm":3,"name":"m"' in wire
    (entry,) = Ledger(tmp_path / "ledger.sqlite").entries()
    assert b'"model_verdicts":[{' in entry.payload and b'"unsure":3' in entry.payload
    assert b'"model_verdicts"' in files["outbox"]
    for where, blob in (("cloud", wire), ("outbox", files["outbox"]),
                        ("ledger", files["ledger"])):
        assert scan(blob) == [], where
        assert scan_text(blob) == [], where
        assert b"sig_a" not in blob and b"sig_b" not in blob, where
