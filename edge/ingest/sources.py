"""The agent's sources from its config: the site connection, and the workers with N > 1.

With ``ingest.processes`` = N > 1 the JSON topic filters go to the worker
processes' shared subscription; Sparkplug B (ordered per edge node) stays on the
main connection. The main connection still publishes alerts, so with nothing else
left it subscribes to the agent's own events (noLocal: nothing comes back), which
keeps its session and its link-health meaning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from edge.core.config import AgentConfig
from edge.core.metrics import Metrics
from edge.ingest.message import MessageQueue
from edge.ingest.mqtt import SiteConnection
from edge.ingest.router import Router
from edge.ingest.source import Source

if TYPE_CHECKING:
    from edge.ingest.workers import IngestWorkers

__all__ = ["site_sources"]


def site_sources(cfg: AgentConfig, router: Router, inbox: MessageQueue, metrics: Metrics,
                 on_connected: Callable[[], None]
                 ) -> tuple[SiteConnection, IngestWorkers | None, dict[str, Source]]:
    """(connection, workers or None, every source by name in start order)."""
    subs = router.subscriptions()
    workers = None
    if cfg.ingest.processes > 1:
        # Imported here: multiprocessing and the workers' module cost ~3 MB of RSS that
        # the single-process default never uses.
        from edge.ingest.workers import IngestWorkers

        shared = router.topics.subscriptions()
        workers = IngestWorkers(cfg, shared, inbox, cfg.ingest.processes)
        metrics.add_state(workers.metric_state)
        subs = [s for s in subs if s not in shared] or [
            cfg.mqtt.events_topic.format(site=cfg.site, asset="+")]
    conn = SiteConnection(cfg.mqtt, cfg.site, subs, inbox, metrics, on_connected=on_connected,
                          max_payload_bytes=cfg.ingest.max_payload_bytes, admit=router.admit,
                          queue_wait_s=cfg.ingest.queue_wait_s)
    # Started in this order, stopped in reverse: the workers before the connection.
    sources: dict[str, Source] = {conn.name: conn}
    if workers is not None:
        sources[workers.name] = workers
    return conn, workers, sources
