"""Bounded dead-letter file: what was rejected, where from, and why.

One JSON object per line::

    {"ts": 1718000000.1, "topic": "forewarn/s1/press-4/temp", "reason": "malformed_json",
     "detail": "unexpected character...", "size": 17,
     "head": "{\\"ts\\": 1, value", "head_b64": "eyJ0cyI6IDEsIHZhbHVl"}

``head`` is the first 256 bytes decoded as UTF-8 with invalid bytes escaped (for
reading), ``head_b64`` the same bytes exactly (for replaying). The file rotates
to ``<name>.1`` when it reaches half the byte budget, keeping one old file, so
the pair never exceeds ``max_bytes``. A budget of 0 disables the file.

Writing never raises: a full disk must not stop ingest. Failures are counted in
:attr:`DeadLetter.write_errors` and logged at most once a minute.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import IO

import orjson

from edge.core.errors import DecodeError
from edge.core.metrics import StateRow
from edge.ingest.message import Message
from edge.ingest.ratelog import RateLimitedLog

HEAD_BYTES = 256
_MAX_TOPIC = 256
_MAX_DETAIL = 200
log = logging.getLogger(__name__)


class DeadLetter:
    def __init__(self, path: Path, max_bytes: int, per_second: int | None = None) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        # A flood of junk must not cost a written line each: keep a sample per second
        # of message time when per_second is set (the caller still counts every rejection).
        self.per_second = per_second
        self.sampled_out = 0
        self._second, self._in_second = 0, 0
        self.written = 0
        self.write_errors = 0
        self._lock = threading.Lock()
        self._fh: IO[bytes] | None = None
        self._size = 0
        self._log = RateLimitedLog(log, 60.0)

    @property
    def rotated_path(self) -> Path:
        return self.path.with_name(self.path.name + ".1")

    def write(self, ts: float, topic: str, reason: str, payload: bytes, detail: str = "") -> bool:
        """Append one entry; False when it was sampled out (or dead letters are off)."""
        if self.max_bytes <= 0:
            return False
        if int(ts) != self._second:
            self._second, self._in_second = int(ts), 0
        if self.per_second is not None and self._in_second >= self.per_second:
            self.sampled_out += 1
            return False
        self._in_second += 1
        head = bytes(payload[:HEAD_BYTES])
        line = orjson.dumps({
            "ts": ts,
            "topic": topic[:_MAX_TOPIC],
            "reason": reason,
            "detail": detail[:_MAX_DETAIL],
            "size": len(payload),
            "head": head.decode("utf-8", "backslashreplace"),
            "head_b64": base64.b64encode(head).decode("ascii"),
        }) + b"\n"
        with self._lock:
            try:
                self._append(line)
                self.written += 1
            except OSError as exc:
                self.write_errors += 1
                self._close()
                self._log.warning("write", "dead-letter file %s: cannot write (%s)",
                                  self.path, exc)
        return True

    def _append(self, line: bytes) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "ab")  # noqa: SIM115 - kept open across writes
            self._size = self._fh.tell()
        if self._size and self._size + len(line) > self.max_bytes // 2:
            self._close()
            os.replace(self.path, self.rotated_path)
            self._fh = open(self.path, "ab")  # noqa: SIM115
            self._size = 0
        self._fh.write(line)
        # Flushed per line so `tail -f` and a crash both see every record.
        self._fh.flush()
        self._size += len(line)

    def _close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None

    def close(self) -> None:
        with self._lock:
            self._close()

    def metric_state(self) -> list[StateRow]:
        return [("forewarn_dead_letters_sampled_out_total",
                 "Rejected messages counted but not written to the dead-letter file (flood)",
                 "counter", float(self.sampled_out))]


class Rejects:
    """The pipeline's ``on_reject``: dead-letter a refused message, log it once a minute.

    The caller has counted it (``forewarn_decode_errors_total`` or a dropped reading);
    the log line names the topic and the error, once per reason and minute.
    """

    def __init__(self, letters: DeadLetter, logger: logging.Logger = log) -> None:
        self.letters = letters
        self._log = RateLimitedLog(logger, 60.0)

    def __call__(self, msg: Message, exc: DecodeError) -> None:
        self.letters.write(msg.received, msg.topic, exc.reason, msg.payload, exc.detail)
        self._log.warning(exc.reason, "rejected message on %s: %s", msg.topic[:120], exc)
