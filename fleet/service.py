"""The fleet service's composition root: store, enrolment, metrics, collector, API."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

import uvicorn

from edge.api.auth import TokenAuth, load_tokens
from edge.core import sdnotify
from fleet.api import FleetApiDeps, create_fleet_app
from fleet.collector import Collector
from fleet.config import FleetConfig, load_config
from fleet.enrol import Enrolment
from fleet.grid import build_grid
from fleet.metrics import FleetMetrics
from fleet.store import SqlStore, open_postgres, open_sqlite

log = logging.getLogger(__name__)


class FleetService:
    def __init__(self, cfg: FleetConfig) -> None:
        self.cfg = cfg
        self.store: SqlStore = (open_postgres(cfg.store.postgres_dsn) if cfg.store.postgres_dsn
                                else open_sqlite(cfg.store.sqlite_path))
        self.enrolment = Enrolment(cfg.enrolment)
        self.metrics = FleetMetrics()
        self.metrics.add_grid(lambda: build_grid(self.store, time.time(), cfg.stale_after_s),
                              cfg.max_sites_in_metrics)
        self.collector = Collector(cfg.broker, self.store, self.enrolment.keys, self.metrics,
                                   max_bytes=cfg.max_report_bytes, k=cfg.k)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.cfg.api.enabled:
            a = self.cfg.api
            tokens = load_tokens(a.tokens_file) if a.tokens_file else {}
            app = create_fleet_app(FleetApiDeps(
                store=self.store, auth=TokenAuth(tokens), registry=self.metrics.registry,
                read_open=a.read_open, metrics_open=a.metrics_open,
                stale_after_s=self.cfg.stale_after_s))
            self._server = uvicorn.Server(uvicorn.Config(
                app, host=a.host, port=a.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=2))
            self._thread = threading.Thread(target=self._server.run, name="fleet-api",
                                            daemon=True)
            self._thread.start()
        self.collector.start()
        log.info("fleet service started: %d enrolled sites, store %s",
                 len(self.enrolment.keys()), self.store.label)

    def stop(self) -> None:
        # The collector first: nothing is acknowledged after the store closes.
        self.collector.stop()
        if self._server:
            self._server.should_exit = True
        if self._thread:
            self._thread.join(5)
        self.store.close()
        log.info("fleet service stopped")


def serve(path: Path) -> int:
    cfg = load_config(path)
    svc = FleetService(cfg)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    svc.start()
    sdnotify.ready(f"{len(svc.enrolment.keys())} sites enrolled, store {svc.store.label}")
    while not done.wait(0.5):  # timed: see edge.app.run_agent for why
        pass
    sdnotify.stopping()
    svc.stop()
    return 0
