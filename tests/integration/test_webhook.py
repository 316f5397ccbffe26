"""Alert events reach a webhook receiver that was down when they happened, once, in order;
each delivery is recorded in the egress ledger."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edge.app import Agent
from edge.cli import main
from edge.egress.ledger import Ledger
from edge.egress.webhook import Webhook
from tests.agentkit import Client, agent_config, wait_until
from tests.bundlefactory import make_bundle
from tests.conftest import Broker, free_port


class Receiver:
    def __init__(self, port: int) -> None:
        self.bodies: list[dict] = []
        self.auth: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers["Content-Length"])
                outer.bodies.append(json.loads(self.rfile.read(n)))
                outer.auth.append(self.headers.get("Authorization"))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_events_wait_in_the_outbox_while_the_receiver_is_down(tmp_path: Path,
                                                              mosquitto: Broker) -> None:
    bundle, pub = make_bundle(tmp_path / "models", signals=["a", "b"], window=2, warning=50.0,
                              reset=40.0)
    port = free_port()
    token = tmp_path / "hook-token"
    token.write_text("s3cret-hook-token\n")
    cfg = agent_config(tmp_path / "state", bundle, pub, mosquitto.port,
                       webhook={"url": f"http://127.0.0.1:{port}/hook",
                                "token_file": str(token)})
    agent = Agent(cfg)
    agent.start()
    sender = Client(mosquitto.port)
    receiver = None
    try:
        wait_until(agent.conn.connected.is_set, what="agent connected")
        # open -> auto-cleared -> open again: three events while nobody listens
        for t, v in enumerate([90, 90, 10, 10, 10, 10, 90, 90]):
            sender.publish("forewarn/site1/m1", {"ts": 1_700_000_000 + t,
                                                 "values": {"a": v, "b": 0}})
        assert agent.webhook is not None
        wait_until(lambda: agent.webhook.depth() == 3 and agent.webhook.failures >= 1,
                   what="three events queued, delivery failing")
        receiver = Receiver(port)
        wait_until(lambda: len(receiver.bodies) == 3, timeout=30, what="delivery after outage")
        assert [b["event"] for b in receiver.bodies] == ["opened", "auto_cleared", "opened"]
        assert set(receiver.auth) == {"Bearer s3cret-hook-token"}
        # The receiver holds an event before its 2xx is back and the ledger row written.
        wait_until(lambda: agent.webhook.depth() == 0, what="outbox emptied")
        assert len(receiver.bodies) == 3  # each once
    finally:
        sender.close()
        agent.stop()
        if receiver:
            receiver.close()


def test_every_webhook_delivery_is_in_the_egress_ledger(tmp_path: Path, mosquitto: Broker,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    """The webhook is a path off site like the uplink: `forewarn egress report` lists what
    it delivered, byte for byte, under its URL without the secret in the query."""
    bundle, pub = make_bundle(tmp_path / "models", signals=["a", "b"], window=2, warning=50.0,
                              reset=40.0)
    port = free_port()
    receiver = Receiver(port)
    state = tmp_path / "state"
    cfg = agent_config(state, bundle, pub, mosquitto.port,
                       webhook={"url": f"http://127.0.0.1:{port}/hook?key=s3cret"})
    agent = Agent(cfg)
    agent.start()
    sender = Client(mosquitto.port)
    try:
        wait_until(agent.conn.connected.is_set, what="agent connected")
        for t, v in enumerate([90, 90, 10, 10, 10, 10]):  # opened, then auto-cleared
            sender.publish("forewarn/site1/m1", {"ts": 1_700_000_000 + t,
                                                 "values": {"a": v, "b": 0}})
        wait_until(lambda: len(receiver.bodies) == 2, timeout=30, what="two deliveries")
        assert agent.webhook is not None and agent.egress.ledger is not None
        wait_until(lambda: agent.webhook.delivered == 2, what="both recorded and deleted")
        entries = agent.egress.ledger.entries()
    finally:
        sender.close()
        agent.stop()
        receiver.close()
    assert [json.loads(e.payload) for e in entries] == receiver.bodies
    assert {(e.destination, e.schema) for e in entries} == {
        (f"http://127.0.0.1:{port}/hook", "forewarn.alert-event/1")}
    assert main(["egress", "report", "--state-dir", str(state), "--json"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [json.loads(x["payload"])["event"] for x in out] == ["opened", "auto_cleared"]
    assert "s3cret" not in json.dumps(out)


def test_a_delivery_the_ledger_cannot_record_stays_in_the_outbox(tmp_path: Path) -> None:
    """Nothing leaves unrecorded for good: without a ledger row the event is sent again."""
    port = free_port()
    receiver = Receiver(port)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.close()  # every record now fails (sqlite3.ProgrammingError)
    hook = Webhook(f"http://127.0.0.1:{port}/hook", tmp_path / "outbox.sqlite", ledger=ledger,
                   backoff_max_s=0.2)
    hook.put(b'{"schema": "forewarn.alert-event/1", "event": "opened"}')
    hook.start()
    try:
        wait_until(lambda: len(receiver.bodies) >= 2, what="sent again after the failure")
        assert hook.ledger_errors >= 1 and hook.delivered == 0 and hook.depth() == 1
        assert hook.health().depth == 1
    finally:
        hook.stop()
        receiver.close()
