"""The composition root: builds the agent from one config, starts in order, stops in reverse.

Readings come in through the sources (:mod:`edge.ingest.source`: the site broker,
the ingest worker processes) and leave the site only through the senders
(:mod:`edge.egress.sender`: the cloud uplink, the webhook); everything in between
is built here and owns its own policy. Nothing here runs per message.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge import __version__
from edge.alerts.bands import signal_bands
from edge.alerts.limits import LimitSettings
from edge.alerts.manager import AlertManager
from edge.alerts.publisher import AlertPublisher
from edge.alerts.rules import RuleSpec, describe_rule
from edge.alerts.state import StateRule
from edge.alerts.store import AlertStore
from edge.alerts.verdicts import model_verdicts
from edge.core import health, sdnotify
from edge.core.audit import AuditLog
from edge.core.config import AgentConfig
from edge.core.library_pages import unmap_library_text
from edge.core.metrics import Metrics
from edge.core.trim import Trimmer
from edge.drift.reporting import DriftReporter
from edge.drift.state import STATE_FILE as DRIFT_STATE_FILE
from edge.egress.health_report import HealthReporter, ModelRef
from edge.egress.site import build_egress
from edge.history import retention, warm
from edge.history.site import History, open_history
from edge.ingest.deadletter import DeadLetter, Rejects
from edge.ingest.message import MessageQueue
from edge.ingest.router import Router
from edge.ingest.source import Source
from edge.ingest.sources import site_sources
from edge.ingest.topics import TopicMap
from edge.models.bundle import Bundle, Manifest
from edge.models.commissioning import Commissioning
from edge.models.infer import Scorer, TemplateScorer, scorer_for
from edge.models.lifecycle import ModelLifecycle, initial_bundle, same_grid
from edge.models.sitestore import SiteParamsRegistry
from edge.models.walker import RolloutEvents
from edge.scoring.pipeline import Pipeline
from edge.scoring.ranges import bounds_of
from edge.scoring.window import WindowSet

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger(__name__)


def _windows(m: Manifest, max_lateness: int) -> WindowSet:
    return WindowSet(m.signal_names, period=m.sample_period_s, window=m.window, hop=m.hop,
                     max_hold=m.gap.max_hold_samples, max_lateness=max_lateness)


class Agent:
    def __init__(self, cfg: AgentConfig, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        state = Path(cfg.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        self.audit = AuditLog(state / "audit.jsonl")
        bundle, self.registry = initial_bundle(cfg.bundle, state / "models", self.audit)
        self.scorer = scorer_for(bundle, intra_op_threads=cfg.bundle.intra_op_threads)
        self.commissioning: Commissioning | None = None
        self._commission(bundle, self.scorer)
        m = bundle.manifest
        self.metrics.build_info.info({"version": __version__})
        self._model_info(bundle)
        self.windows = _windows(m, cfg.ingest.max_lateness_slots)

        # -- input: the sources and the inbox they fill ------------------------------
        self.inbox = MessageQueue(cfg.ingest.queue_size, cfg.ingest.queue_bytes)
        self.deadletter = DeadLetter(state / "dead-letter.jsonl",
                                     cfg.ingest.dead_letter_max_bytes, per_second=50)
        self.metrics.add_state(self.deadletter.metric_state)
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
        self.conn, self.workers, self.sources = site_sources(
            cfg, self.router, self.inbox, self.metrics, self._on_connected)
        # OPC UA servers push decoded batches (their own origin) into the same inbox.
        # They have no upstream ack, so they stop before the hot loop drains (below).
        self.push_sources: list[Source] = []
        if cfg.opcua.servers:
            from edge.ingest.opcua import OpcUaSource  # asyncua: ~16 MB, only when configured

            for server in cfg.opcua.servers:
                src = OpcUaSource(server, self.inbox, self.metrics)
                self.push_sources.append(src)
                self.sources[src.name] = src

        # -- output: the senders off site, each delivery recorded in the one ledger --
        self.egress = build_egress(cfg, state)
        eg = self.egress
        self.webhook, self.uplink, self.outbox, self.sealer = (eg.webhook, eg.uplink,
                                                               eg.outbox, eg.sealer)
        if self.webhook is not None:
            self.metrics.add_state(self.webhook.metric_state)

        # -- alerts, drift, health report ---------------------------------------------
        self.alert_store = AlertStore(state / "alerts.sqlite",
                                      retention_days=cfg.alerts.retention_days)
        self.publisher = AlertPublisher(self.conn.publish,
                                        [self.webhook] if self.webhook else [])
        self.alerts = AlertManager(
            self.alert_store, self._rules(m), self.publisher, cfg.site,
            feature_names=m.output.feature_names, signal_names=m.signal_names,
            signal_bands=signal_bands(m), alerts_topic=cfg.mqtt.alerts_topic,
            events_topic=cfg.mqtt.events_topic,
            metrics=self.metrics, stale_after_s=cfg.alerts.stale_after_s, group_commit=True,
            evidence_interval_s=cfg.alerts.evidence_interval_s,
            bounds=bounds_of(m.signals, m.limits), bounds_model=bundle.ident,
            limit_settings=LimitSettings(cfg.alerts.limits.clear_after,
                                         cfg.alerts.limits.deadband))
        if sparkplug is not None:  # deaths recorded by the previous run
            for asset in sparkplug.stale_assets:
                self.alerts.set_source_dead(asset, True)
        state_rule = (StateRule(cfg.alerts.state_signal, cfg.alerts.suppress_states,
                                self.alerts.set_maintenance)
                      if cfg.alerts.state_signal else None)
        sinks: list[Any] = [self.alerts]
        self.drift: DriftReporter | None = None
        if cfg.drift.enabled:
            self.drift = DriftReporter(m, cfg.drift.interval_windows, self.metrics, cfg.egress,
                                       eg.sealed("drift"), state_path=state / DRIFT_STATE_FILE)
            sinks.append(self.drift)
        self.health_report: HealthReporter | None = None
        health_out = eg.sealed("health")
        if health_out is not None:
            e = cfg.egress
            self.health_report = HealthReporter(
                site_id=e.site_id, k=e.k, registry=self.metrics.registry,
                store_path=state / "alerts.sqlite", models=self._model_refs, state_dir=state,
                operators=cfg.alerts.operators, put=health_out.put,
                interval_s=e.health_interval_s, on_rejected=self.metrics.egress_rejected.inc)

        # -- history --------------------------------------------------------------------
        self.clock = retention.AgentClock()
        # Freed heap back to the OS after a flush, an emptied queue and a model swap:
        # otherwise RSS keeps a burst's peak for good (edge/core/trim.py).
        self.trimmer = Trimmer()
        self.history: History | None = None
        if cfg.storage.enabled:
            self.history = open_history(
                cfg.storage, state, lambda: self.windows, self.metrics, self.clock,
                dead=sparkplug.stale_assets if sparkplug else (),
                state_signal=cfg.alerts.state_signal, trim=self.trimmer)
        h = self.history
        self.parquet = h.store if h else None
        self.retention = h.retention if h else None
        self.warm_start = h.warm_start if h else warm.WarmStart()

        # -- the hot loop and the model lifecycle ------------------------------------------
        self.pipeline = Pipeline(
            self.inbox, self.router.decode, self.windows, self.scorer, self.metrics,
            sinks=sinks, store=h.flush if h else None, sources=self.sources,
            on_reject=Rejects(self.deadletter), batch_max=cfg.ingest.batch_max,
            bounds=bounds_of(m.signals, m.limits), limits=self.alerts,
            state_signal=cfg.alerts.state_signal,
            on_state=state_rule.update if state_rule else None,
            max_future_skew_s=cfg.ingest.max_future_skew_s,
            on_idle=[self.trimmer, partial(self.alerts.write_evidence, due_only=True)])
        self.pipeline.breached = lambda score: self.scorer.bundle.manifest.breached(
            score, self.alerts.rules.warning)
        # A quiet stream runs to completion in the network thread (Pipeline.try_inline).
        self.conn.inline = self.pipeline.try_inline
        self.alerts.sync_here = self.pipeline.inline_active
        self.lifecycle: ModelLifecycle | None = None
        if self.registry is not None:
            self.lifecycle = ModelLifecycle(
                self.registry, cfg.bundle, self.pipeline, self.metrics, self._activate,
                events=RolloutEvents(self.conn.publish, cfg.mqtt.events_topic, cfg.site),
                verdicts=partial(model_verdicts, state / "alerts.sqlite"))
            self.metrics.add_state(self.lifecycle.metric_state)
        self.watchdog = sdnotify.Watchdog(self.pipeline.heartbeats, max_age_s=20.0)
        self._server: uvicorn.Server | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def _model_refs(self) -> list[ModelRef]:
        m = self.scorer.bundle.manifest
        return [ModelRef(0, m.name, m.version, m.model_sha256)]

    def _model_info(self, bundle: Bundle) -> None:
        m = bundle.manifest
        self.metrics.model_info.info({"name": m.name, "version": m.version,
                                      "kind": m.output.kind, "signed_by": bundle.signed_by or ""})

    def _commission(self, bundle: Bundle, scorer: Scorer) -> None:
        """A template scores only assets whose site parameters are installed."""
        if not isinstance(scorer, TemplateScorer):
            self.commissioning = None
            return
        b = self.cfg.bundle
        sites = SiteParamsRegistry(Path(self.cfg.state_dir) / "models", b.trusted_keys,
                                   self.audit, site_keys=b.site_keys)
        self.commissioning = Commissioning(bundle, scorer, sites, Path(self.cfg.state_dir),
                                           self.metrics)
        self.commissioning.poll()

    def _commissioning_view(self) -> dict[str, Any] | None:
        c = self.commissioning
        return None if c is None else c.snapshot()

    def _rules(self, m: Manifest) -> RuleSpec:
        """The bundle's alert policy, with the fields the agent config sets; said once."""
        spec = RuleSpec.from_manifest(m, self.cfg.alerts)
        log.info("%s", describe_rule(spec, m, self.cfg.alerts))
        return spec

    def _activate(self, bundle: Bundle, scorer: Scorer) -> None:
        """A promoted version takes over between two batches (see Pipeline.swap_scorer)."""
        m = bundle.manifest
        rules = self._rules(m)  # first: a rule that does not fit leaves the old model on
        windows = None
        if not same_grid(self.scorer.bundle.manifest, m):
            windows = self.windows = _windows(m, self.cfg.ingest.max_lateness_slots)
        self.alerts.set_rules(rules, m.output.feature_names, m.signal_names, signal_bands(m))
        if self.drift is not None:
            self.drift.swap(m)
        self.scorer = scorer
        bounds = bounds_of(m.signals, m.limits)
        self.alerts.set_bounds(bounds, bundle.ident)
        self.pipeline.set_bounds(bounds)
        self._commission(bundle, scorer)
        self.pipeline.swap_scorer(scorer, windows)
        self._model_info(bundle)
        self.audit.record("agent", "model_activated", model=bundle.ident)
        self.trimmer(force=True)  # the old session's arena and buffers, once dropped
        self._unmap_startup_pages()  # what building the new session ran

    def _unmap_startup_pages(self) -> None:
        if self.cfg.memory.unmap_library_text:
            kb = unmap_library_text()
            log.info("unmapped %.1f MB of library pages start-up touched", kb / 1024)

    # -- callbacks of the site connection and the Sparkplug decoder ----------------------
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

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        if self.parquet is not None:
            self.parquet.start()  # compactor thread: a log left by the last run first
        self.pipeline.start()
        for source in self.sources.values():
            source.start()
        for sender in self.egress.senders:
            sender.start()
        if self.health_report:
            self.health_report.start()
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
        self._unmap_startup_pages()
        sdnotify.ready(f"scoring with {self.scorer.ident}")
        log.info("agent started: model %s, site %s", self.scorer.ident, self.cfg.site)

    def _start_api(self) -> None:
        # Imported here: FastAPI, Starlette and uvicorn are ~17 MB of RSS that an agent
        # with the API off never needs.
        from edge.api.app import ApiDeps, create_app
        from edge.api.auth import load_tokens
        from edge.api.serve import request_limits, serve_in_thread
        api = self.cfg.api
        refused = self.metrics.api_refused
        deps = ApiDeps(manager=self.alerts, registry=self.metrics.registry,
                       tokens=load_tokens(api.tokens_file) if api.tokens_file else {},
                       read_open=api.reads_open, status=self.status,
                       audit=self.audit, models=self.lifecycle,
                       limits=request_limits(api),
                       on_refused=lambda reason: refused.labels(reason).inc(),
                       manifest=lambda: self.scorer.bundle.manifest,
                       commissioning=self._commissioning_view,
                       stale_after_s=self.cfg.alerts.stale_after_s,
                       sessions_path=Path(self.cfg.state_dir) / "sessions.sqlite",
                       session_days=api.session_days)
        app = create_app(deps)
        app.state.alarm_operators = self.cfg.alerts.operators
        self._server, t = serve_in_thread(api, app)
        self._threads.append(t)

    def _supervise(self) -> None:
        """Feeds the systemd watchdog only while the hot loop keeps beating."""
        next_poll = next_commission = 0.0
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
            if self.commissioning is not None and time.monotonic() >= next_commission:
                next_commission = time.monotonic() + self.cfg.bundle.registry_poll_s
                self.commissioning.poll()
            self.watchdog.check()

    def health(self) -> tuple[bool, str]:
        """(ok, reason): what /healthz answers (503 with the reason when not ok)."""
        link = self.conn.health()  # down, or up with a subscription the broker refused
        ok, reason = health.health(
            connected=link.connected, link_detail=link.detail,
            heartbeat_age_s=self.watchdog.ages().get("pipeline", 0.0),
            max_heartbeat_age_s=self.watchdog.max_age_s,
            max_silence_s=self.cfg.health.max_silence_s,
            last_reading_at=self.pipeline.last_reading_at, now=time.monotonic())
        # Every other source too (ingest workers, OPC UA servers): a dead worker process
        # loses its share of the site's topics while the site link looks fine.
        for source in self.sources.values() if ok else ():
            if source is self.conn:
                continue
            h = source.health()
            if not h.connected:
                return False, f"{source.name} down: {h.detail}"
        return ok, reason

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
                        for src in self.sources.values() if src is not self.conn
                        for h in [src.health()]],
        }

    def stop(self) -> None:
        sdnotify.stopping()
        self._stop.set()
        if self._server:
            self._server.should_exit = True
        for source in reversed(self.push_sources):  # their last batches drain with the rest
            source.stop()
        # Drain, store and acknowledge while still connected: acks sent after the
        # disconnect are lost and the broker would redeliver what is already stored.
        self.pipeline.stop()
        if self.lifecycle is not None:  # the stage's hold so far, for the next start
            self.lifecycle.close()
        for source in reversed(self.sources.values()):  # the workers after their last acks
            if source not in self.push_sources:
                source.stop()
        if self.health_report:
            self.health_report.stop()
        for sender in reversed(self.egress.senders):
            sender.stop()
        if self.router.sparkplug:
            self.router.sparkplug.flush()
        self.deadletter.close()
        if self.history is not None:
            self.history.phases.save()
        if self.commissioning is not None:
            self.commissioning.save()
        for t in self._threads:
            t.join(5)
        if self.parquet is not None:  # the durable log is compacted at the next start
            self.parquet.close(compact=False)
        self.alerts.write_evidence()  # the pipeline has stopped: the last scores are in
        self.alert_store.close()
        gc.unfreeze()  # what start froze may now be collected (several agents per process)
        log.info("agent stopped")
