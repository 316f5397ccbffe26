"""The site's history from the config: the Parquet store and what keeps it honest.

Built only with ``storage.enabled``: the store (compaction on its own thread, in a
child process, never in the pipeline's), the window phases saved before each
flush, the warm start of the window buffers from the write-ahead log, the flush
policy the pipeline sees and the retention job on the compactor thread. The log's
newest segments stay out of compaction long enough to warm the window buffers from
them at the next start (:mod:`edge.history.warm`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge.core.config import StorageConfig
from edge.core.metrics import Metrics
from edge.history import warm
from edge.history.flush import StoreFlushPolicy
from edge.history.retention import RetentionJob
from edge.scoring.window import WindowSet

if TYPE_CHECKING:
    from edge.history.parquet import ParquetStore

__all__ = ["History", "open_history"]


@dataclass
class History:
    store: ParquetStore
    phases: warm.PhaseFile
    flush: StoreFlushPolicy  # the pipeline's ReadingStore
    retention: RetentionJob
    warm_start: warm.WarmStart


def open_history(cfg: StorageConfig, state: Path, windows: Callable[[], WindowSet],
                 metrics: Metrics, clock: Callable[[], float], *,
                 dead: Collection[str] = (), state_signal: str | None = None,
                 trim: Callable[[], object] = lambda: None) -> History:
    """Open the store and warm ``windows()`` from its log (``dead`` assets skipped);
    ``trim`` runs after each flush that wrote rows (the agent's malloc_trim)."""
    from edge.history.parquet import ParquetStore  # pyarrow: ~27 MB RSS, only if used

    w = windows()
    store = ParquetStore(state / "history", background=True, child=True,
                         wal_keep_s=max(30.0, 2 * warm.tail_s(w)))
    phases = warm.PhaseFile(state / "window-phases.json", windows)
    warmed = warm.warm_agent(store.root, w, phases, dead=dead, state_signal=state_signal)
    flush = StoreFlushPolicy(store, cfg.flush_interval_s, cfg.flush_rows,
                             before_flush=phases.save, trim=trim)
    job = RetentionJob(store, clock, cfg.retention_days * 86_400, cfg.disk_budget_mb * 1e6,
                       on_bytes=metrics.storage_bytes.set)
    store.jobs.append(job)
    metrics.storage_budget_bytes.set(cfg.disk_budget_mb * 1e6)
    metrics.add_state(store.metric_state)
    return History(store, phases, flush, job, warmed)
