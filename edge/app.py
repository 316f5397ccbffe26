"""The composition root: builds the agent from one config, starts in order, stops in reverse."""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from edge import __version__, sdnotify
from edge.alerts.manager import AlertManager
from edge.alerts.rules import RuleSpec
from edge.alerts.store import AlertStore
from edge.api.app import ApiDeps, create_app
from edge.api.auth import load_tokens
from edge.bundle import load_bundle
from edge.config import AgentConfig, ConfigError, load_config
from edge.egress.ledger import LEDGER_FILE, Ledger
from edge.egress.outbox import Outbox
from edge.egress.uplink import Uplink
from edge.errors import DecodeError, ForewarnError
from edge.infer import Scorer
from edge.ingest.deadletter import DeadLetter
from edge.ingest.mqtt import Message, SiteConnection
from edge.ingest.ratelog import RateLimitedLog
from edge.ingest.router import Router
from edge.ingest.sparkplug import SparkplugDecoder, rebirth_command
from edge.ingest.topics import TopicMap
from edge.metrics import Metrics
from edge.pipeline import Pipeline
from edge.reporting import DriftReporter
from edge.store import retention
from edge.store.parquet import ParquetStore
from edge.window import WindowSet

log = logging.getLogger(__name__)


class StoreFlushPolicy:
    """Adapts the Parquet store to the pipeline: flush by size or age, whichever first."""

    def __init__(self, store: ParquetStore, interval_s: float, rows: int) -> None:
        self.store, self.interval_s, self.rows = store, interval_s, rows
        self._last = time.monotonic()

    def add(self, readings: list[Any]) -> None:
        self.store.append_readings(readings)

    def due(self) -> bool:
        return (time.monotonic() - self._last >= self.interval_s
                or self.store.buffered_rows >= self.rows)

    def flush(self) -> int:
        self._last = time.monotonic()
        return self.store.flush()


class Agent:
    def __init__(self, cfg: AgentConfig, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        state = Path(cfg.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        bundle = load_bundle(cfg.bundle.path, cfg.bundle.trusted_keys,
                             allow_unsigned=cfg.bundle.allow_unsigned)
        self.scorer = Scorer(bundle, intra_op_threads=cfg.bundle.intra_op_threads)
        m = bundle.manifest
        self.metrics.build_info.info({"version": __version__})
        self.metrics.model_info.info({"name": m.name, "version": m.version,
                                      "kind": m.output.kind, "signed_by": bundle.signed_by or ""})
        self.windows = WindowSet(m.signal_names, period=m.sample_period_s, window=m.window,
                                 hop=m.hop, max_hold=m.gap.max_hold_samples,
                                 max_lateness=cfg.ingest.max_lateness_slots)
        self.inbox: queue.Queue[Message] = queue.Queue(cfg.ingest.queue_size)
        self.deadletter = DeadLetter(state / "dead-letter.jsonl", cfg.ingest.dead_letter_max_bytes)
        self._ratelog = RateLimitedLog(log, 60.0)
        sparkplug = None
        if cfg.mqtt.sparkplug:
            sparkplug = SparkplugDecoder(state / "sparkplug-births.json", self._send_rebirth,
                                         on_stale=self._on_stale,
                                         max_bytes=cfg.ingest.max_payload_bytes)
        topics = TopicMap(cfg.mqtt.topics, cfg.site,
                          exclude=[cfg.mqtt.alerts_topic, cfg.mqtt.events_topic])
        self.router = Router(topics, cfg.ingest.max_payload_bytes, sparkplug)
        self.conn = SiteConnection(cfg.mqtt, cfg.site, self.router.subscriptions(), self.inbox,
                                   self.metrics, on_connected=self._on_connected)
        self.alert_store = AlertStore(state / "alerts.sqlite",
                                      retention_days=cfg.alerts.retention_days)
        self.alerts = AlertManager(
            self.alert_store, RuleSpec.from_manifest(m, cfg.alerts), self._publish, cfg.site,
            feature_names=m.output.feature_names, signal_names=m.signal_names,
            alerts_topic=cfg.mqtt.alerts_topic, events_topic=cfg.mqtt.events_topic,
            metrics=self.metrics, stale_after_s=cfg.alerts.stale_after_s)
        sinks: list[Any] = [self.alerts]
        self.outbox: Outbox | None = None
        self.uplink: Uplink | None = None
        if cfg.egress.enabled and cfg.egress.cloud is not None:
            self.outbox = Outbox(state / "egress" / "outbox.sqlite", cfg.egress.outbox_max_rows)
            self.uplink = Uplink(self.outbox, Ledger(state / LEDGER_FILE), cfg.egress.cloud,
                                 cfg.egress.site_id)
        self.drift: DriftReporter | None = None
        if cfg.drift.enabled:
            self.drift = DriftReporter(m, cfg.drift.interval_windows, self.metrics, cfg.egress,
                                       self.outbox,
                                       self.uplink.notify if self.uplink else lambda: None)
            sinks.append(self.drift)
        store = None
        self.parquet: ParquetStore | None = None
        self.clock = retention.AgentClock()
        if cfg.storage.enabled:
            self.parquet = ParquetStore(state / "history")
            store = StoreFlushPolicy(self.parquet, cfg.storage.flush_interval_s,
                                     cfg.storage.flush_rows)
            self.metrics.storage_budget_bytes.set(cfg.storage.disk_budget_mb * 1e6)
            self.metrics.add_state(self._storage_state)
        ranges = {s.name: (s.min, s.max) for s in m.signals}
        self.pipeline = Pipeline(
            self.inbox, self.router.decode, self.windows, self.scorer, self.metrics,
            sinks=sinks, store=store, ack=self.conn.ack, on_reject=self._reject,
            batch_max=cfg.ingest.batch_max, ranges=ranges,
            on_idle=[self._retention] if self.parquet else [])
        self._last_retention = -1e18
        self.watchdog = sdnotify.Watchdog(self.pipeline.heartbeats, max_age_s=20.0)
        self._server: uvicorn.Server | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    # -- callbacks ---------------------------------------------------------------
    def _publish(self, topic: str, payload: bytes, retain: bool) -> None:
        self.conn.publish(topic, payload, retain=retain)

    def _on_connected(self) -> None:
        # Retained alert state may have been lost with a broker that had no persistence.
        threading.Thread(target=self.alerts.republish_all, daemon=True).start()

    def _send_rebirth(self, group: str, node: str) -> None:
        topic, payload = rebirth_command(group, node)
        self.conn.publish(topic, payload, qos=0)

    def _on_stale(self, asset: str, stale: bool) -> None:
        if stale:
            self.windows.reset(asset)

    def _reject(self, msg: Message, exc: DecodeError) -> None:
        self.deadletter.write(msg.received, msg.topic, exc.reason, msg.payload, exc.detail)
        self._ratelog.log(logging.WARNING, exc.reason, "rejected message on %s: %s",
                          msg.topic[:120], exc)

    def _storage_state(self) -> list[tuple[str, str, str, float]]:
        p = self.parquet
        if p is None:
            return []
        return [
            ("forewarn_storage_rows_written_total", "Readings written to Parquet", "counter",
             float(p.rows_written)),
            ("forewarn_storage_rows_dropped_total",
             "Readings dropped from a full history buffer (disk full)", "counter",
             float(p.rows_dropped)),
            ("forewarn_storage_flush_errors_total", "Failed history flushes", "counter",
             float(p.flush_errors)),
            ("forewarn_storage_buffered_rows", "Readings waiting for the next flush", "gauge",
             float(p.buffered_rows)),
        ]

    def _retention(self) -> None:
        """Runs in the pipeline thread (the one that flushes), at most once a minute."""
        now = time.monotonic()
        if now - self._last_retention < 60 or self.parquet is None:
            return
        self._last_retention = now
        st = self.cfg.storage
        try:
            n, freed = retention.enforce(
                self.parquet.root, self.clock(), st.retention_days * 86_400,
                st.disk_budget_mb * 1e6, self.parquet.recent_partitions(2 * 86_400))
        except OSError as exc:
            self._ratelog.log(logging.WARNING, "retention", "retention failed: %s", exc)
            return
        if n:
            log.info("retention removed %d partitions (%.1f MB)", n, freed / 1e6)
        self.metrics.storage_bytes.set(
            sum(p.bytes for p in retention.list_partitions(self.parquet.root)))

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        self.pipeline.start()
        self.conn.start()
        if self.uplink:
            self.uplink.start()
        if self.cfg.api.enabled:
            self._start_api()
        t = threading.Thread(target=self._supervise, name="forewarn-supervisor", daemon=True)
        t.start()
        self._threads.append(t)
        sdnotify.ready(f"scoring with {self.scorer.ident}")
        log.info("agent started: model %s, site %s", self.scorer.ident, self.cfg.site)

    def _start_api(self) -> None:
        api = self.cfg.api
        tokens = load_tokens(api.tokens_file) if api.tokens_file else {}
        deps = ApiDeps(manager=self.alerts, registry=self.metrics.registry, tokens=tokens,
                       read_open=api.read_open, status=self.status,
                       audit_path=Path(self.cfg.state_dir) / "audit.jsonl")
        config = uvicorn.Config(create_app(deps), host=api.host, port=api.port,
                                log_level="warning", access_log=False,
                                timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        t = threading.Thread(target=self._server.run, name="forewarn-api", daemon=True)
        t.start()
        self._threads.append(t)

    def _supervise(self) -> None:
        """Feeds the systemd watchdog only while the hot loop keeps beating."""
        while not self._stop.wait(1.0):
            for stage, age in self.watchdog.ages().items():
                self.metrics.heartbeat_age.labels(stage).set(age)
            self.metrics.assets_tracked.set(len(self.windows.assets))
            self.metrics.queue_depth.set(self.inbox.qsize())
            if self.parquet is not None:
                self.metrics.storage_paused.set(1 if self.parquet.paused else 0)
            if self.outbox is not None:
                self.metrics.outbox_depth.set(self.outbox.depth())
                self.metrics.outbox_oldest_age.set(self.outbox.oldest_age_s())
            if self.router.sparkplug:
                self.router.sparkplug.flush()
            self.watchdog.check()

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "model": self.scorer.ident,
            "site": self.cfg.site,
            "mqtt_connected": self.conn.connected.is_set(),
            "windows_scored": self.pipeline.scored_total,
            "pipeline_heartbeat_age_s": round(self.watchdog.ages().get("pipeline", 0.0), 3),
            "queue_depth": self.inbox.qsize(),
        }

    def stop(self) -> None:
        sdnotify.stopping()
        self._stop.set()
        if self._server:
            self._server.should_exit = True
        self.conn.stop()
        self.pipeline.stop()
        if self.uplink:
            self.uplink.stop()
        if self.router.sparkplug:
            self.router.sparkplug.flush()
        self.deadletter.close()
        for t in self._threads:
            t.join(5)
        self.alert_store.close()
        log.info("agent stopped")


def check_config(path: Path) -> int:
    """``--check-config``: validate the config and the bundle, print problems, exit code."""
    try:
        cfg = load_config(path)
        bundle = load_bundle(cfg.bundle.path, cfg.bundle.trusted_keys,
                             allow_unsigned=cfg.bundle.allow_unsigned)
        Scorer(bundle)
    except ForewarnError as exc:
        print(f"{exc}")
        return 1
    print(f"{path}: OK (site {cfg.site}, bundle {bundle.ident})")
    return 0


def run_agent(path: Path) -> int:
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        print(exc)
        return 2
    logging.getLogger().setLevel(cfg.log_level)
    agent = Agent(cfg)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    agent.start()
    done.wait()
    agent.stop()
    return 0
