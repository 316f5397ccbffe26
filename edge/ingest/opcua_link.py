"""One OPC UA server: connect, check trust, subscribe, and keep the samples coming.

The subscription is driven through asyncua's service calls, not its high-level
``Subscription`` object or its auto-reconnect: the agent must know which
notification message it has seen last, and the order of what it receives, to give
the guarantee "no sample twice, none lost that the server still holds":

* every connection is a new :class:`asyncua.Client`; after the first, the link asks
  the server to **transfer** the subscription it had into the new session. The
  server kept it, with its per-node queues, for ``subscription_lifetime_s``; the
  notification messages it sent but the agent never received are fetched with
  **Republish** (in order, before new ones), then publishing resumes;
* when the transfer is refused (a restarted server, an expired subscription), the
  subscription is **re-created**; the server then sends each node's current value,
  which :class:`~edge.ingest.opcua_map.DedupeWindow` drops when it was delivered;
* reconnect attempts back off from ``reconnect_min_s`` to ``reconnect_max_s``.

Each publish response becomes one :class:`~edge.ingest.batch.DecodedBatch`; while
the inbox is full the link stops asking for more, so the backlog waits in the
server's queues (bounded there, flagged with the overflow bit when it spills).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from asyncua import Client, ua

from edge.core.errors import SourceError
from edge.core.opcua_config import OpcUaServerConfig
from edge.ingest.batch import DecodedBatch
from edge.ingest.opcua_client import describe, failure_reason, new_client
from edge.ingest.opcua_map import SampleMapper
from edge.ingest.opcua_nodes import monitored_items, resolve_nodes
from edge.ingest.ratelog import RateLimitedLog

__all__ = ["LinkEvents", "ServerLink"]

log = logging.getLogger(__name__)

_EPOCH_MIN = 1.0  # OPC UA's "no time" (1601-01-01) and anything before 1970: absent
_MAX_REPUBLISH = 1000  # notification messages fetched at most to fill one gap

Emit = Callable[[DecodedBatch | None], Awaitable[None]]


class LinkEvents(Protocol):
    """What a link reports (the source turns it into health and metrics)."""

    def state(self, connected: bool, detail: str) -> None: ...
    def failed(self, reason: str) -> None: ...  # a connection attempt, opcua_client.REASONS
    def subscribed(self, how: str) -> None: ...  # "transferred" | "created"
    def republished(self, n: int) -> None: ...  # notification messages fetched again


def _epoch(t: dt.datetime | None) -> float | None:
    if t is None:
        return None
    if t.tzinfo is None:  # asyncua gives UTC
        t = t.replace(tzinfo=dt.UTC)
    s = t.timestamp()
    return s if s >= _EPOCH_MIN else None


class ServerLink:
    """Connects to one server until stopped; reports samples and its state."""

    def __init__(self, cfg: OpcUaServerConfig, mapper: SampleMapper, emit: Emit,
                 events: LinkEvents) -> None:
        self.cfg = cfg
        self.mapper = mapper
        self.emit = emit
        self.events = events
        self.sessions = 0
        self._sub_id: int | None = None
        self._last_seq: int | None = None  # last notification message handled
        self._last_publish = 0.0  # monotonic: any publish response, keep-alives included
        self._stale_s = 3 * self._keepalive_s() + cfg.request_timeout_s
        self._lost: asyncio.Event | None = None
        self._session_obj: Any = None  # the UaSession of the live client (for Republish)
        self._missing: list[str] = []  # nodes the server does not have, with why
        self._ratelog = RateLimitedLog(log, 60.0)

    # -- the connect loop ----------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        delay = self.cfg.reconnect_min_s
        while not stop.is_set():
            try:
                subscribed = await self._session(stop)
            except Exception as exc:  # any failure of one attempt: counted, retried
                subscribed = False
                reason = failure_reason(exc)
                self.events.failed(reason)
                why = f"{self.cfg.endpoint}: {reason}: {describe(exc)}"
                self.events.state(False, why)
                self._ratelog.log(logging.WARNING, f"{self.cfg.name}:{reason}",
                                  "OPC UA server %s: %s (retry in %.3g s)", self.cfg.name, why,
                                  delay)
            if subscribed:
                delay = self.cfg.reconnect_min_s
            if stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if not subscribed:
                delay = min(delay * 2, self.cfg.reconnect_max_s)

    async def _session(self, stop: asyncio.Event) -> bool:
        """One session, until the link is lost or ``stop``; True when it got subscribed."""
        client = await new_client(self.cfg)
        lost = self._lost = asyncio.Event()
        why = ["connection lost"]

        async def on_lost(exc: Exception) -> None:
            why[0] = f"connection lost ({describe(exc)})"
            lost.set()

        client.connection_lost_callback = on_lost
        subscribed = False
        try:
            await client.connect()
            self.sessions += 1
            try:
                how, missing = await self._subscribe(client)
            except Exception:
                # A half-made subscription is no use to the next session: delete it.
                if self._sub_id is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(client.delete_subscriptions([self._sub_id]),
                                               2.0)
                self._sub_id = None
                raise
            subscribed = True
            self.events.subscribed(how)
            detail = f"{len(missing)} of {len(self.cfg.nodes)} nodes unavailable: " \
                     + "; ".join(missing[:5]) if missing else ""
            self.events.state(True, detail)
            log.info("OPC UA server %s: subscribed (%s), %d nodes", self.cfg.name, how,
                     len(self.cfg.nodes) - len(missing))
            if not await self._watch(lost, stop) and how == "transferred":
                # A server that accepts a transfer but never publishes on it again:
                # the next session starts a fresh subscription instead.
                log.warning("OPC UA server %s: no publish since the transfer; the next "
                            "session re-creates the subscription", self.cfg.name)
                self._sub_id = None
            if not stop.is_set():
                self.events.state(False, f"{self.cfg.endpoint}: {why[0]}")
                log.warning("OPC UA server %s: %s; reconnecting", self.cfg.name, why[0])
        finally:
            await self._close(client, delete=stop.is_set())
        return subscribed

    async def _watch(self, lost: asyncio.Event, stop: asyncio.Event) -> bool:
        """Until the link is lost, ``stop``, or the server stops answering publishes.

        False when it ended because no publish response (not even a keep-alive) came
        for ``_stale_s`` seconds since the session started.
        """
        start = self._last_publish = time.monotonic()
        while not (lost.is_set() or stop.is_set()):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_first(lost, stop), 1.0)
            if time.monotonic() - self._last_publish > self._stale_s:
                lost.set()  # no data, no keep-alive: the subscription is gone
                return self._last_publish > start
        return True

    async def _close(self, client: Client, delete: bool) -> None:
        """Stop the client's tasks; close the session only when the agent stops.

        Otherwise the session and its subscription are left to the server, for the
        next session to take over: the socket is dropped first, so no CloseSession can
        reach the server over a link that only seemed dead.
        """
        client.uaclient.request_disconnect()
        if delete:
            self._sub_id = None
        else:
            with contextlib.suppress(Exception):
                client.disconnect_socket()
        with contextlib.suppress(Exception):
            # Cancels the client's supervisor, watchdog, renewal and publish tasks; with
            # the socket open, asks the server to close the session and delete its
            # subscriptions.
            await asyncio.wait_for(client.close_session(), 2.0)
        with contextlib.suppress(Exception):
            client.disconnect_socket()

    # -- the subscription ----------------------------------------------------------
    def _keepalive_s(self) -> float:
        """Keep-alive period: short enough to notice a dead subscription in seconds."""
        cfg = self.cfg
        return max(cfg.publishing_interval_ms / 1000, min(5.0, cfg.subscription_lifetime_s / 4))

    async def _subscribe(self, client: Client) -> tuple[str, list[str]]:
        """Transfer the previous subscription, else create one; (how, nodes missing)."""
        self._session_obj = client.uaclient.session
        if self._sub_id is not None and await self._transfer(client):
            return "transferred", self._missing
        self._missing = await self._create(client)
        return "created", self._missing

    async def _transfer(self, client: Client) -> bool:
        assert self._sub_id is not None
        params = ua.TransferSubscriptionsParameters(SubscriptionIds=[self._sub_id],
                                                    SendInitialValues=False)
        try:
            results = await client.uaclient.transfer_subscriptions(params)
        except ua.UaStatusCodeError as exc:  # e.g. BadServiceUnsupported
            log.info("OPC UA server %s: transfer refused (%s); re-creating", self.cfg.name,
                     describe(exc))
            return False
        if not results or not results[0].StatusCode.is_good():
            status = results[0].StatusCode.name if results else "no result"
            log.info("OPC UA server %s: subscription %s not transferable (%s); re-creating",
                     self.cfg.name, self._sub_id, status)
            return False
        session = client.uaclient.session
        # Messages the server sent but this agent never handled, oldest first, before
        # publishing resumes (so each node's samples stay in order).
        available = [s for s in results[0].AvailableSequenceNumbers
                     if self._last_seq is None or s > self._last_seq]
        if available:
            first = min(available) if self._last_seq is None else self._last_seq + 1
            await self._fill_gap(first, max(available) + 1)
            self._last_seq = max(available)
        # asyncua has no public call to attach a callback to a transferred subscription.
        session._subscription_callbacks[self._sub_id] = self._on_publish
        client.uaclient.ensure_publish_loop()
        return True

    async def _create(self, client: Client) -> list[str]:
        cfg = self.cfg
        self._sub_id, self._last_seq = None, None
        node_ids, missing = await resolve_nodes(client, cfg.nodes)
        pub = cfg.publishing_interval_ms
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=pub,
            RequestedLifetimeCount=math.ceil(cfg.subscription_lifetime_s * 1000 / pub),
            RequestedMaxKeepAliveCount=max(1, math.ceil(self._keepalive_s() * 1000 / pub)),
            MaxNotificationsPerPublish=0, PublishingEnabled=True, Priority=0)
        result = await client.uaclient.create_subscription(params, self._on_publish)
        self._sub_id = result.SubscriptionId
        items = monitored_items(cfg, node_ids)
        if items:
            created = await client.uaclient.create_monitored_items(
                ua.CreateMonitoredItemsParameters(SubscriptionId=self._sub_id,
                                                  ItemsToCreate=items,
                                                  TimestampsToReturn=ua.TimestampsToReturn.Both))
            for item, res in zip(items, created, strict=True):
                if not res.StatusCode.is_good():
                    missing.append(f"{cfg.nodes[item.RequestedParameters.ClientHandle].label}: "
                                   f"{res.StatusCode.name}")
        for m in missing:
            self._ratelog.log(logging.WARNING, f"{cfg.name}:node:{m}",
                              "OPC UA server %s: node %s", cfg.name, m)
        if len(missing) == len(cfg.nodes):
            raise SourceError("config", f"none of the {len(cfg.nodes)} nodes can be read: "
                              + "; ".join(missing[:5]))
        return missing

    # -- notifications -------------------------------------------------------------
    async def _on_publish(self, result: ua.PublishResult) -> None:
        """One publish response (or a republished message): samples -> one batch."""
        self._last_publish = time.monotonic()
        msg = result.NotificationMessage
        if not msg.NotificationData:
            return  # a keep-alive
        seq = int(msg.SequenceNumber)
        if self._last_seq is not None and seq <= self._last_seq:
            return  # handled already (a republish raced a publish)
        if self._last_seq is not None and seq > self._last_seq + 1:
            await self._fill_gap(self._last_seq + 1, seq)
        self._last_seq = seq
        await self._handle(msg)

    async def _fill_gap(self, first: int, upto: int) -> None:
        """Messages ``first..upto-1`` never arrived: fetch them (Republish) first, in order."""
        for missed in range(first, min(upto, first + _MAX_REPUBLISH)):
            try:
                msg = await self._session_obj.republish(self._sub_id, missed)
            except Exception:  # BadMessageNotAvailable: the server no longer has it
                self._ratelog.log(logging.WARNING, f"{self.cfg.name}:seq",
                                  "OPC UA server %s: notification message %d lost (the "
                                  "server no longer has it)", self.cfg.name, missed)
                continue
            if msg.NotificationData:
                self.events.republished(1)
                await self._handle(msg)

    async def _handle(self, msg: ua.NotificationMessage) -> None:
        now = time.time()
        m, n_nodes = self.mapper, len(self.cfg.nodes)
        for notif in msg.NotificationData:
            if isinstance(notif, ua.DataChangeNotification):
                m.notification()
                for item in notif.MonitoredItems:
                    h = item.ClientHandle
                    if not 0 <= h < n_nodes:
                        continue
                    dv = item.Value
                    value: Any = dv.Value.Value if dv.Value is not None else None
                    status = dv.StatusCode.value if dv.StatusCode is not None else 0
                    reason = m.update(h, value, status, _epoch(dv.SourceTimestamp),
                                      _epoch(dv.ServerTimestamp), now)
                    if reason is not None and reason != "duplicate":
                        self._bad_sample(h, reason, value, status)
            elif isinstance(notif, ua.StatusChangeNotification):
                self._status_change(notif.Status)
        await self.emit(m.take())  # None when nothing was kept or dropped (duplicates)

    def _bad_sample(self, handle: int, reason: str, value: Any, status: int) -> None:
        node = self.cfg.nodes[handle]
        detail = ua.StatusCode(status).name if reason == "opcua_bad_status" \
            else f"{type(value).__name__} {value!r:.40}"
        self._ratelog.log(logging.WARNING, f"{self.cfg.name}:{handle}:{reason}",
                          "OPC UA server %s: node %s (%s/%s): %s dropped (%s)", self.cfg.name,
                          node.label, node.asset, node.signal, reason, detail)

    def _status_change(self, status: ua.StatusCode) -> None:
        # BadTimeout: the server ended the subscription; BadShutdown: the link is gone
        # (said already, as "connection lost").
        level = logging.INFO if status.name == "BadShutdown" else logging.WARNING
        log.log(level, "OPC UA server %s: subscription status %s", self.cfg.name, status.name)
        if not status.is_good() and self._lost is not None:
            if status.name == "BadTimeout":
                self._sub_id = None  # nothing left to transfer
            self._lost.set()


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
