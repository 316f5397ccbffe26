"""Optional webhook: every alert event POSTed as JSON, from a durable SQLite outbox.

A :class:`~edge.egress.sender.Sender`, like the cloud uplink: an event is written
to the outbox (WAL, synchronous=FULL) before any attempt, and deleted only after
the receiver answered 2xx and the delivery is recorded in the egress ledger, so a
receiver that is down, slow or restarting loses nothing and ``forewarn egress
report`` lists every event that left: delivery is at least once, in order, with
exponential backoff. A delivery the ledger cannot record is retried like a failed
one (the receiver may then see it twice; nothing leaves unrecorded for good). The
outbox is bounded; past the bound the oldest events are dropped and counted (the
alert history itself stays complete in the alert store).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from edge.core.config import read_secret
from edge.core.errors import StorageError
from edge.core.metrics import StateRow
from edge.egress.ledger import Ledger
from edge.egress.sender import SenderHealth

log = logging.getLogger(__name__)


def destination_of(url: str) -> str:
    """The URL as the ledger records it: no user info, query or fragment (secrets).

    >>> destination_of("https://bot:pw@hooks.example.com:8443/alerts?key=s3cret")
    'https://hooks.example.com:8443/alerts'
    """
    u = urllib.parse.urlsplit(url)
    host = u.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    port = f":{u.port}" if u.port else ""
    return f"{u.scheme}://{host}{port}{u.path}"


def schema_of(body: bytes) -> str:
    """The ledger's schema label: the event's own ``schema`` field."""
    try:
        doc = json.loads(body)
    except ValueError:
        return "unknown"
    schema = doc.get("schema") if isinstance(doc, dict) else None
    return schema if isinstance(schema, str) else "unknown"


class Webhook:
    def __init__(self, url: str, path: Path, *, ledger: Ledger | None = None,
                 max_rows: int = 10_000, timeout_s: float = 5.0,
                 token_file: Path | None = None, backoff_max_s: float = 60.0) -> None:
        self.url = url
        self.destination = destination_of(url)
        self.ledger = ledger
        self.max_rows = max_rows
        self.timeout_s = timeout_s
        self.backoff_max_s = backoff_max_s
        self.token = read_secret(token_file)
        self.delivered = 0
        self.failures = 0
        self.dropped = 0
        self.ledger_errors = 0
        self._ok = True  # the last attempt reached the receiver (none yet: no complaint)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("CREATE TABLE IF NOT EXISTS outbox "
                             "(id INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL)")
        except sqlite3.Error as exc:
            raise StorageError(f"{path}: cannot open webhook outbox ({exc})") from exc

    def put(self, record: bytes) -> None:
        with self._lock:
            self._db.execute("INSERT INTO outbox (body) VALUES (?)", (record,))
            over = self.depth() - self.max_rows
            if over > 0:
                self._db.execute("DELETE FROM outbox WHERE id IN "
                                 "(SELECT id FROM outbox ORDER BY id LIMIT ?)", (over,))
                self.dropped += over
        self._wake.set()

    def depth(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def health(self) -> SenderHealth:
        if self._ok:
            return SenderHealth(True, self.depth())
        return SenderHealth(False, self.depth(), f"webhook {self.destination} not answering "
                            "2xx; events wait in the outbox")

    def metric_state(self) -> list[StateRow]:
        return [("forewarn_webhook_outbox_depth", "Alert events waiting for the webhook",
                 "gauge", float(self.depth())),
                ("forewarn_webhook_delivered_total", "Alert events the webhook accepted",
                 "counter", float(self.delivered)),
                ("forewarn_webhook_dropped_total", "Alert events dropped from a full outbox",
                 "counter", float(self.dropped))]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="forewarn-webhook", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(self.timeout_s + 1)
        self._db.close()

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            with self._lock:
                row = self._db.execute("SELECT id, body FROM outbox ORDER BY id LIMIT 1").fetchone()
            if row is None:
                self._wake.wait(5.0)
                self._wake.clear()
                continue
            if self._post(row[1]) and self._record(row[1]):
                with self._lock:
                    self._db.execute("DELETE FROM outbox WHERE id = ?", (row[0],))
                self.delivered += 1
                delay = 0.5
            else:
                self.failures += 1
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff_max_s)

    def _record(self, body: bytes) -> bool:
        """Ledger first, then the outbox delete: a crash between re-sends and records
        twice (true: it left twice); the other order could lose a delivery's record."""
        if self.ledger is None:
            return True
        try:
            self.ledger.record(self.destination, bytes(body), schema_of(body))
        except (sqlite3.Error, StorageError) as exc:
            self.ledger_errors += 1
            if self.ledger_errors % 20 == 1:
                log.error("webhook delivery to %s not recorded in the egress ledger (%s); "
                          "retried", self.destination, exc)
            return False
        return True

    def _post(self, body: bytes) -> bool:
        headers = {"Content-Type": "application/json", "User-Agent": "forewarn-agent"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                ok = 200 <= resp.status < 300
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self._ok = False
            if self.failures % 20 == 0:  # one line per 20 failed attempts, not a flood
                log.warning("webhook %s not delivered (%s); %d waiting", self.url, exc,
                            self.depth())
            return False
        self._ok = bool(ok)
        return bool(ok)
