"""The history store as the pipeline sees it: readings added, flushed by size or by age.

The pipeline acknowledges what it received only after a flush (``ReadingStore`` in
:mod:`edge.scoring.pipeline`), so this policy also sets how long QoS 1 messages
wait for their PUBACK: at most ``interval_s``, or until ``rows`` readings are
buffered, whichever comes first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from edge.ingest.readings import Reading, Series

if TYPE_CHECKING:
    from edge.history.parquet import ParquetStore

__all__ = ["StoreFlushPolicy"]


class StoreFlushPolicy:
    """Adapts the Parquet store to the pipeline: flush by size or age, whichever first."""

    def __init__(self, store: ParquetStore, interval_s: float, rows: int,
                 before_flush: Callable[[], None] = lambda: None,
                 trim: Callable[[], object] = lambda: None) -> None:
        self.store, self.interval_s, self.rows = store, interval_s, rows
        self.before_flush = before_flush
        # After a flush the rows' buffer and the batches they came in are freed: the
        # agent passes a rate-limited malloc_trim (edge/core/trim.py) to hand the
        # pages back, so RSS follows a burst down instead of keeping its peak.
        self.trim = trim
        self._last = time.monotonic()

    def add(self, readings: Sequence[Reading | Series]) -> None:
        self.store.append_readings(readings)

    def due(self) -> bool:
        return (time.monotonic() - self._last >= self.interval_s
                or self.store.buffered_rows >= self.rows)

    def flush(self) -> int:
        self._last = time.monotonic()
        # Window phases first: a reading is durable (and acked) only with its phase.
        self.before_flush()
        n = self.store.flush()
        if n:
            self.trim()
        return n
