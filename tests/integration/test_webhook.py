"""Alert events reach a webhook receiver that was down when they happened, once, in order."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from edge.app import Agent
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
        assert agent.webhook.depth() == 0
    finally:
        sender.close()
        agent.stop()
        if receiver:
            receiver.close()
