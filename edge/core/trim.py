"""Give freed heap back to the OS after big frees: glibc's ``malloc_trim(0)``.

glibc returns memory to the OS only from the top of each arena, on its own; pages
freed in the middle of an arena (a drained burst's payloads, a flushed history
buffer, a replaced onnxruntime session) stay mapped and counted in RSS until
``malloc_trim`` releases them (``MADV_DONTNEED``, every arena). On other C
libraries (musl) there is no such call and :class:`Trimmer` does nothing. Python's
own small-object arenas are not glibc's: they go back when empty, trim or not.

A trim walks the free lists of every arena: ~0.3 ms with a ~150 MB heap on the
reference VM, so callers rate-limit it (``min_interval_s``).
"""

from __future__ import annotations

import ctypes
import sys
import time
from collections.abc import Callable

__all__ = ["Trimmer", "load_malloc_trim"]


def load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where there is none (not Linux, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return fn


class Trimmer:
    """``malloc_trim(0)`` at most every ``min_interval_s`` (``force`` skips the wait)."""

    def __init__(self, min_interval_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._trim = load_malloc_trim()
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._last = -float("inf")
        self.trims = 0  # calls made
        self.released = 0  # calls that returned memory to the OS

    @property
    def available(self) -> bool:
        return self._trim is not None

    def __call__(self, force: bool = False) -> bool:
        """Trim now if due; True when a trim ran."""
        if self._trim is None:
            return False
        now = self._clock()
        if not force and now - self._last < self.min_interval_s:
            return False
        self._last = now
        self.trims += 1
        self.released += int(self._trim(0) == 1)
        return True
