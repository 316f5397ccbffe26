"""The composition root: builds the agent from one config, starts in order, stops in reverse."""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge import __version__
from edge.alerts.bands import signal_bands
from edge.alerts.limits import LimitSettings
from edge.alerts.manager import AlertManager
from edge.alerts.rules import RuleSpec
from edge.alerts.store import AlertStore
from edge.api.serve import check_tls
from edge.core import health, sdnotify
from edge.core.audit import AuditLog
from edge.core.config import AgentConfig, load_config
from edge.core.errors import ConfigError, DecodeError, ForewarnError
from edge.core.metrics import Metrics
from edge.drift.reporting import DriftReporter
from edge.egress.envelope import SEQ_FILE, Sealer, SequenceFile, load_or_create_key
from edge.egress.health_report import HealthReporter, ModelRef
from edge.egress.ledger import LEDGER_FILE, Ledger
from edge.egress.outbox import Outbox
from edge.egress.sealed import SealedOutbox, merge_sealed
from edge.egress.uplink import Uplink
from edge.egress.webhook import Webhook
from edge.history import retention, warm
from edge.ingest.deadletter import DeadLetter
from edge.ingest.decode import DecodeResult
from edge.ingest.mqtt import Message, MessageQueue, SiteConnection
from edge.ingest.ratelog import RateLimitedLog
from edge.ingest.router import Router
from edge.ingest.source import Source
from edge.ingest.topics import TopicMap
from edge.ingest.workers import DECODED, DecodedBatch, IngestWorkers
from edge.models.bundle import Bundle, load_bundle
from edge.models.infer import Scorer
from edge.models.lifecycle import ModelLifecycle, same_grid
from edge.models.registry import Registry
from edge.scoring.pipeline import Pipeline
from edge.scoring.ranges import bounds_of
from edge.scoring.window import WindowSet

if TYPE_CHECKING:
    import uvicorn

    from edge.history.parquet import ParquetStore

WORKER_BATCH_TOPIC = "(decoded by an ingest worker)"  # dead letters without their message

log = logging.getLogger(__name__)


class StoreFlushPolicy:
    """Adapts the Parquet store to the pipeline: flush by size or age, whichever first."""

    def __init__(self, store: ParquetStore, interval_s: float, rows: int,
                 before_flush: Callable[[], None] = lambda: None) -> None:
        self.store, self.interval_s, self.rows = store, interval_s, rows
        self.before_flush = before_flush
        self._last = time.monotonic()

    def add(self, readings: Sequence[Any]) -> None:
        self.store.append_readings(readings)

    def due(self) -> bool:
        return (time.monotonic() - self._last >= self.interval_s
                or self.store.buffered_rows >= self.rows)

    def flush(self) -> int:
        self._last = time.monotonic()
        # Window phases first: a reading is durable (and acked) only with its phase.
        self.before_flush()
        return self.store.flush()


class _BatchInbox:
    """A source's DecodedBatch into the hot loop, as the pseudo-message the ingest
    workers use, until the pipeline takes DecodedBatch items from any source itself."""

    def __init__(self, inbox: MessageQueue) -> None:
        self.inbox = inbox

    def put_nowait(self, batch: DecodedBatch) -> None:
        self.inbox.put_nowait(Message(DECODED, batch, time.time(), -1, 0))  # type: ignore[arg-type]


class Agent:
    def __init__(self, cfg: AgentConfig, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        state = Path(cfg.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        self.audit = AuditLog(state / "audit.jsonl")
        self.registry: Registry | None = None
        self.warm_start = warm.WarmStart()
        self._phase_file: Path | None = None  # window phases, saved when hop > 1
        self._phases: dict[str, int] = {}
        bundle = self._initial_bundle(state)
        self.scorer = Scorer(bundle, intra_op_threads=cfg.bundle.intra_op_threads)
        m = bundle.manifest
        self.metrics.build_info.info({"version": __version__})
        self._model_info(bundle)
        self.windows = WindowSet(m.signal_names, period=m.sample_period_s, window=m.window,
                                 hop=m.hop, max_hold=m.gap.max_hold_samples,
                                 max_lateness=cfg.ingest.max_lateness_slots)
        self.inbox = MessageQueue(cfg.ingest.queue_size)
        self.deadletter = DeadLetter(state / "dead-letter.jsonl",
                                     cfg.ingest.dead_letter_max_bytes, per_second=50)
        self.metrics.add_state(lambda: [(
            "forewarn_dead_letters_sampled_out_total",
            "Rejected messages counted but not written to the dead-letter file (flood)",
            "counter", float(self.deadletter.sampled_out))])
        self._ratelog = RateLimitedLog(log, 60.0)
        sparkplug = None
        if cfg.mqtt.sparkplug:
            # protobuf and the generated module: ~16 MB of RSS, only for Sparkplug sites.
            from edge.ingest.sparkplug import SparkplugDecoder

            sparkplug = SparkplugDecoder(state / "sparkplug-births.json", self._send_rebirth,
                                         on_stale=self._on_stale,
                                         max_bytes=cfg.ingest.max_payload_bytes)
        topics = TopicMap(cfg.mqtt.topics, cfg.site,
                          exclude=[cfg.mqtt.alerts_topic, cfg.mqtt.events_topic])
        self.router = Router(topics, cfg.ingest.max_payload_bytes, sparkplug)
        subs = self.router.subscriptions()
        self.workers: IngestWorkers | None = None
        if cfg.ingest.processes > 1:
            # JSON filters go to the worker processes' shared subscription; Sparkplug
            # (ordered per edge node) stays here. The main connection still publishes
            # alerts, so it subscribes to its own events (noLocal: nothing comes back).
            shared = topics.subscriptions()
            self.workers = IngestWorkers(cfg, shared, self.inbox, cfg.ingest.processes)
            self.metrics.add_state(self.workers.metric_state)
            subs = [s for s in subs if s not in shared] or [
                cfg.mqtt.events_topic.format(site=cfg.site, asset="+")]
        self.conn = SiteConnection(cfg.mqtt, cfg.site, subs, self.inbox,
                                   self.metrics, on_connected=self._on_connected,
                                   max_payload_bytes=cfg.ingest.max_payload_bytes,
                                   admit=self.router.admit)
        self.sources: list[Source] = []  # besides the site broker, started after it
        if cfg.opcua.servers:
            from edge.ingest.opcua import OpcUaSource  # asyncua: only when configured

            batches = _BatchInbox(self.inbox)
            self.sources = [OpcUaSource(s, batches, self.metrics) for s in cfg.opcua.servers]
        self.alert_store = AlertStore(state / "alerts.sqlite",
                                      retention_days=cfg.alerts.retention_days)
        self.alerts = AlertManager(
            self.alert_store, RuleSpec.from_manifest(m, cfg.alerts), self._publish, cfg.site,
            feature_names=m.output.feature_names, signal_names=m.signal_names,
            signal_bands=signal_bands(m), alerts_topic=cfg.mqtt.alerts_topic,
            events_topic=cfg.mqtt.events_topic,
            metrics=self.metrics, stale_after_s=cfg.alerts.stale_after_s, group_commit=True,
            bounds=bounds_of(m.signals, m.limits),
            limit_settings=LimitSettings(cfg.alerts.limits.clear_after,
                                         cfg.alerts.limits.deadband))
        if sparkplug is not None:  # deaths recorded by the previous run
            for asset in sparkplug.stale_assets:
                self.alerts.set_source_dead(asset, True)
        self.webhook: Webhook | None = None
        w = cfg.webhook
        if w.url:
            self.webhook = Webhook(w.url, state / "webhook-outbox.sqlite", max_rows=w.max_rows,
                                   timeout_s=w.timeout_s, token_file=w.token_file)
            self.metrics.add_state(self._webhook_state)
        sinks: list[Any] = [self.alerts]
        self.outbox: Outbox | None = None
        self.uplink: Uplink | None = None
        self.sealer: Sealer | None = None
        self.health_report: HealthReporter | None = None
        if cfg.egress.enabled and cfg.egress.cloud is not None:
            # Every report is signed by this appliance's own key and numbered before
            # it queues, so the fleet can refuse forgeries and spot gaps and replays.
            sealer = self.sealer = Sealer(cfg.egress.site_id, load_or_create_key(state),
                                          SequenceFile(state / SEQ_FILE))
            k = cfg.egress.k  # overflow pools the oldest reports (never a silent drop)
            self.outbox = Outbox(state / "egress" / "outbox.sqlite", cfg.egress.outbox_max_rows,
                                 merge=lambda a, b: merge_sealed(sealer, a, b, k))
            self.uplink = Uplink(self.outbox, Ledger(state / LEDGER_FILE), cfg.egress.cloud,
                                 cfg.egress.site_id)
        self.drift: DriftReporter | None = None
        if cfg.drift.enabled:
            self.drift = DriftReporter(
                m, cfg.drift.interval_windows, self.metrics, cfg.egress,
                SealedOutbox(self.outbox, self.sealer, "drift") if self.outbox and self.sealer
                else None, self.uplink.notify if self.uplink else lambda: None)
            sinks.append(self.drift)
        if self.outbox is not None and self.sealer is not None:
            sealed = SealedOutbox(self.outbox, self.sealer, "health")
            uplink = self.uplink

            def put_health(body: bytes) -> None:
                sealed.put(body)
                if uplink:
                    uplink.notify()

            self.health_report = HealthReporter(
                site_id=cfg.egress.site_id, k=cfg.egress.k, registry=self.metrics.registry,
                store_path=state / "alerts.sqlite", models=self._model_refs, state_dir=state,
                operators=cfg.alerts.operators, put=put_health,
                interval_s=cfg.egress.health_interval_s,
                on_rejected=self.metrics.egress_rejected.inc)
        store = None
        self.parquet: ParquetStore | None = None
        self.clock = retention.AgentClock()
        if cfg.storage.enabled:
            from edge.history.parquet import ParquetStore  # pyarrow: ~27 MB RSS, only if used
            # Compaction runs on the store's own thread, never in the pipeline's.
            # The log's newest segments stay out of compaction long enough to warm
            # the window buffers from them at the next start (edge/history/warm.py).
            keep = max(30.0, 2 * warm.tail_s(self.windows))
            self.parquet = ParquetStore(state / "history", background=True, child=True,
                                        wal_keep_s=keep)
            self._warm_windows(sparkplug.stale_assets if sparkplug else frozenset())
            store = StoreFlushPolicy(self.parquet, cfg.storage.flush_interval_s,
                                     cfg.storage.flush_rows, before_flush=self._save_phases)
            self.metrics.storage_budget_bytes.set(cfg.storage.disk_budget_mb * 1e6)
            self.metrics.add_state(self._storage_state)
        self.pipeline = Pipeline(
            self.inbox, self._decode if self.workers or self.sources else self.router.decode,
            self.windows,
            self.scorer, self.metrics, sinks=sinks, store=store,
            ack=self._ack if self.workers else self.conn.ack, on_reject=self._reject,
            batch_max=cfg.ingest.batch_max, bounds=bounds_of(m.signals, m.limits),
            limits=self.alerts,
            state_signal=cfg.alerts.state_signal, on_state=self._on_state,
            max_future_skew_s=cfg.ingest.max_future_skew_s)
        self._asset_state: dict[str, bool] = {}
        self._last_retention = -1e18
        if self.parquet is not None:
            self.parquet.jobs.append(self._retention)
        self.pipeline.breached = lambda score: self.scorer.bundle.manifest.breached(
            score, self.alerts.rules.warning)
        self.lifecycle: ModelLifecycle | None = None
        if self.registry is not None:
            self.lifecycle = ModelLifecycle(self.registry, cfg.bundle, self.pipeline,
                                            self.metrics, self._activate)
            self.metrics.add_state(self._rollout_state)
        self.watchdog = sdnotify.Watchdog(self.pipeline.heartbeats, max_age_s=20.0)
        self._server: uvicorn.Server | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def _warm_windows(self, dead: frozenset[str]) -> None:
        """Refill the window buffers from the history's write-ahead log (no window lost)."""
        assert self.parquet is not None
        state = self.cfg.alerts.state_signal  # context for the rules, never windowed
        self._phase_file = Path(self.cfg.state_dir) / "window-phases.json"
        w = warm.warm_windows(self.parquet.root, self.windows, skip_assets=dead,
                              skip_signals=[state] if state else [],
                              phases=warm.load_phases(self._phase_file, self.windows))
        self.warm_start = w
        if w.readings:
            log.info("window buffers of %d assets warmed from %d readings of the write-ahead "
                     "log (%d windows they complete were scored before the restart)",
                     w.assets, w.readings, w.windows_skipped)

    def _model_refs(self) -> list[ModelRef]:
        m = self.scorer.bundle.manifest
        return [ModelRef(0, m.name, m.version, m.model_sha256)]

    def _initial_bundle(self, state: Path) -> Bundle:
        b = self.cfg.bundle
        if b.name is None:
            assert b.path is not None
            return load_bundle(b.path, b.trusted_keys, allow_unsigned=b.allow_unsigned)
        self.registry = Registry(state / "models", b.trusted_keys, b.allow_unsigned,
                                 audit=self.audit, intra_op_threads=b.intra_op_threads)
        if not self.registry.pointers(b.name).active:
            if b.path is None:
                raise ConfigError(f"bundle.name = {b.name!r}: the registry under "
                                  f"{state / 'models'} has no version of it and no "
                                  "bundle.path is given to install")
            self.registry.install(b.path, actor="agent")
        return self.registry.load(b.name)

    def _model_info(self, bundle: Bundle) -> None:
        m = bundle.manifest
        self.metrics.model_info.info({"name": m.name, "version": m.version,
                                      "kind": m.output.kind, "signed_by": bundle.signed_by or ""})

    def _activate(self, bundle: Bundle, scorer: Scorer) -> None:
        """A promoted version takes over between two batches (see Pipeline.swap_scorer)."""
        m = bundle.manifest
        windows = None
        if not same_grid(self.scorer.bundle.manifest, m):
            windows = WindowSet(m.signal_names, period=m.sample_period_s, window=m.window,
                                hop=m.hop, max_hold=m.gap.max_hold_samples,
                                max_lateness=self.cfg.ingest.max_lateness_slots)
            self.windows = windows
        self.alerts.set_rules(RuleSpec.from_manifest(m, self.cfg.alerts),
                              m.output.feature_names, m.signal_names, signal_bands(m))
        if self.drift is not None:
            self.drift.swap(m)
        self.scorer = scorer
        bounds = bounds_of(m.signals, m.limits)
        self.alerts.set_bounds(bounds)
        self.pipeline.set_bounds(bounds)
        self.pipeline.swap_scorer(scorer, windows)
        self._model_info(bundle)
        self.audit.record("agent", "model_activated", model=bundle.ident)

    # -- callbacks ---------------------------------------------------------------
    def _publish(self, topic: str, payload: bytes, retain: bool) -> None:
        self.conn.publish(topic, payload, retain=retain)
        if self.webhook is not None and not retain:  # events, not the retained state
            self.webhook.put(payload)

    def _webhook_state(self) -> list[tuple[str, str, str, float]]:
        w = self.webhook
        if w is None:
            return []
        return [("forewarn_webhook_outbox_depth", "Alert events waiting for the webhook",
                 "gauge", float(w.depth())),
                ("forewarn_webhook_delivered_total", "Alert events the webhook accepted",
                 "counter", float(w.delivered)),
                ("forewarn_webhook_dropped_total", "Alert events dropped from a full outbox",
                 "counter", float(w.dropped))]

    def _on_connected(self) -> None:
        # Retained alert state may have been lost with a broker that had no persistence.
        threading.Thread(target=self.alerts.republish_all, daemon=True).start()

    def _send_rebirth(self, group: str, node: str) -> None:
        from edge.ingest.sparkplug import rebirth_command

        topic, payload = rebirth_command(group, node)
        self.conn.publish(topic, payload, qos=0)

    def _on_stale(self, asset: str, stale: bool) -> None:
        if stale:
            self.windows.reset(asset)
        self.alerts.set_source_dead(asset, stale)  # shown as stale on the page and API

    def _on_state(self, asset: str, code: float) -> None:
        """Idle/changeover codes suppress the asset's alerts; other codes lift it."""
        suppress = code in self.cfg.alerts.suppress_states
        if self._asset_state.get(asset) == suppress:
            return
        self._asset_state[asset] = suppress
        self.alerts.set_maintenance(asset, suppress,
                                    f"state:{self.cfg.alerts.state_signal}={code:g}")

    def _reject(self, msg: Message, exc: DecodeError) -> None:
        topic, payload = msg.topic, msg.payload
        if topic == DECODED:
            # A reading from a worker's decoded batch (an implausible value): the raw
            # message stayed in the worker; the detail names asset, signal and value.
            topic, payload = WORKER_BATCH_TOPIC, b""
        self.deadletter.write(msg.received, topic, exc.reason, payload, exc.detail)
        self._ratelog.log(logging.WARNING, exc.reason, "rejected message on %s: %s",
                          topic[:120], exc)

    def _decode(self, topic: str, payload: bytes, now: float) -> DecodeResult:
        """Unpack a worker's decoded batch (its rejects are counted here), else decode."""
        if topic != DECODED:
            return self.router.decode(topic, payload, now)
        b: DecodedBatch = payload  # type: ignore[assignment]
        if b.n_messages > 1:  # the pipeline counts the batch itself as one message
            self.metrics.messages_received.inc(b.n_messages - 1)
        if b.shed:
            self.metrics.queue_dropped.inc(b.shed)
        for topic_, reason, detail, head, received in b.rejects:
            self.metrics.decode_errors.labels(reason).inc()
            self._reject(Message(topic_, head, received, 0, 0), DecodeError(reason, detail))
        for topic_, reason, detail, head, received in b.letters:  # counted in b.dropped
            self._reject(Message(topic_, head, received, 0, 0), DecodeError(reason, detail))
        return b.to_result()

    def _ack(self, msgs: list[Message]) -> None:
        assert self.workers is not None
        self.conn.ack(self.workers.ack(msgs))

    def _rollout_state(self) -> list[tuple[str, str, str, float]]:
        rollout = self.pipeline.rollout
        if rollout is None:
            return []
        snap = rollout.shadow.snapshot() if rollout.mode == "shadow" else None
        out = [("forewarn_candidate_active", "1 while a candidate model runs (shadow or "
                "canary)", "gauge", 1.0)]
        if snap:
            alerts, lat = snap["alerts"], snap["latency_s"]
            out += [
                ("forewarn_shadow_windows_total", "Windows scored by both models", "counter",
                 float(snap["compared"])),
                ("forewarn_shadow_score_correlation", "Pearson correlation of active and "
                 "candidate scores", "gauge", float(snap["correlation"] or 0.0)),
                ("forewarn_shadow_alert_agreement", "Share of windows where both models agree "
                 "on the alert condition", "gauge", float(alerts["agreement"] or 0.0)),
                ("forewarn_shadow_active_latency_p99_seconds", "p99 per-window inference time, "
                 "active model", "gauge", float(lat["active"]["p99"] or 0.0)),
                ("forewarn_shadow_candidate_latency_p99_seconds", "p99 per-window inference "
                 "time, candidate model", "gauge", float(lat["candidate"]["p99"] or 0.0)),
            ]
        return out

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
            ("forewarn_storage_compactions_total", "Write-ahead log compactions into Parquet "
             "partitions", "counter", float(p.compactions)),
            ("forewarn_storage_compaction_errors_total", "Failed compactions (the log is kept "
             "and retried)", "counter", float(p.compaction_errors)),
            ("forewarn_storage_wal_bytes", "Bytes in the write-ahead log, not yet compacted",
             "gauge", float(p.wal.bytes)),
        ]

    def _retention(self) -> None:
        """A job of the store's compactor thread, at most once a minute.

        Under the compaction lock: no partition is deleted while a compaction writes it.
        """
        now = time.monotonic()
        if now - self._last_retention < 60 or self.parquet is None:
            return
        self._last_retention = now
        st = self.cfg.storage
        try:
            with self.parquet.exclusive():
                n, freed = retention.enforce(
                    self.parquet.root, self.clock(), st.retention_days * 86_400,
                    st.disk_budget_mb * 1e6, self.parquet.recent_partitions(2 * 86_400))
        except OSError as exc:
            self._ratelog.log(logging.WARNING, "retention", "retention failed: %s", exc)
            return
        if n:
            log.info("retention removed %d partitions (%.1f MB)", n, freed / 1e6)
        self.metrics.storage_bytes.set(
            sum(p.bytes for p in retention.list_partitions(self.parquet.root))
            + retention.wal_bytes(self.parquet.root))

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        if self.parquet is not None:
            self.parquet.start()  # compactor thread: a log left by the last run first
        self.pipeline.start()
        self.conn.start()
        if self.workers:
            self.workers.start()
        for source in self.sources:
            source.start()
        if self.uplink:
            self.uplink.start()
        if self.health_report:
            self.health_report.start()
        if self.webhook:
            self.webhook.start()
        if self.cfg.api.enabled:
            self._start_api()
        t = threading.Thread(target=self._supervise, name="forewarn-supervisor", daemon=True)
        t.start()
        self._threads.append(t)
        # Everything built so far lives as long as the agent: out of the collector's
        # generations, a full collection no longer walks it (measured: the gen-2 pause
        # behind the alert-latency p99 went from ~56 ms to ~1 ms).
        gc.collect()
        gc.freeze()
        sdnotify.ready(f"scoring with {self.scorer.ident}")
        log.info("agent started: model %s, site %s", self.scorer.ident, self.cfg.site)

    def _start_api(self) -> None:
        # Imported here: FastAPI, Starlette and uvicorn are ~17 MB of RSS that an agent
        # with the API off never needs.
        import uvicorn

        from edge.api.app import ApiDeps, create_app
        from edge.api.auth import load_tokens
        from edge.api.serve import request_limits, server_config
        api = self.cfg.api
        tokens = load_tokens(api.tokens_file) if api.tokens_file else {}
        refused = self.metrics.api_refused
        deps = ApiDeps(manager=self.alerts, registry=self.metrics.registry, tokens=tokens,
                       read_open=api.reads_open, status=self.status,
                       audit=self.audit, models=self.lifecycle,
                       limits=request_limits(api),
                       on_refused=lambda reason: refused.labels(reason).inc(),
                       manifest=lambda: self.scorer.bundle.manifest,
                       sessions_path=Path(self.cfg.state_dir) / "sessions.sqlite",
                       session_days=api.session_days)
        app = create_app(deps)
        app.state.alarm_operators = self.cfg.alerts.operators
        self._server = uvicorn.Server(server_config(api, app))
        # uvicorn captures signals only when run from the main thread: the agent's own
        # SIGTERM handling stays in charge.
        t = threading.Thread(target=self._server.run, name="forewarn-api", daemon=True)
        t.start()
        self._threads.append(t)

    def _supervise(self) -> None:
        """Feeds the systemd watchdog only while the hot loop keeps beating."""
        next_poll = 0.0
        while not self._stop.wait(0.5):
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
            if self.lifecycle is not None and time.monotonic() >= next_poll:
                next_poll = time.monotonic() + self.cfg.bundle.registry_poll_s
                self.lifecycle.poll()
            self.watchdog.check()

    def health(self) -> tuple[bool, str]:
        """(ok, reason): what /healthz answers (503 with the reason when not ok)."""
        ok, reason = health.health(
            connected=self.conn.connected.is_set(),
            heartbeat_age_s=self.watchdog.ages().get("pipeline", 0.0),
            max_heartbeat_age_s=self.watchdog.max_age_s,
            max_silence_s=self.cfg.health.max_silence_s,
            last_reading_at=self.pipeline.last_reading_at, now=time.monotonic())
        for source in self.sources if ok else ():
            h = source.health()
            if not h.connected:
                return False, f"{source.name} down: {h.detail}"
        return ok, reason

    def _save_phases(self) -> None:
        """With hop > 1, the window phases the next start anchors on (edge/history/warm.py)."""
        if self._phase_file is None or self.windows.hop == 1:
            return
        if self.windows.phases() == self._phases:
            return
        try:
            self._phases = warm.save_phases(self._phase_file, self.windows)
        except OSError as exc:
            self._ratelog.log(logging.WARNING, "phases", "cannot save window phases: %s", exc)

    def status(self) -> dict[str, Any]:
        ok, reason = self.health()
        return {
            "ok": ok,
            "reason": reason,
            "version": __version__,
            "model": self.scorer.ident,
            "site": self.cfg.site,
            "mqtt_connected": self.conn.connected.is_set(),
            "windows_scored": self.pipeline.scored_total,
            "pipeline_heartbeat_age_s": round(self.watchdog.ages().get("pipeline", 0.0), 3),
            "queue_depth": self.inbox.qsize(),
            "sources": [{"name": src.name, "connected": h.connected, "detail": h.detail}
                        for src in self.sources for h in [src.health()]],
        }

    def stop(self) -> None:
        sdnotify.stopping()
        self._stop.set()
        if self._server:
            self._server.should_exit = True
        for source in reversed(self.sources):  # their last batches drain with the rest
            source.stop()
        # Drain, store and acknowledge while still connected: acks sent after the
        # disconnect are lost and the broker would redeliver what is already stored.
        self.pipeline.stop()
        if self.workers:  # after the pipeline's last acks reached them
            self.workers.stop()
        self.conn.stop()
        if self.health_report:
            self.health_report.stop()
        if self.uplink:
            self.uplink.stop()
        if self.webhook:
            self.webhook.stop()
        if self.router.sparkplug:
            self.router.sparkplug.flush()
        self.deadletter.close()
        self._save_phases()
        for t in self._threads:
            t.join(5)
        if self.parquet is not None:  # the durable log is compacted at the next start
            self.parquet.close(compact=False)
        self.alert_store.close()
        gc.unfreeze()  # what start froze may now be collected (several agents per process)
        log.info("agent stopped")


def check_config(path: Path) -> int:
    """``--check-config``: validate the config and the bundle, print problems, exit code."""
    try:
        cfg = load_config(path)
        b = cfg.bundle
        registry = Registry(Path(cfg.state_dir) / "models", b.trusted_keys, b.allow_unsigned)
        if b.name and registry.pointers(b.name).active:
            bundle = registry.load(b.name)
        elif b.path is not None:
            bundle = load_bundle(b.path, b.trusted_keys, allow_unsigned=b.allow_unsigned)
        else:
            raise ConfigError(f"bundle.name = {b.name!r} has no installed version and no "
                              "bundle.path is given")
        Scorer(bundle)
        check_tls(cfg.api)
    except ForewarnError as exc:
        print(f"{exc}")
        return 1
    print(f"{path}: OK (site {cfg.site}, bundle {bundle.ident})")
    return 0


def run_agent(path: Path) -> int:
    try:
        cfg = load_config(path)
        check_tls(cfg.api)
    except ConfigError as exc:
        print(exc)
        return 2
    logging.getLogger().setLevel(cfg.log_level)
    agent = Agent(cfg)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    agent.start()
    # A timed wait: the kernel may deliver SIGTERM to any thread, and Python runs the
    # handler only when the main thread executes bytecode. An untimed wait left the
    # agent running after SIGTERM under strace (tests/faults/test_access.py).
    while not done.wait(0.5):
        pass
    agent.stop()
    return 0
