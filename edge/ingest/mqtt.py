"""The site-broker connection: subscribe, reconnect, hand messages to a bounded queue.

A :class:`~edge.ingest.source.Source` (named ``mqtt``): the pipeline acknowledges
raw messages to it.

The paho callback only converts and enqueues (paho re-raises callback exceptions
into its network loop). QoS 1 messages are acknowledged manually, by the pipeline,
once what they carried is durable, so a reading the broker handed over is either
stored or redelivered after a crash (persistent session, ``clean_start=False``).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.core.config import MQTTConfig, read_secret
from edge.core.metrics import Metrics
from edge.ingest.draining_client import DrainingClient
from edge.ingest.message import (
    MESSAGE_OVERHEAD,
    RAW_ORIGIN,
    InboxItem,
    Message,
    MessageQueue,
)
from edge.ingest.publish_guard import PublishGuard
from edge.ingest.source import SourceHealth

log = logging.getLogger(__name__)

# Room for a PUBLISH's fixed header, topic, packet id and properties on top of its
# payload: real topics are well under 1 KiB (asset and signal names are <= 64
# characters). deploy/mosquitto/mosquitto.conf uses the same room.
PUBLISH_HEADER_ROOM = 1024
BURST_MAX = 256  # messages handed over at most per queue item


def max_packet_size(max_payload_bytes: int) -> int:
    """The MQTT 5 Maximum Packet Size that still admits every acceptable payload."""
    return max_payload_bytes + PUBLISH_HEADER_ROOM


class SiteConnection:
    name = RAW_ORIGIN

    def __init__(
        self,
        cfg: MQTTConfig,
        site: str,
        subscriptions: list[str],
        inbox: queue.Queue[InboxItem],
        metrics: Metrics,
        on_connected: Callable[[], None] | None = None,
        max_payload_bytes: int | None = None,
        admit: Callable[[str], bool] | None = None,
        queue_wait_s: float = 2.0,
    ) -> None:
        self.cfg = cfg
        self.queue_wait_s = queue_wait_s
        self._sized = isinstance(inbox, MessageQueue)  # it takes the burst's byte count
        self._closing = threading.Event()
        self.max_payload_bytes = max_payload_bytes
        quarantined = metrics.decode_errors.labels("quarantined")
        self.subscriptions = subscriptions
        self.inbox = inbox
        self._burst: list[Message] = []  # network thread only
        self._burst_bytes = 0  # its item_bytes, summed as it grows
        self.metrics = metrics
        self.on_connected = on_connected
        # Set once the broker acknowledged the subscriptions (SUBACK), not at CONNACK:
        # a reading published in between would reach no subscriber.
        self.connected = threading.Event()
        self.refused: list[str] = []  # filters the broker refused at the last SUBACK
        # Every outgoing topic is checked: one the broker refuses would drop the link.
        self.guard = PublishGuard(on_refused=metrics.publish_refused.inc)
        self._connects = 0
        self._ack_lock = threading.Lock()
        # Takes a burst that emptied the socket and handles it in this thread, or
        # returns False to have it queued (Pipeline.try_inline; None: always queue).
        self.inline: Callable[[list[Message]], bool] | None = None
        v5 = cfg.protocol == "5"
        client_id = cfg.client_id or f"forewarn-{site}"
        self.client = DrainingClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
            # Topics that send only rejects are shed in the network thread, before
            # they queue ahead of good readings (edge/ingest/quarantine.py).
            admit=admit,
            on_shed=quarantined.inc,
            on_burst_end=self._hand_over,
        )
        self.client.max_inflight_messages_set(cfg.receive_maximum)
        self.client.max_queued_messages_set(10_000)
        self.client.reconnect_delay_set(int(max(1, cfg.reconnect_min_s)),
                                        int(cfg.reconnect_max_s))
        password = read_secret(cfg.password_file)
        if cfg.username:
            self.client.username_pw_set(cfg.username, password)
        if cfg.tls:
            self.client.tls_set(
                ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
                certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            self.client.tls_insecure_set(cfg.tls.insecure)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_socket_open = self._on_socket_open

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        props = None
        if self.cfg.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            # Without a session expiry, MQTT 5 discards the session on disconnect and
            # nothing is redelivered (checked with paho 2.2 after a SIGKILL);
            # ReceiveMaximum lifts the 20-in-flight cap.
            props.SessionExpiryInterval = self.cfg.session_expiry_s
            props.ReceiveMaximum = self.cfg.receive_maximum
            if self.max_payload_bytes is not None:
                # The broker then discards bigger PUBLISHes for this client instead of
                # sending them: an oversized flood never reaches the socket shared with
                # good readings (docs/architecture.md, ingest).
                props.MaximumPacketSize = max_packet_size(self.max_payload_bytes)
        kwargs: dict[str, Any] = {"keepalive": self.cfg.keepalive_s}
        if self.cfg.protocol == "5":
            kwargs.update(clean_start=False, properties=props)
        try:
            self.client.connect(self.cfg.host, self.cfg.port, **kwargs)
        except OSError as exc:
            # The loop keeps retrying with backoff: a broker that starts later is fine.
            log.warning("site broker %s:%s not reachable yet (%s); retrying",
                        self.cfg.host, self.cfg.port, exc)
            self.client.connect_async(self.cfg.host, self.cfg.port, **kwargs)
        self.client.loop_start()

    def stop(self) -> None:
        self._closing.set()  # a hand-over waiting for room gives up, without acks
        self.client.disconnect()
        self.client.loop_stop()

    # -- pipeline side ---------------------------------------------------------
    def health(self) -> SourceHealth:
        if not self.connected.is_set():
            return SourceHealth(False, "site broker link down")
        if self.refused:
            return SourceHealth(False, "site broker refused the subscription to "
                                       + ", ".join(self.refused))
        return SourceHealth(True)

    def ack(self, messages: Sequence[Message]) -> None:
        """Acknowledge QoS 1 messages whose content is now durable (or deliberately shed)."""
        with self._ack_lock:
            for m in messages:
                if m.qos > 0:
                    self.client.ack(m.mid, m.qos)

    def publish(self, topic: str, payload: bytes, retain: bool = False, qos: int = 1) -> bool:
        """Queue a publish; False (counted, logged once) when the topic is quarantined."""
        if not self.guard.allow(topic):
            return False
        self.client.publish(topic, payload, qos=qos, retain=retain)
        self.client.send_now()  # on the publishing thread, not after a network-thread wake
        return True

    # -- paho callbacks (network thread: convert and enqueue only) -------------
    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # Nagle added milliseconds to every alert: p99 2.2 -> 0.77 ms at 1k msg/s with it off.
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            log.error("site broker refused the connection: %s", reason)
            return
        self._connects += 1
        if self._connects > 1:
            self.metrics.mqtt_reconnects.inc()
        qos: int = self.cfg.qos  # paho wants list[tuple[str, int]] (invariant)
        if self.cfg.protocol == "5":
            # noLocal: the agent's own alert publications never come back to it.
            opts = SubscribeOptions(qos=qos, noLocal=True)
            client.subscribe([(t, opts) for t in self.subscriptions])
        else:
            client.subscribe([(t, qos) for t in self.subscriptions])
        log.info("connected to %s:%s (session present: %s), subscribing to %s",
                 self.cfg.host, self.cfg.port, getattr(flags, "session_present", "?"),
                 ", ".join(self.subscriptions))
        if self.on_connected:
            self.on_connected()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reason_codes: Sequence[Any], properties: Any) -> None:
        # Only the broker's SUBACK says readings will flow: an ACL that denies a
        # filter answers it with a failure code here, and the connection stays up.
        granted, self.refused = [], []
        for topic, rc in zip(self.subscriptions, reason_codes, strict=False):
            if not rc.is_failure:
                granted.append(topic)
                continue
            self.refused.append(topic)
            log.error("site broker refused the subscription to %s (%s): no reading on it "
                      "reaches the agent; check the broker's ACL for this client", topic, rc)
        if granted:
            log.info("subscribed to %s", ", ".join(granted))
        self.metrics.mqtt_connected.set(1)  # with the event: both mean "readings flow"
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        self.connected.clear()
        self.metrics.mqtt_connected.set(0)
        if reason != 0:
            log.warning("lost the site broker (%s); reconnecting with backoff", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # DrainingClient hands a bytearray slice of its read buffer (no copy); the
        # decoders and the dead-letter writer accept either, so it passes as bytes.
        payload = cast(bytes, msg.payload)
        topic = msg.topic
        self._burst.append(Message(topic, payload, time.time(), msg.mid, msg.qos))
        self._burst_bytes += len(payload) + len(topic) + MESSAGE_OVERHEAD
        if len(self._burst) >= BURST_MAX:  # a client that never ends its bursts
            self._hand_over()

    def _hand_over(self) -> None:
        """Network thread, after each socket burst: its messages in one queue item.

        A full queue (``ingest.queue_size`` messages or ``ingest.queue_bytes``) makes
        this thread wait up to ``queue_wait_s`` for room: meanwhile it reads nothing,
        so a backlog stays in the socket and the broker instead of the agent's heap
        (back-pressure); only then is the burst shed.
        """
        burst, size = self._burst, self._burst_bytes
        if not burst:
            return
        self._burst, self._burst_bytes = [], 0
        inline = self.inline
        if inline is not None and self.client.drained and inline(burst):
            return
        item = burst if len(burst) > 1 else burst[0]
        try:
            if self._sized:
                cast(MessageQueue, self.inbox).put(item, timeout=self.queue_wait_s,
                                                   nbytes=size, cancel=self._closing)
            else:
                self.inbox.put(item, timeout=self.queue_wait_s)
        except queue.Full:
            if self._closing.is_set():
                # Stopping: the pipeline has drained for the last time. Unacknowledged,
                # the broker redelivers these to the next start; shed, they'd be lost.
                return
            # Explicit, counted load shedding; a shed QoS 1 message is acked so the
            # broker's in-flight window does not stall the whole stream.
            self.metrics.queue_dropped.inc(len(burst))
            for m in burst:
                if m.qos > 0:
                    self.client.ack(m.mid, m.qos)
