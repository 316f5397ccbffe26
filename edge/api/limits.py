"""Request limits applied before routing, auth and body parsing (pure ASGI middleware).

FastAPI dependencies run after the body has been read, so a limit there lets a
tokenless client make the agent hold a 100 MB body before the 401. This layer
sees every request first and refuses, in order:

- a ``Host`` the agent does not answer to (400): a browser tricked by DNS
  rebinding sends the attacker's name, never one of ours;
- a body over ``max_body_bytes`` (413): by ``Content-Length`` before reading,
  and by counting what a chunked body delivers, cut at the limit;
- a live ``/api/events`` stream beyond the per-address (429) or total (503)
  cap, both with ``Retry-After``: every stream holds a socket for minutes.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STREAM_PATH = "/api/events"
log = logging.getLogger(__name__)


def default_hosts(listen_host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """Loopback names, the listen address, this machine's name, and ``api.allowed_hosts``."""
    names = {"localhost", "127.0.0.1", "::1", listen_host.lower().strip("[]")}
    hostname = socket.gethostname().lower()
    names |= {hostname, hostname.split(".")[0]}
    return frozenset(n.lower().rstrip(".") for n in [*names, *extra] if n)


def host_name(header: str) -> str:
    """``Host`` header → bare lower-case name (port and IPv6 brackets removed)."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1:].partition("]")[0]
    name, sep, port = h.rpartition(":")
    return (name if sep and port.isdigit() else h).rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass
class RequestLimits:
    max_body_bytes: int = 65_536
    max_streams: int = 64
    max_streams_per_client: int = 4
    allowed_hosts: frozenset[str] = field(default_factory=lambda: default_hosts("127.0.0.1"))
    stream_retry_s: int = 30

    def host_ok(self, header: str | None) -> bool:
        # An IP literal cannot be a rebinding attack (the browser sends the name it
        # resolved), and a client without a Host header is not a browser.
        if header is None or "*" in self.allowed_hosts:
            return True
        name = host_name(header)
        return name in self.allowed_hosts or _is_ip(name)


class LimitsMiddleware:
    def __init__(self, app: ASGIApp, limits: RequestLimits,
                 on_refused: Callable[[str], None] | None = None) -> None:
        self.app, self.limits = app, limits
        self._on_refused = on_refused or (lambda reason: None)
        self._streams: dict[str, int] = {}
        self._total = 0
        self._logged: set[str] = set()

    @property
    def live_streams(self) -> int:
        return self._total

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        lim = self.limits
        if not lim.host_ok(headers.get("host")):
            name = host_name(headers.get("host", ""))[:100]
            await self._refuse(send, 400, "host", f"Host {name!r} is not a name this agent "
                               "answers to (add it to api.allowed_hosts)")
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > lim.max_body_bytes:
            await self._refuse(send, 413, "body", f"request body of {int(length)} bytes is "
                               f"over the limit of {lim.max_body_bytes} (api.max_body_bytes)")
            return
        if scope["path"] == STREAM_PATH and scope["method"] == "GET":
            await self._stream(scope, receive, send)
            return
        await self._counted(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Runs the app with a receive that cuts the body at the limit (chunked bodies)."""
        seen, over = 0, False
        limit = self.limits.max_body_bytes
        detail = f"request body over the limit of {limit} bytes (api.max_body_bytes)"

        async def counted() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    # FastAPI re-raises an HTTPException met while reading the body,
                    # so the client gets this 413 and the rest is never read.
                    raise HTTPException(413, detail)
            return message

        replaced = False

        async def guarded(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return  # the rest of the app's own answer to the cut body
            if over and message["type"] == "http.response.start" and message["status"] != 413:
                replaced = True  # whatever the app made of the cut body, the answer is 413
                await self._send_error(send, 413, detail)
                return
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        finally:
            if over:
                self._note("body")

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope["client"][0] if scope.get("client") else "unknown"
        lim = self.limits
        if self._streams.get(client, 0) >= lim.max_streams_per_client:
            await self._refuse(send, 429, "streams_client",
                               f"{lim.max_streams_per_client} live event streams from this "
                               "address already (api.max_streams_per_client)",
                               retry_after=lim.stream_retry_s)
            return
        if self._total >= lim.max_streams:
            await self._refuse(send, 503, "streams_total",
                               f"{lim.max_streams} live event streams already "
                               "(api.max_streams); poll /api/alerts meanwhile",
                               retry_after=lim.stream_retry_s)
            return
        # One event loop runs every request: no lock needed between these counts.
        self._streams[client] = self._streams.get(client, 0) + 1
        self._total += 1
        try:
            await self._counted(scope, receive, send)
        finally:
            self._total -= 1
            left = self._streams[client] - 1
            if left:
                self._streams[client] = left
            else:
                del self._streams[client]

    def _note(self, reason: str) -> None:
        self._on_refused(reason)
        if reason not in self._logged:  # once per reason: a flood must not flood the log
            self._logged.add(reason)
            log.warning("API refused a request (%s); further refusals are only counted "
                        "(forewarn_api_refused_total)", reason)

    async def _refuse(self, send: Send, status: int, reason: str, detail: str,
                      retry_after: int | None = None) -> None:
        self._note(reason)
        await self._send_error(send, status, detail, retry_after)

    @staticmethod
    async def _send_error(send: Send, status: int, detail: str,
                          retry_after: int | None = None) -> None:
        body = orjson.dumps({"detail": detail})
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode()),
                   (b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff")]
        if retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode()))
        if status in (400, 413):  # the rest of the request is not read: do not reuse
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
