"""OPC UA servers as input sources (edge/ingest/source.py), one source per server.

Each source runs its own thread with an asyncio loop and one asyncua client
(edge/ingest/opcua_link.py): it subscribes to the configured nodes and puts each
publish response into the hot loop's inbox as one
:class:`~edge.ingest.batch.DecodedBatch` whose ``origin`` is the source's name
(``opcua:<server name>``). asyncua is imported only when this module is, and the
agent imports it only when ``[[opcua.servers]]`` is configured (RSS on the gateway).

Durability. OPC UA has no acknowledgement a source could hold back until the
readings it carried are stored: the client acknowledges a notification message
when it has received it, and :meth:`OpcUaSource.ack` does nothing. What bridges an
outage is the server: it keeps the subscription for ``subscription_lifetime_s`` and
up to ``queue_size`` samples per node, and hands them over when the agent comes back
(subscription transfer, then Republish of what was sent but not received). What a
server resends that was already delivered is dropped by the dedupe window (per
node, the timestamps of its last ``min(max(queue_size, 16), 1024)`` samples). So a
link outage or a server restart loses nothing the server still holds; what the
agent had received but not yet stored when it crashed (at most one storage flush,
``storage.flush_interval_s``) is lost, unlike QoS 1 MQTT, which the broker redelivers.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from edge.core.metrics import Metrics
from edge.core.opcua_config import OpcUaServerConfig
from edge.ingest.batch import DecodedBatch
from edge.ingest.opcua_link import ServerLink
from edge.ingest.opcua_map import SampleMapper
from edge.ingest.source import SourceHealth

__all__ = ["OpcUaSource"]

log = logging.getLogger(__name__)


class _AsyncuaNoise(logging.Filter):
    """asyncua logs a lost link as an ERROR with a traceback from its publish loop, and
    every refused request; the source says each once, plainly, rate-limited."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ConnectionError):
            return False
        text = record.getMessage()
        # A refused request (ServiceFault) is reported by the source, with its status.
        return not (text.startswith("ServiceFault") or "connection is closed" in text
                    or "connection wasn't established" in text)


def _quiet_asyncua() -> None:
    lib = logging.getLogger("asyncua")
    if lib.level == logging.NOTSET:  # its INFO lines are per request: WARNING and up
        lib.setLevel(logging.WARNING)
    # A filter sees only records logged on its own logger, not on its children.
    for name in ("asyncua.client.ua_session", "asyncua.client.ua_session.UaSession",
                 "asyncua.client.ua_client.UASocketProtocol"):
        session = logging.getLogger(name)
        if not any(isinstance(f, _AsyncuaNoise) for f in session.filters):
            session.addFilter(_AsyncuaNoise())


class Inbox(Protocol):
    def put_nowait(self, item: Any) -> None: ...  # queue.Full when full


class OpcUaSource:
    """One OPC UA server: start, stop, ack (nothing to do), health."""

    def __init__(self, cfg: OpcUaServerConfig, inbox: Inbox, metrics: Metrics) -> None:
        _quiet_asyncua()
        self.name = f"opcua:{cfg.name}"
        self.cfg = cfg
        self.inbox = inbox
        self.mapper = SampleMapper([(n.asset, n.signal) for n in cfg.nodes],
                                   dedupe_per_node=min(max(cfg.queue_size, 16), 1024),
                                   origin=self.name)
        self._m = metrics
        s = cfg.name
        self._connected_gauge = metrics.opcua_connected.labels(s)
        self._connected_gauge.set(0)
        self._counters = [  # mapper attribute -> its counter, exported as deltas
            ("samples", metrics.opcua_samples.labels(s)),
            ("duplicates", metrics.opcua_duplicates.labels(s)),
            ("overflows", metrics.opcua_queue_overflows.labels(s)),
            ("server_ts", metrics.opcua_timestamp_fallbacks.labels(s, "server")),
            ("receipt_ts", metrics.opcua_timestamp_fallbacks.labels(s, "receipt")),
        ]
        self._seen = dict.fromkeys((a for a, _ in self._counters), 0)
        self._connected = False
        self._detail = "not started"
        self._sessions = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    # -- Source ------------------------------------------------------------------
    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,),
                                        name=f"forewarn-{self.name}", daemon=True)
        self._thread.start()
        ready.wait(5)

    def stop(self) -> None:
        """Ends the session (its subscription deleted on the server) and the thread."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
        self._connected_gauge.set(0)

    def ack(self, items: Sequence[object]) -> None:
        """Nothing to acknowledge upstream (see the module docstring: durability)."""

    def health(self) -> SourceHealth:
        return SourceHealth(self._connected, self._detail)

    # -- the thread ----------------------------------------------------------------
    def _run(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._main(ready))
        except Exception:  # the agent keeps running without this server
            log.exception("OPC UA source %s stopped on an error", self.name)
            self.state(False, "stopped on an internal error (see the log)")

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        ready.set()
        await ServerLink(self.cfg, self.mapper, self._emit, self).run(self._stop)

    # -- LinkEvents (called in the source's thread) ------------------------------------
    def failed(self, reason: str) -> None:
        self._m.opcua_connect_errors.labels(self.cfg.name, reason).inc()

    def subscribed(self, how: str) -> None:
        self._m.opcua_subscriptions.labels(self.cfg.name, how).inc()

    def republished(self, n: int) -> None:
        self._m.opcua_republished.labels(self.cfg.name).inc(n)

    def state(self, connected: bool, detail: str) -> None:
        if connected and not self._connected:
            self._sessions += 1
            if self._sessions > 1:
                self._m.opcua_reconnects.labels(self.cfg.name).inc()
        self._connected, self._detail = connected, detail
        self._connected_gauge.set(1 if connected else 0)

    async def _emit(self, batch: DecodedBatch | None) -> None:
        self._sync_counters()
        assert self._stop is not None
        if batch is None:
            return
        # A full inbox: wait, and ask the server for nothing more meanwhile (this runs
        # inside the publish loop); the backlog stays in the server's queues.
        while not self._stop.is_set():
            try:
                self.inbox.put_nowait(batch)
                return
            except queue.Full:
                await asyncio.sleep(0.02)

    def _sync_counters(self) -> None:
        for attr, counter in self._counters:
            n = getattr(self.mapper, attr)
            if n != self._seen[attr]:
                counter.inc(n - self._seen[attr])
                self._seen[attr] = n
