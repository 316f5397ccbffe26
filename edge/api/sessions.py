"""Remembered device sign-in: a revocable session cookie that still names a person.

A person signs a device in once with their own token (``POST /api/session``);
the agent answers with a cookie holding a long random secret and keeps only the
secret's SHA-256 in SQLite under the agent's state directory, so sessions
survive restarts and a copy of the database signs nobody in. The secret is 32
random bytes: a plain hash is enough (there is nothing to brute-force), and a
lookup by hash is an index seek whose timing says nothing about other secrets.

A session names the person whose token opened it and the device label they
typed; every action through it is audited with both. It ends at its expiry
(``api.session_days``), when it is revoked (by anyone signed in, audited), or
when its person's token is removed from the tokens file.

Cookie: ``HttpOnly`` (scripts cannot read it), ``SameSite=Strict`` (never sent
on a request another site starts), ``Path=/``, ``Secure`` when the request came
over TLS. Mutations authenticated by the cookie must also carry the header
``X-Forewarn-Request: 1``: a cross-site HTML form cannot set a custom header,
and a cross-site script would need a CORS pre-flight the agent never grants.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request

from edge.core.errors import StorageError

COOKIE = "forewarn_session"
CSRF_HEADER = "X-Forewarn-Request"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_TOUCH_EVERY_S = 60.0  # last_seen is advisory: one write a minute per session at most

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    secret_sha256 BLOB NOT NULL UNIQUE,
    person TEXT NOT NULL,
    device TEXT NOT NULL,
    client TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    last_seen REAL NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class Session:
    id: int
    person: str
    device: str
    client: str
    created: float
    expires: float
    last_seen: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "replace")).digest()


class SessionStore:
    """Sessions in one SQLite file (``None``: in memory, for tests and read-only setups)."""

    def __init__(self, path: Path | None, lifetime_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.path, self.lifetime_s, self._clock = path, lifetime_s, clock
        self._lock = threading.Lock()
        target = ":memory:"
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            target = str(path)
        try:
            self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise StorageError(f"{target}: cannot open the session store ({exc})") from exc

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path or ':memory:'}: session store: {exc}") from exc

    def create(self, person: str, device: str, client: str) -> tuple[str, Session]:
        """A new session; returns the cookie secret (never stored) and the session."""
        now = self._clock()
        self._run("DELETE FROM sessions WHERE expires <= ?", (now,))
        secret = secrets.token_urlsafe(32)
        rows = self._run(
            "INSERT INTO sessions (secret_sha256, person, device, client, created, expires, "
            "last_seen) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (_digest(secret), person, device, client, now, now + self.lifetime_s, now))
        return secret, Session(int(rows[0][0]), person, device, client, now,
                               now + self.lifetime_s, now)

    def lookup(self, secret: str, people: Collection[str]) -> Session | None:
        """The live session of this secret, if its person still has a token."""
        now = self._clock()
        rows = self._run("SELECT id, person, device, client, created, expires, last_seen "
                         "FROM sessions WHERE secret_sha256 = ?", (_digest(secret),))
        if not rows:
            return None
        s = Session(*rows[0])
        if s.expires <= now or s.person not in people:
            return None
        if now - s.last_seen > _TOUCH_EVERY_S:
            self._run("UPDATE sessions SET last_seen = ? WHERE id = ?", (now, s.id))
            s = replace(s, last_seen=now)
        return s

    def list(self) -> list[Session]:
        rows = self._run("SELECT id, person, device, client, created, expires, last_seen "
                         "FROM sessions WHERE expires > ? ORDER BY id", (self._clock(),))
        return [Session(*r) for r in rows]

    def revoke(self, session_id: int) -> Session | None:
        rows = self._run("DELETE FROM sessions WHERE id = ? RETURNING id, person, device, "
                         "client, created, expires, last_seen", (session_id,))
        return Session(*rows[0]) if rows else None

    def close(self) -> None:
        with self._lock:
            self._db.close()


def cookie_session(request: Request, store: SessionStore,
                   people: Collection[str]) -> Session | None:
    """The request's session, from its cookie; None without a (live) one.

    A mutation through the cookie without the custom header is refused (403):
    that is what a cross-site form would send.
    """
    secret = request.cookies.get(COOKIE)
    if not secret or len(secret) > 256:
        return None
    session = store.lookup(secret, people)
    if session is None:
        return None
    if request.method not in SAFE_METHODS and request.headers.get(CSRF_HEADER) != "1":
        raise HTTPException(403, f"a signed-in device must send the header '{CSRF_HEADER}: 1' "
                                 "with every change (cross-site request protection)")
    request.state.session = session
    return session
