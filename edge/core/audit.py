"""Append-only, hash-chained audit log (JSON lines).

Each line is one entry ``{seq, ts, actor, action, details, prev_hash, hash}``.
``hash`` is the SHA-256 of the canonical JSON of the entry without ``hash``
(sorted keys, no spaces), and ``prev_hash`` is the previous entry's ``hash``
(64 zeros for the first). Editing, deleting, inserting or reordering a line
breaks the chain at that line, which :func:`verify` reports. Truncating the tail
leaves a valid shorter chain: record the head (:func:`head`, printed by
``forewarn audit verify``) elsewhere and pass it back as ``expect_head``.

Appends are serialised across threads and processes (the agent, the CLI and
Ansible may write at once) with ``flock`` on the log file itself, written with
``O_APPEND`` in one ``write`` and fsynced before :meth:`AuditLog.record` returns.
The descriptor is close-on-exec; a bare ``fork()`` during an append would share
the lock with the child, so writers that fork should use ``spawn``.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "audit.jsonl"
>>> log = AuditLog(p, clock=lambda: 0.0)
>>> log.record("alice", "model.promote", name="m", version="2")["seq"]
1
>>> verify(p)
VerifyResult(ok=True, n_entries=1, first_bad_line=None, reason='')
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from edge.core.errors import StorageError

GENESIS = "0" * 64
FIELDS = frozenset({"seq", "ts", "actor", "action", "details", "prev_hash", "hash"})
_TAIL_CHUNK = 8192


def canonical(obj: Any) -> bytes:
    """The bytes that are hashed: sorted keys, no whitespace, UTF-8, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def _plain(value: Any) -> Any:
    """Details as plain JSON, so the hash computed now equals the one a verifier computes."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # 'nan'/'inf': JSON has no such numbers
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)  # Path, enum, exception: their text is what a reader needs


class VerifyResult(NamedTuple):
    ok: bool
    n_entries: int
    first_bad_line: int | None
    reason: str


class AuditLog:
    """Chained JSON-lines audit log; ``path=None`` makes a log that records nothing.

    ``record(actor, action, **details)`` is the API; ``write(action=, person=, ...)``
    keeps the signature of the API's earlier unchained log so callers can switch.
    """

    def __init__(self, path: Path | None, clock: Callable[[], float] = time.time) -> None:
        self.path = None if path is None else Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        # (file size, seq, hash) after our last append: skips re-reading the tail
        # when no other process wrote since.
        self._cache: tuple[int, int, str] | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, actor: str | None, action: str, **details: Any) -> dict[str, Any] | None:
        """Append one entry and fsync it; returns the entry (None when disabled)."""
        if self.path is None:
            return None
        with self._lock:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                             0o640)
            except OSError as exc:
                raise StorageError(f"{self.path}: cannot open audit log ({exc.strerror})") \
                    from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                seq, prev = self._head(fd)
                entry: dict[str, Any] = {
                    "seq": seq + 1, "ts": round(float(self._clock()), 6),
                    "actor": str(actor) if actor else "anonymous", "action": str(action),
                    "details": _plain(details), "prev_hash": prev,
                }
                entry["hash"] = entry_hash(entry)
                line = canonical(entry) + b"\n"
                os.write(fd, line)
                os.fsync(fd)
                self._cache = (os.fstat(fd).st_size, seq + 1, entry["hash"])
                return entry
            except OSError as exc:
                raise StorageError(f"{self.path}: cannot append to audit log ({exc.strerror})") \
                    from exc
            finally:
                os.close(fd)  # releases the flock

    def write(self, **record: Any) -> None:
        """The API's form (``AuditSink``): ``action=`` and ``person=`` keywords plus details."""
        action = str(record.pop("action", "unknown"))
        person = record.pop("person", None)
        self.record(person, action, **record)

    def _head(self, fd: int) -> tuple[int, str]:
        size = os.fstat(fd).st_size
        if self._cache is not None and self._cache[0] == size:
            return self._cache[1], self._cache[2]
        last = _last_line(fd, size)
        if last is None:
            return 0, GENESIS
        try:
            entry = json.loads(last)
            return int(entry["seq"]), str(entry["hash"])
        except (ValueError, KeyError, TypeError) as exc:
            # Chaining past a torn or forged tail would hide it: refuse loudly instead.
            raise StorageError(
                f"{self.path}: last line is not a complete audit entry ({exc}); run "
                f"'forewarn audit verify {self.path}', then move the file aside") from exc


def _last_line(fd: int, size: int) -> bytes | None:
    """The last non-empty line of the file, read backwards in chunks."""
    end = size
    buf = b""
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        buf = os.pread(fd, end - start, start) + buf
        end = start
        stripped = buf.rstrip(b"\n")
        if b"\n" in stripped:
            return stripped.rsplit(b"\n", 1)[1]
    stripped = buf.rstrip(b"\n")
    return stripped or None


def verify(path: Path, expect_head: str | None = None) -> VerifyResult:
    """Check every line's hash and its link to the previous line.

    ``expect_head`` is a hash recorded earlier (for example by central IT): it
    must still be in the chain, which catches a log cut back to an earlier state.
    """
    path = Path(path)
    prev, n, seen_head = GENESIS, 0, expect_head is None
    try:
        f = path.open("rb")
    except OSError as exc:
        return VerifyResult(False, 0, None, f"{path}: cannot read ({exc.strerror})")
    with f:
        for lineno, raw in enumerate(f, 1):
            bad = _check_line(raw, lineno, prev)
            if bad:
                return VerifyResult(False, n, lineno, f"{path}:{lineno}: {bad}")
            entry = json.loads(raw)
            prev, n = entry["hash"], n + 1
            seen_head = seen_head or prev == expect_head
    if not seen_head:
        return VerifyResult(False, n, None, f"{path}: expected head {expect_head} is not in "
                                            "the chain (log truncated or replaced)")
    return VerifyResult(True, n, None, "")


def _check_line(raw: bytes, lineno: int, prev: str) -> str:
    if not raw.endswith(b"\n"):
        return "incomplete last line (torn write or edit)"
    try:
        entry = json.loads(raw)
    except ValueError as exc:
        return f"not JSON ({exc})"
    if not isinstance(entry, dict) or set(entry) != FIELDS:
        got = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        return f"fields {got}, want {sorted(FIELDS)}"
    if entry["seq"] != lineno:
        return f"seq {entry['seq']!r} where {lineno} was expected (line removed or moved)"
    if entry["prev_hash"] != prev:
        return "prev_hash does not match the previous entry (line removed, inserted or moved)"
    try:
        want = entry_hash(entry)
    except ValueError as exc:
        return f"cannot canonicalise ({exc})"
    if entry["hash"] != want:
        return "hash does not match the entry's content (edited)"
    return ""


def head(path: Path) -> tuple[int, str]:
    """``(seq, hash)`` of the last entry, ``(0, GENESIS)`` for an empty or missing log."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return 0, GENESIS
    try:
        last = _last_line(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    if last is None:
        return 0, GENESIS
    try:
        entry = json.loads(last)
        return int(entry["seq"]), str(entry["hash"])
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"{path}: last line is not an audit entry ({exc})") from exc
