"""The uplink: a second MQTT connection, to the **cloud** broker, for reports only.

A :class:`~edge.egress.sender.Sender`: ``put`` appends a signed report envelope
(:mod:`edge.egress.envelope`: drift and health reports, one topic, in sequence
order; :class:`~edge.egress.sealed.SealedOutbox` seals them) to the outbox.

A worker thread takes the oldest rows of the outbox, publishes them in order at
QoS 1, and deletes each from the outbox (and records it in the ledger) only after
its PUBACK. While the cloud is unreachable paho reconnects with exponential
backoff (``reconnect_min_s`` .. ``reconnect_max_s``) and the rows wait in the
outbox. A message published before a disconnect is not published again by us:
paho retransmits it on reconnect, so one report is one PUBLISH (plus MQTT DUPs).
"""

from __future__ import annotations

import logging
import ssl
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.core.config import CloudMQTTConfig, read_secret
from edge.egress.envelope import schema_name
from edge.egress.ledger import Ledger
from edge.egress.outbox import Outbox, OutboxRow
from edge.egress.sender import SenderHealth

log = logging.getLogger(__name__)


class Uplink:
    def __init__(self, outbox: Outbox, ledger: Ledger, cfg: CloudMQTTConfig, site_id: str,
                 batch: int = 100, poll_s: float = 0.2) -> None:
        self.outbox = outbox
        self.ledger = ledger
        self.cfg = cfg
        self.topic = cfg.topic.format(site_id=site_id)
        self.batch = batch
        self.poll_s = poll_s
        scheme = "mqtts" if cfg.tls else "mqtt"
        self.destination = f"{scheme}://{cfg.host}:{cfg.port}/{self.topic}"
        self.sent = 0
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        v5 = cfg.protocol == "5"
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or f"forewarn-egress-{site_id}",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,  # MQTT 5 takes clean_start at connect
        )
        c = self._client
        if cfg.username:
            c.username_pw_set(cfg.username, read_secret(cfg.password_file))
        if cfg.tls:
            c.tls_set(ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
                      certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                      keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
                      cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
            c.tls_insecure_set(cfg.tls.insecure)
        c.reconnect_delay_set(int(max(1, cfg.reconnect_min_s)), int(max(1, cfg.reconnect_max_s)))
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not rc.is_failure:
            self.connected.set()
            self._wake.set()
            log.info("uplink connected to %s", self.destination)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any,
                       props: Any) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            log.warning("uplink lost %s (%s); reports wait in the outbox", self.destination, rc)

    def start(self) -> None:
        self._client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive_s)
        self._client.loop_start()  # retries the first connection too
        self._thread = threading.Thread(target=self._run, name="egress-uplink", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)
        self._client.disconnect()
        self._client.loop_stop()

    def notify(self) -> None:
        """Wake the worker after an outbox put (otherwise it polls every ``poll_s``)."""
        self._wake.set()

    def put(self, record: bytes) -> None:
        """Queue a sealed report (durable in the outbox) and wake the worker."""
        self.outbox.put(record)
        self._wake.set()

    def depth(self) -> int:
        return self.outbox.depth()

    def health(self) -> SenderHealth:
        if self.connected.is_set():
            return SenderHealth(True, self.depth())
        return SenderHealth(False, self.depth(), f"cloud broker {self.destination} not "
                            "connected; reports wait in the outbox")

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            # Drain without sleeping between batches: after an outage the backlog
            # leaves at the broker's pace, not one batch per poll interval.
            while self.connected.is_set() and not self._stop.is_set():
                rows = self.outbox.peek_batch(self.batch)
                if not rows or not self._send(rows):
                    break

    def _send(self, rows: list[OutboxRow]) -> bool:
        """Publish ``rows`` in order; True when every one was acknowledged."""
        pending: list[tuple[OutboxRow, mqtt.MQTTMessageInfo]] = []
        for row in rows:
            info = self._client.publish(self.topic, row.payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                break  # disconnected meanwhile: this and later rows go back, in order
            pending.append((row, info))
        sent_rows = {r.id for r, _ in pending}
        self.outbox.release([r.id for r in rows if r.id not in sent_rows])
        # PUBACKs come in order; wait for each, as long as it takes (paho resends
        # after a reconnect), so a row is deleted only once the cloud holds it.
        acked: list[OutboxRow] = []
        for row, info in pending:
            while not self._stop.is_set():
                info.wait_for_publish(timeout=self.cfg.ack_timeout_s)
                if info.is_published():
                    break
            if not info.is_published():
                self.outbox.release([r.id for r, _ in pending if r.id >= row.id])
                break
            acked.append(row)
        if acked:
            # Ledger first, one transaction per batch for each store: a crash between
            # the two re-sends the rows and records them twice (true: they left
            # twice); the other order could leave a sent report unrecorded.
            self.ledger.record_many(self.destination, [r.payload for r in acked],
                                    [schema_name(r.payload) for r in acked])
            self.outbox.mark_sent([r.id for r in acked])
            self.sent += len(acked)
        return len(acked) == len(rows)
