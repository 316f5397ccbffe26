"""The latency row's ratio only when its limit is a fair denominator."""

from __future__ import annotations

from typing import Any

from bench.report import rows


def _stat(median: float, lo: float, hi: float) -> dict[str, float]:
    return {"median": median, "min": lo, "max": hi, "runs": 3, "spread_pct": 0.0}


def _res(bare_p50: tuple[float, float, float], answered: float) -> dict[str, Any]:
    agent = {"p50_ms": _stat(1.2, 1.1, 1.3), "p99_ms": _stat(4.0, 3.5, 4.5),
             "p999_ms": _stat(6.0, 5.0, 7.0), "events": _stat(1550, 1550, 1550),
             "crossings": _stat(1600, 1600, 1600)}
    bare = {"p50_ms": _stat(*bare_p50), "p99_ms": _stat(3.0, 2.5, 3.5),
            "p999_ms": _stat(5.0, 4.0, 6.0), "events": _stat(answered, answered, answered),
            "crossings": _stat(1600, 1600, 1600), "rss_mb": _stat(69, 69, 69)}
    return {"figures": {"latency": agent, "limit_bare_loop": bare}}


def _cells(res: dict[str, Any], figure: str) -> str:
    return next(c for f, _a, c, _t in rows(res) if f.startswith(figure))


def test_steady_limit_gives_ratios_and_no_behind_note() -> None:
    res = _res((1.0, 0.9, 1.1), 1600)
    assert "→ 1.20× / 1.33×" in _cells(res, "publish → durable")
    assert "fell behind" not in _cells(res, "limit: bare loop")


def test_disturbed_limit_gives_no_ratio() -> None:
    cell = _cells(_res((2.9, 1.4, 33.5), 1600), "publish → durable")
    assert "no ratio: the limit was disturbed (p50 1.4–33.5 ms" in cell
    assert "×" not in cell


def test_limit_that_fell_behind_gives_no_ratio_and_says_so() -> None:
    res = _res((1.0, 0.9, 1.1), 1200)
    assert "no ratio: the limit fell behind" in _cells(res, "publish → durable")
    assert "1200/1600 openings answered (fewer: it fell behind" in _cells(res, "limit: bare loop")


def _memory(dropped: float | None) -> dict[str, Any]:
    m = {"idle_mb": _stat(95, 94, 96), "peak_mb": _stat(110, 108, 112),
         "after_mb": _stat(100, 99, 101), "child_peak_mb": _stat(0, 0, 0),
         "total_peak_mb": _stat(110, 108, 112), "readings": _stat(6e5, 6e5, 6e5),
         "windows": _stat(5e4, 5e4, 5e4), "compactions": _stat(0, 0, 0)}
    if dropped is not None:
        m.update(idle_private_mb=_stat(61, 60, 62), peak_private_mb=_stat(82, 80, 84),
                 page_cache_dropped=_stat(dropped, dropped, dropped))
    return {"figures": {"memory_storage": m}}


def test_the_rss_row_says_its_private_part_and_its_page_cache_state() -> None:
    figure = "RSS, 1,000 assets × 10 signals streaming, storage on"
    cold = _cells(_memory(1.0), figure)
    assert "private (anonymous) 82 MB at peak, 61 MB idle" in cold
    assert "page cache dropped before each run" in cold
    assert "page cache as found (not dropped)" in _cells(_memory(0.0), figure)
    old = _cells(_memory(None), figure)  # a run from before these fields
    assert "private" not in old and "page cache" not in old
