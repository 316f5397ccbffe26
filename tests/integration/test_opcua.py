"""OPC UA sources against a real asyncua server in its own process (tests/opcuakit.py).

What the server wrote (its ``written`` log: every counter value with its source
timestamp) is compared value for value with what reached the inbox.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("asyncua", reason="OPC UA tests need asyncua (pip install -e '.[opcua]')")

from edge.app import Agent
from edge.core.metrics import Metrics
from edge.core.opcua_config import OpcUaServerConfig
from edge.ingest.batch import DecodedBatch
from edge.ingest.opcua import OpcUaSource
from tests.agentkit import Client, agent_config, wait_until
from tests.bundlefactory import make_bundle
from tests.conftest import Broker
from tests.opcuakit import CLIENT_URI, OpcUaServer, TcpCutter, make_cert

NODES: list[dict[str, Any]] = [
    {"node_id": "ns=2;s=Pump1.Counter", "asset": "pump-1", "signal": "counter"},
    {"browse_path": "2:Pump1/2:Temperature", "asset": "pump-1", "signal": "temp"},
    {"node_id": "ns=2;s=Pump1.Running", "asset": "pump-1", "signal": "running"},
    {"node_id": "ns=2;s=Pump1.Label", "asset": "pump-1", "signal": "label"},
    {"node_id": "ns=2;s=Pump1.Flaky", "asset": "pump-1", "signal": "flaky"},
]
FAST = {"publishing_interval_ms": 50, "sampling_interval_ms": 0, "queue_size": 1000,
        "reconnect_min_s": 0.2, "reconnect_max_s": 1.0, "request_timeout_s": 5.0}


def server_cfg(endpoint: str, nodes: list[dict[str, Any]] | None = None,
               **kw: Any) -> dict[str, Any]:
    return {"name": "plc1", "endpoint": endpoint, "nodes": nodes or NODES, **FAST, **kw}


class Inbox:
    """A bounded queue as the agent's, and what came through it, by signal."""

    def __init__(self) -> None:
        self.q: queue.Queue[DecodedBatch] = queue.Queue(10_000)
        self.lock = threading.Lock()

    def put_nowait(self, item: DecodedBatch) -> None:
        self.q.put_nowait(item)

    def drain(self, into: dict[str, list[tuple[float, float]]], drops: Counter[str]) -> None:
        while True:
            try:
                b = self.q.get_nowait()
            except queue.Empty:
                return
            for k, t, v in zip(b.key_idx.tolist(), b.ts.tolist(), b.value.tolist(),
                               strict=True):
                into.setdefault(b.keys[k][1], []).append((t, v))
            drops.update(b.dropped)


class Run:
    """An OPC UA source feeding an :class:`Inbox`, and what it delivered."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.inbox = Inbox()
        self.metrics = Metrics()
        self.source = OpcUaSource(OpcUaServerConfig.model_validate(cfg), self.inbox,
                                  self.metrics)
        self.got: dict[str, list[tuple[float, float]]] = {}
        self.drops: Counter[str] = Counter()

    def __enter__(self) -> Run:
        self.source.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.source.stop()

    def counter(self) -> list[int]:
        self.inbox.drain(self.got, self.drops)
        return [int(v) for _, v in self.got.get("counter", [])]

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, {"server": "plc1", **labels}) or 0.0

    def wait_counter(self, at_least: int, what: str, timeout: float = 30.0) -> list[int]:
        return wait_until(lambda: len(self.counter()) >= at_least and self.counter(),
                          timeout=timeout, what=what)


@pytest.fixture
def plc(tmp_path: Path) -> Iterator[OpcUaServer]:
    server = OpcUaServer(tmp_path / "plc").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "pki"
    server_cert, server_key = make_cert(d, "plc", "urn:forewarn:test-plc:server", server=True)
    client_cert, client_key = make_cert(d, "agent", CLIENT_URI, server=False)
    other_cert, _ = make_cert(d / "other", "impostor", "urn:other", server=True)
    (d / "password").write_text("s3cret\n")
    (d / "wrong-password").write_text("guess\n")
    return {"server_cert": server_cert, "server_key": server_key, "client_cert": client_cert,
            "client_key": client_key, "other_cert": other_cert}


@pytest.fixture
def secure_plc(tmp_path: Path, pki: dict[str, Path]) -> Iterator[OpcUaServer]:
    server = OpcUaServer(tmp_path / "secure-plc", cert=pki["server_cert"],
                         key=pki["server_key"], users={"forewarn": "s3cret"}).start()
    try:
        yield server
    finally:
        server.stop()


def secure(pki: dict[str, Path], trusted: Path, **kw: Any) -> dict[str, Any]:
    return {"security_policy": "Basic256Sha256", "security_mode": "SignAndEncrypt",
            "certificate_file": str(pki["client_cert"]),
            "private_key_file": str(pki["client_key"]),
            "trusted_server_certificates": [str(trusted)], "application_uri": CLIENT_URI, **kw}


def assert_contiguous(values: list[int]) -> None:
    dups = sorted(v for v, n in Counter(values).items() if n > 1)
    assert not dups, f"delivered twice: {dups[:10]}"
    gaps = [(a, b) for a, b in itertools.pairwise(values) if b != a + 1]
    assert not gaps, f"missing between: {gaps[:10]}"


# -- (a) plain subscription ---------------------------------------------------------
def test_samples_arrive_with_the_servers_source_timestamps_mapped_to_asset_and_signal(
        plc: OpcUaServer) -> None:
    nodes = [*NODES, {"node_id": "ns=2;s=Pump1.Missing", "asset": "pump-1", "signal": "gone"}]
    with Run(server_cfg(plc.endpoint, nodes)) as run:
        got = run.wait_counter(60, "60 counter samples")
        assert_contiguous(got)
        written = dict(plc.counter_values())
        for ts, v in run.got["counter"]:
            # OPC UA DateTime is in 100 ns ticks: the server's own timestamp, not ours
            assert abs(ts - written[int(v)]) < 2e-6, (v, ts, written[int(v)])
        # by browse path: the temperature written in the same tick, same timestamp
        temps = dict(run.got["temp"])
        assert set(temps) >= {ts for ts, v in run.got["counter"][1:]}
        # (e) bad status codes are dropped and counted, never delivered
        flaky = [int(v) for _, v in run.got["flaky"]]
        assert flaky and all(v % plc.bad_every for v in flaky)
        assert run.drops["opcua_bad_status"] >= len(got) // plc.bad_every - 1
        # booleans and strings are not measurements (as in the JSON decoder)
        assert "running" not in run.got and "label" not in run.got
        assert run.drops["bad_type"] >= 2 * (len(got) - 1)
        h = run.source.health()
        assert h.connected
        assert "1 of 6 nodes unavailable: ns=2;s=Pump1.Missing: BadNodeIdUnknown" in h.detail
        assert run.metric("forewarn_opcua_connected") == 1.0
        assert run.metric("forewarn_opcua_samples_total") >= 5 * len(got)
        assert run.metric("forewarn_opcua_subscriptions_total", how="created") == 1.0
    assert run.metric("forewarn_opcua_connected") == 0.0
    # A server with none of the configured nodes: not connected, said why, retried.
    with Run(server_cfg(plc.endpoint, nodes[-1:])) as none:
        wait_until(lambda: none.metric("forewarn_opcua_connect_errors_total",
                                       reason="config") >= 2, what="retried")
        h = none.source.health()
        assert not h.connected and "none of the 1 nodes can be read" in h.detail
        assert none.metric("forewarn_opcua_subscriptions_total", how="transferred") == 0


# -- (b) Basic256Sha256 SignAndEncrypt, username and certificate auth ---------------------
def test_sign_and_encrypt_with_username_or_certificate_auth_and_a_wrong_password(
        secure_plc: OpcUaServer, pki: dict[str, Path], tmp_path: Path) -> None:
    pw = tmp_path / "pki" / "password"
    user = secure(pki, pki["server_cert"], auth="username", username="forewarn",
                  password_file=str(pw))
    trusted = tmp_path / "pki" / "trusted"  # a directory of trusted certificates
    trusted.mkdir()
    (trusted / "plc.der").write_bytes(pki["server_cert"].read_bytes())
    cert = secure(pki, trusted, auth="certificate")
    wrong = {**user, "password_file": str(tmp_path / "pki" / "wrong-password")}
    with Run(server_cfg(secure_plc.endpoint, **user)) as a, \
            Run(server_cfg(secure_plc.endpoint, **cert)) as b, \
            Run(server_cfg(secure_plc.endpoint, **wrong)) as c:
        assert_contiguous(a.wait_counter(20, "samples over Basic256Sha256 (username)"))
        assert_contiguous(b.wait_counter(20, "samples over Basic256Sha256 (certificate)"))
        wait_until(lambda: c.metric("forewarn_opcua_connect_errors_total",
                                    reason="auth_rejected") >= 2,
                   what="the wrong password refused twice (retried with backoff)")
        h = c.source.health()
        assert not h.connected and "auth_rejected" in h.detail
        assert c.counter() == []


# -- (c) an untrusted server certificate ------------------------------------------------
def test_an_untrusted_server_certificate_is_refused_with_its_fingerprint_and_counted(
        secure_plc: OpcUaServer, pki: dict[str, Path]) -> None:
    cfg = secure(pki, pki["other_cert"])  # trusts another server only
    with Run(server_cfg(secure_plc.endpoint, **cfg)) as run:
        wait_until(lambda: run.metric("forewarn_opcua_connect_errors_total",
                                      reason="untrusted_certificate") >= 2,
                   what="refused, and refused again at the next attempt")
        h = run.source.health()
        assert not h.connected
        assert "presents certificate 'CN=plc'" in h.detail
        assert "not among trusted_server_certificates" in h.detail
        assert run.counter() == [] and run.metric("forewarn_opcua_samples_total") == 0


# -- (d) outages: the link cut, the server restarted ----------------------------------------
def test_a_cut_link_resumes_by_transfer_with_no_sample_lost_or_repeated(
        plc: OpcUaServer) -> None:
    cutter = TcpCutter(plc.port)
    try:
        with Run(server_cfg(f"opc.tcp://127.0.0.1:{cutter.port}/forewarn/")) as run:
            before = run.wait_counter(30, "samples before the cut")
            cutter.cut(2.0)  # the server keeps writing; its queue holds the samples
            wait_until(lambda: run.metric("forewarn_opcua_subscriptions_total",
                                          how="transferred") == 1, what="transferred")
            # A link that swallows what is sent: the publish responses in flight are
            # lost; after the transfer the agent fetches them again (Republish).
            cutter.blackhole(3.0)
            wait_until(lambda: run.metric("forewarn_opcua_subscriptions_total",
                                          how="transferred") == 2, what="transferred again")
            last_written = plc.counter_values()[-1][0]
            got = wait_until(lambda: (c := run.counter()) and c[-1] >= last_written and c,
                             what="every sample written during the outages")
            assert len(got) > len(before) + 150  # the outages spanned 250 writes
            assert_contiguous(got)
            assert run.metric("forewarn_opcua_republished_total") >= 1
            assert run.metric("forewarn_opcua_reconnects_total") == 2.0
            assert run.metric("forewarn_opcua_subscriptions_total", how="created") == 1.0
    finally:
        cutter.close()


def test_a_restarted_server_gets_a_new_subscription_and_no_sample_twice(
        plc: OpcUaServer) -> None:
    with Run(server_cfg(plc.endpoint)) as run:
        run.wait_counter(30, "samples before the restart")
        plc.stop(hard=True)  # SIGKILL: its queues die with it
        restored = plc.counter_values()[-1][0]  # the new process starts from it
        wait_until(lambda: not run.source.health().connected, what="the loss noticed")
        had_restored = restored in run.counter()  # all the old link carried is in
        plc.start()
        wait_until(lambda: run.metric("forewarn_opcua_subscriptions_total", how="created") == 2,
                   what="a new subscription on the restarted server")
        got = wait_until(lambda: (c := run.counter()) and c[-1] >= restored + 30 and c,
                         what="samples from the restarted server")
        dups = [v for v, n in Counter(got).items() if n > 1]
        assert not dups, f"delivered twice: {dups}"
        assert got == sorted(got)
        # Only what the dead server had not sent yet is missing: the last value it wrote
        # (restored, with its timestamp, by the new process) and everything after it
        # came through; its resend, when already delivered, was dropped as a duplicate.
        gaps = [(a, b) for a, b in itertools.pairwise(got) if b != a + 1]
        assert all(b == restored for _, b in gaps) and len(gaps) <= 1, gaps
        assert restored in got
        assert run.metric("forewarn_opcua_duplicates_total") == (1 if had_restored else 0)
        assert run.metric("forewarn_opcua_reconnects_total") == 1.0


# -- through the agent: scored windows, /metrics, /healthz, and a refused server -----------
def test_the_agent_scores_opcua_readings_and_keeps_running_beside_an_untrusted_server(
        tmp_path: Path, mosquitto: Broker, plc: OpcUaServer, secure_plc: OpcUaServer,
        pki: dict[str, Path]) -> None:
    bundle, pub = make_bundle(tmp_path / "models", signals=["temp", "flaky"], window=4,
                              period=0.1, warning=24.0, reset=22.0)
    nodes = [NODES[1], NODES[4]]  # temp (browse path), flaky
    good = server_cfg(plc.endpoint, nodes)
    bad = {**server_cfg(secure_plc.endpoint, [{**NODES[1], "asset": "pump-2"}]),
           "name": "plc2", **secure(pki, pki["other_cert"])}
    cfg = agent_config(tmp_path / "state", bundle, pub, mosquitto.port,
                       opcua={"servers": [good, bad]})
    agent = Agent(cfg)
    watcher = Client(mosquitto.port, ["forewarn/site1/alerts/#"])
    agent.start()
    try:
        base = f"http://127.0.0.1:{cfg.api.port}"
        wait_until(lambda: agent.pipeline.scored_total >= 20, what="windows scored")
        # the temperature's sine crosses 24 within its first quarter period
        wait_until(lambda: (watcher.last_json("forewarn/site1/alerts/pump-1") or {})
                   .get("state") == "open", what="an alert opened from OPC UA readings")
        metrics = wait_until(lambda: _get(f"{base}/metrics"), what="/metrics")
        assert _sample(metrics, 'forewarn_opcua_connected{server="plc1"}') == 1.0
        assert _sample(metrics, 'forewarn_opcua_connected{server="plc2"}') == 0.0
        assert _sample(metrics, 'forewarn_opcua_connect_errors_total{reason='
                                '"untrusted_certificate",server="plc2"}') >= 1.0
        assert _sample(metrics, 'forewarn_decode_errors_total{reason="opcua_bad_status"}') >= 1
        assert _sample(metrics, "forewarn_readings_received_total") >= 40
        r = httpx.get(f"{base}/healthz")
        assert r.status_code == 503 and "opcua:plc2 down" in r.text
        assert "not among trusted_server_certificates" in r.text
        status = agent.status()
        assert [s["connected"] for s in status["sources"]] == [True, False]
    finally:
        watcher.close()
        agent.stop()


def _get(url: str) -> str | None:
    try:
        r = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None
    return r.text if r.status_code == 200 else None


def _sample(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0
