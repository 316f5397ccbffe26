"""Rate-limited logging: one line per key per interval, with a count of what was held back.

A flood of bad input must leave a readable log, not a disk full of identical lines::

    >>> import logging
    >>> t = [0.0]
    >>> rl = RateLimitedLog(logging.getLogger("doc"), interval_s=60, clock=lambda: t[0])
    >>> rl.warning("malformed_json", "bad payload on %s", "a/b")
    True
    >>> rl.warning("malformed_json", "bad payload on %s", "a/b")   # held back, counted
    False
    >>> t[0] = 61.0
    >>> rl.warning("malformed_json", "bad payload on %s", "a/b")   # logs "(+1 similar ...)"
    True
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimitedLog:
    """``log(key, ...)`` emits at most once per ``interval_s`` for each key.

    The line that ends a quiet period carries how many repeats were suppressed.
    Keys should come from a bounded set (reason, or reason + asset); as a guard
    the table is cleared when it exceeds ``max_keys``, which at worst lets one
    extra line per key through.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 4096) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._clock = clock
        self._max_keys = max_keys
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        if len(self._last) >= self._max_keys and key not in self._last:
            self._last.clear()
            self._suppressed.clear()
        self._last[key] = now
        held = self._suppressed.pop(key, 0)
        if held and last is not None:
            msg = f"{msg} (+{held} similar in the last {now - last:.0f} s)"
        self.logger.log(level, msg, *args)
        return True

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def info(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.INFO, key, msg, *args)

    def suppressed(self, key: str) -> int:
        """Repeats of ``key`` held back since its last logged line."""
        return self._suppressed.get(key, 0)
