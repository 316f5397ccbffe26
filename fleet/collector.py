"""The collector: an MQTT 5 shared subscription on the cloud broker, ack after commit.

Several collector processes (or hosts) with the same ``share_group`` split the
reports between them (``$share/<group>/<topic>``); each has its own client id
and persistent session (``clean_start`` off, a session expiry), so what was
sent to it while it was down, or in flight when it died, is delivered again.

Per message, in paho's network thread: verify (size, signature, schema) ->
store (one commit) -> PUBACK. A refused report is dead-lettered, counted and
acknowledged (a redelivery would be refused again); a duplicate is
acknowledged; a failed write is *not* acknowledged and the connection is
dropped, so the broker redelivers it after the reconnect.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.core.errors import ReportRefused, StorageError
from fleet.config import BrokerConfig
from fleet.metrics import FleetMetrics
from fleet.store import ReportStore
from fleet.verify import verify

log = logging.getLogger(__name__)


class Collector:
    def __init__(self, cfg: BrokerConfig, store: ReportStore,
                 keys: Callable[[], dict[str, Ed25519PublicKey]], metrics: FleetMetrics, *,
                 max_bytes: int, k: int, clock: Callable[[], float] = time.time) -> None:
        self.cfg, self.store, self.keys, self.metrics = cfg, store, keys, metrics
        self.max_bytes, self.k, self.clock = max_bytes, k, clock
        self.subscription = f"$share/{cfg.share_group}/{cfg.topic}"
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self._stopping = False
        self._logged: set[str] = set()  # reasons already logged at ERROR (then DEBUG)
        c = self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                                       protocol=mqtt.MQTTv5, manual_ack=True)
        if cfg.username:
            pw = cfg.password_file.read_text().strip() if cfg.password_file else None
            c.username_pw_set(cfg.username, pw)
        if cfg.ca_file:
            c.tls_set(ca_certs=str(cfg.ca_file),
                      certfile=str(cfg.cert_file) if cfg.cert_file else None,
                      keyfile=str(cfg.key_file) if cfg.key_file else None,
                      cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        c.reconnect_delay_set(1, 30)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = lambda *_: self.subscribed.set()
        c.on_message = self._on_message

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        props.ReceiveMaximum = self.cfg.receive_maximum
        self._client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive_s,
                                   clean_start=False, properties=props)
        self._client.loop_start()

    def stop(self) -> None:
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            log.error("cloud broker refused the collector: %s", rc)
            return
        self.connected.set()
        client.subscribe(self.subscription, qos=1)
        log.info("collector %s subscribed to %s (session present: %s)", self.cfg.client_id,
                 self.subscription, flags.session_present)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any,
                       props: Any) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if not self._stopping:
            log.warning("collector lost the cloud broker (%s); reconnecting", rc)

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self.handle(bytes(msg.payload)):
            client.ack(msg.mid, msg.qos)
        else:
            # Not acknowledged: drop the connection so the broker redelivers it (a
            # session keeps unacknowledged QoS 1 messages) once the store is back.
            client.disconnect()
            threading.Timer(1.0, self._reconnect).start()

    def _reconnect(self) -> None:
        try:
            self._client.reconnect()
        except OSError as exc:
            log.warning("collector reconnect failed (%s); paho retries", exc)

    def handle(self, payload: bytes) -> bool:
        """Verify and store one report; True when it may be acknowledged."""
        m = self.metrics
        m.received.inc()
        now = self.clock()
        try:
            report = verify(payload, self.keys(), max_bytes=self.max_bytes, k=self.k,
                            received=now)
            result = self.store.put(report)
            if result == "conflict":
                raise ReportRefused("replay", f"site_id={report.site_id!r} seq={report.seq} "
                                    "is stored with different content")
        except ReportRefused as exc:
            return self._refuse(exc, payload, now)
        except StorageError as exc:
            m.store_errors.inc()
            log.error("report not stored, not acknowledged: %s", exc)
            return False
        if result == "duplicate":
            m.duplicates.inc()
        else:
            m.stored.labels(report.kind).inc()
        return True

    def _refuse(self, exc: ReportRefused, payload: bytes, now: float) -> bool:
        self.metrics.refused.labels(exc.reason).inc()
        site = _site_hint(exc.detail)
        level = logging.DEBUG if exc.reason in self._logged else logging.ERROR
        self._logged.add(exc.reason)
        log.log(level, "report refused (%s), dead-lettered: %s", exc.reason, exc.detail)
        try:
            self.store.dead_letter(now, exc.reason, site, exc.detail, payload)
        except StorageError as err:
            self.metrics.store_errors.inc()
            log.error("dead letter not stored: %s", err)
            return False
        return True


def _site_hint(detail: str) -> str | None:
    """The site_id a refusal's detail names (for the dead letter), if any."""
    marker = "site_id='"
    i = detail.find(marker)
    if i < 0:
        return None
    j = detail.find("'", i + len(marker))
    return detail[i + len(marker):j][:64] if j > 0 else None
