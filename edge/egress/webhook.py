"""Optional webhook: every alert event POSTed as JSON, from a durable SQLite outbox.

An event is written to the outbox (WAL, synchronous=FULL) before any attempt, and
deleted only after the receiver answered 2xx, so a receiver that is down, slow or
restarting loses nothing: delivery is at least once, in order, with exponential
backoff. The outbox is bounded; past the bound the oldest events are dropped and
counted (the alert history itself stays complete in the alert store).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import urllib.error
import urllib.request
from pathlib import Path

from edge.core.config import read_secret
from edge.core.errors import StorageError

log = logging.getLogger(__name__)


class Webhook:
    def __init__(self, url: str, path: Path, *, max_rows: int = 10_000, timeout_s: float = 5.0,
                 token_file: Path | None = None, backoff_max_s: float = 60.0) -> None:
        self.url = url
        self.max_rows = max_rows
        self.timeout_s = timeout_s
        self.backoff_max_s = backoff_max_s
        self.token = read_secret(token_file)
        self.delivered = 0
        self.failures = 0
        self.dropped = 0
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

    def put(self, body: bytes) -> None:
        with self._lock:
            self._db.execute("INSERT INTO outbox (body) VALUES (?)", (body,))
            over = self.depth() - self.max_rows
            if over > 0:
                self._db.execute("DELETE FROM outbox WHERE id IN "
                                 "(SELECT id FROM outbox ORDER BY id LIMIT ?)", (over,))
                self.dropped += over
        self._wake.set()

    def depth(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

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
            if self._post(row[1]):
                with self._lock:
                    self._db.execute("DELETE FROM outbox WHERE id = ?", (row[0],))
                self.delivered += 1
                delay = 0.5
            else:
                self.failures += 1
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff_max_s)

    def _post(self, body: bytes) -> bool:
        headers = {"Content-Type": "application/json", "User-Agent": "forewarn-agent"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                ok = 200 <= resp.status < 300
        except (urllib.error.URLError, OSError, ValueError) as exc:
            if self.failures % 20 == 0:  # one line per 20 failed attempts, not a flood
                log.warning("webhook %s not delivered (%s); %d waiting", self.url, exc,
                            self.depth())
            return False
        return bool(ok)
