"""Local ledger of every payload that left the site, for the data-protection officer.

One SQLite row per payload its receiver acknowledged, whichever sender took it
off site (:mod:`edge.egress.sender`: the cloud uplink's PUBACKed reports, the
webhook's 2xx-answered alert events): time, destination, size, schema, sha256 and
the payload itself (it was allowed out; keeping it lets the officer read exactly
what was sent).
``forewarn egress report --days 30`` prints it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge.core.errors import StorageError

LEDGER_FILE = "egress/ledger.sqlite"


@dataclass(frozen=True)
class LedgerEntry:
    ts: float
    destination: str
    size: int
    schema: str
    sha256: str
    payload: bytes


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("CREATE TABLE IF NOT EXISTS egress (id INTEGER PRIMARY KEY, "
                             "ts REAL, destination TEXT, size INTEGER, schema TEXT, "
                             "sha256 TEXT, payload BLOB)")
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: cannot open egress ledger ({exc})") from exc

    def record(self, destination: str, payload: bytes, schema: str,
               ts: float | None = None) -> LedgerEntry:
        e = LedgerEntry(time.time() if ts is None else ts, destination, len(payload), schema,
                        hashlib.sha256(payload).hexdigest(), payload)
        with self._lock:
            self._db.execute("INSERT INTO egress (ts, destination, size, schema, sha256, "
                             "payload) VALUES (?, ?, ?, ?, ?, ?)",
                             (e.ts, e.destination, e.size, e.schema, e.sha256, e.payload))
        return e

    def record_many(self, destination: str, payloads: list[bytes], schema: str | list[str]
                    ) -> list[LedgerEntry]:
        """Record several payloads in one transaction (one fsync, not one per row).

        ``schema`` is one label for all, or one per payload.
        """
        now = time.time()
        schemas = [schema] * len(payloads) if isinstance(schema, str) else schema
        es = [LedgerEntry(now, destination, len(p), s, hashlib.sha256(p).hexdigest(), p)
              for p, s in zip(payloads, schemas, strict=True)]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO egress (ts, destination, size, schema, sha256, payload) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(e.ts, e.destination, e.size, e.schema, e.sha256, e.payload) for e in es])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return es

    def entries(self, since: float = 0.0) -> list[LedgerEntry]:
        with self._lock:
            rows = self._db.execute("SELECT ts, destination, size, schema, sha256, payload "
                                    "FROM egress WHERE ts >= ? ORDER BY id", (since,))
            return [LedgerEntry(r[0], r[1], r[2], r[3], r[4], bytes(r[5])) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def format_report(entries: list[LedgerEntry], days: float, show_payloads: bool = False) -> str:
    lines = [f"Egress in the last {days:g} days: {len(entries)} payloads, "
             f"{sum(e.size for e in entries)} bytes"]
    for dest in sorted({e.destination for e in entries}):
        sel = [e for e in entries if e.destination == dest]
        lines.append(f"  {dest}: {len(sel)} payloads, {sum(e.size for e in sel)} bytes, "
                     f"schemas {', '.join(sorted({e.schema for e in sel}))}")
    lines.append("time (UTC)           destination  bytes  schema  sha256")
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.ts))
        lines.append(f"{when}  {e.destination}  {e.size}  {e.schema}  {e.sha256}")
        if show_payloads:
            lines.append("    " + e.payload.decode("utf-8", "replace"))
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("egress", help="what left the site (egress ledger)")
    sub = p.add_subparsers(dest="egress_cmd", required=True)
    r = sub.add_parser("report", help="print the payloads sent off site")
    r.add_argument("--days", type=float, default=30.0)
    r.add_argument("--state-dir", type=Path, default=Path("/var/lib/forewarn"))
    r.add_argument("--payloads", action="store_true", help="print each payload too")
    r.add_argument("--json", action="store_true", help="one JSON object per payload")
    r.set_defaults(func=_report)
    k = sub.add_parser("pubkey", help="print this appliance's report-signing public key "
                       "(created on first use) for central IT to enrol")
    k.add_argument("--config", "-c", type=Path, required=True, help="agent TOML config")
    k.set_defaults(func=_pubkey)


def _pubkey(args: argparse.Namespace) -> int:
    from edge.core.config import load_config
    from edge.egress.envelope import load_or_create_key, public_pem
    from edge.models.signing import key_id

    cfg = load_config(args.config)
    key = load_or_create_key(Path(cfg.state_dir))
    site = cfg.egress.site_id or "(egress.site_id not set)"
    print(f"# site_id {site}, key id {key_id(key.public_key())}; enrol as <site_id>.pub",
          file=sys.stderr)
    print(public_pem(key), end="")
    return 0


def _report(args: argparse.Namespace) -> int:
    path = Path(args.state_dir) / LEDGER_FILE
    if not path.exists():
        print(f"{path}: no egress ledger (nothing has been sent)", file=sys.stderr)
        return 0
    led = Ledger(path)
    try:
        entries = led.entries(time.time() - args.days * 86_400)
    finally:
        led.close()
    if args.json:
        for e in entries:
            print(json.dumps({"ts": e.ts, "destination": e.destination, "size": e.size,
                              "schema": e.schema, "sha256": e.sha256,
                              "payload": e.payload.decode("utf-8", "replace")}))
    else:
        print(format_report(entries, args.days, args.payloads))
    return 0
