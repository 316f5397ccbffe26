"""malloc_trim after big frees: rate-limited, forced on demand, and it does return pages."""

from __future__ import annotations

import ctypes
import os

import pytest

from edge.core import trim
from edge.core.trim import Trimmer


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def test_rate_limited_unless_forced() -> None:
    now = [100.0]
    t = Trimmer(min_interval_s=2.0, clock=lambda: now[0])
    if not t.available:
        pytest.skip("no malloc_trim on this C library")
    assert t() is True and t.trims == 1
    now[0] += 1.0
    assert t() is False and t.trims == 1  # within the interval
    assert t(force=True) is True and t.trims == 2
    now[0] += 2.0
    assert t() is True and t.trims == 3


def test_without_malloc_trim_it_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trim, "load_malloc_trim", lambda: None)
    t = Trimmer()
    assert not t.available and t(force=True) is False and t.trims == 0


def test_a_trim_returns_pages_freed_below_a_live_block() -> None:
    fn = trim.load_malloc_trim()
    if fn is None:
        pytest.skip("no malloc_trim on this C library")
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    # 60 kB blocks: below glibc's mmap threshold, so they live in the heap; the last
    # one, kept, pins the top, so free() alone cannot shrink the heap.
    blocks = [libc.malloc(60_000) for _ in range(1000)]
    for b in blocks:
        ctypes.memset(b, 1, 60_000)
    for b in blocks[:-1]:
        libc.free(b)
    before = _rss_mb()
    assert Trimmer()(force=True)
    after = _rss_mb()
    libc.free(blocks[-1])
    assert before - after > 30, (before, after)  # ~60 MB were freed below the live block
