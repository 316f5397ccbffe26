"""Every Prometheus metric of the agent, on an injected registry.

Names follow Prometheus conventions (``forewarn_`` prefix, base units, ``_total``
counters). Label values come only from bounded sets: decode-error reasons are a
fixed vocabulary, and per-asset series are not used here (see docs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# What a live object reports at scrape time: (name, help, "gauge"|"counter", value).
StateRow = tuple[str, str, str, float]

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.build_info = Info("forewarn_build", "Agent build information", registry=r)
        self.model_info = Info("forewarn_model", "Active model bundle", registry=r)
        self.messages_received = Counter(
            "forewarn_messages_received_total", "MQTT messages received", registry=r)
        self.readings_received = Counter(
            "forewarn_readings_received_total", "Sensor readings accepted by decoders",
            registry=r)
        self.decode_errors = Counter(
            "forewarn_decode_errors_total", "Payloads or readings rejected, by reason",
            ["reason"], registry=r)
        self.stamped_on_receipt = Counter(
            "forewarn_readings_stamped_on_receipt_total",
            "Readings without a timestamp, given the receive time", registry=r)
        self.readings_dropped = Counter(
            "forewarn_readings_dropped_total", "Readings dropped by the window stage, by reason",
            ["reason"], registry=r)
        self.readings_outside_training = Counter(
            "forewarn_readings_outside_training_total",
            "Readings outside their signal's training range (kept, limit alert), by bound",
            ["bound"], registry=r)
        self.queue_dropped = Counter(
            "forewarn_ingest_queue_dropped_total", "Messages shed because the queue was full",
            registry=r)
        self.queue_depth = Gauge(
            "forewarn_ingest_queue_depth", "Messages waiting in the ingest queue", registry=r)
        self.windows_scored = Counter(
            "forewarn_windows_scored_total", "Windows scored by the model", registry=r)
        self.windows_skipped = Counter(
            "forewarn_windows_skipped_total", "Windows not scored, by reason", ["reason"],
            registry=r)
        self.inference_seconds = Histogram(
            "forewarn_inference_duration_seconds", "onnxruntime run time per batch",
            buckets=LATENCY_BUCKETS, registry=r)
        self.inference_errors = Counter(
            "forewarn_inference_errors_total", "Batches that failed or gave non-finite scores",
            registry=r)
        self.alerts_open = Gauge(
            "forewarn_alerts_open", "Alerts not yet resolved", ["severity"], registry=r)
        self.api_refused = Counter(
            "forewarn_api_refused_total", "HTTP requests refused before they reach a route "
            "(host, body, streams_client, streams_total) or by the token lock-out (auth_locked)",
            ["reason"], registry=r)
        self.alert_transitions = Counter(
            "forewarn_alert_transitions_total", "Alert state changes", ["to_state"],
            registry=r)
        # Model alerts only; ``model`` is the bundle name (bounded: the bundles this
        # agent serves), ``verdict`` one of three. Every verdict given counts, an
        # amendment too; the precision gauge uses each alert's last verdict.
        self.alert_verdicts = Counter(
            "forewarn_alert_verdicts_total", "Crew verdicts on resolved model alerts",
            ["model", "verdict"], registry=r)
        self.alert_precision = Gauge(
            "forewarn_alert_precision", "Live precision of a model's alerts from the crew's "
            "last verdicts: confirmed / (confirmed + false alarm)", ["model"], registry=r)
        self.mqtt_connected = Gauge(
            "forewarn_mqtt_connected",
            "1 while connected to the site broker, from its SUBACK on", registry=r)
        self.publish_refused = Counter(
            "forewarn_mqtt_publish_refused_total",
            "Publishes not sent: their topic would break the broker connection (quarantined)",
            registry=r)
        self.mqtt_reconnects = Counter(
            "forewarn_mqtt_reconnects_total", "Connections to the site broker after the first",
            registry=r)
        # OPC UA sources: ``server`` is a configured server name (a bounded set),
        # ``reason`` a fixed vocabulary (edge/ingest/opcua_link.py).
        self.opcua_connected = Gauge(
            "forewarn_opcua_connected", "1 while subscribed on the OPC UA server", ["server"],
            registry=r)
        self.opcua_reconnects = Counter(
            "forewarn_opcua_reconnects_total", "Sessions with the OPC UA server after the first",
            ["server"], registry=r)
        self.opcua_connect_errors = Counter(
            "forewarn_opcua_connect_errors_total", "Failed connection attempts, by reason "
            "(untrusted_certificate, security_rejected, auth_rejected, unreachable, timeout, "
            "config, protocol)", ["server", "reason"], registry=r)
        self.opcua_subscriptions = Counter(
            "forewarn_opcua_subscriptions_total", "Subscriptions set up after a connect: "
            "transferred (the server's queues kept) or created", ["server", "how"], registry=r)
        self.opcua_republished = Counter(
            "forewarn_opcua_republished_total", "Notification messages sent but not received, "
            "fetched again after a reconnect (Republish)", ["server"], registry=r)
        self.opcua_samples = Counter(
            "forewarn_opcua_samples_total", "Data-change samples received (kept or not)",
            ["server"], registry=r)
        self.opcua_duplicates = Counter(
            "forewarn_opcua_duplicates_total", "Samples already delivered, resent by the server "
            "after a reconnect (dropped)", ["server"], registry=r)
        self.opcua_timestamp_fallbacks = Counter(
            "forewarn_opcua_timestamp_fallbacks_total", "Samples without a SourceTimestamp, by "
            "the time used instead (server, receipt)", ["server", "used"], registry=r)
        self.opcua_queue_overflows = Counter(
            "forewarn_opcua_queue_overflows_total", "Samples flagged by the server: its queue "
            "for the node overflowed and older samples were discarded", ["server"], registry=r)
        self.assets_tracked = Gauge(
            "forewarn_assets_tracked", "Assets with live window buffers", registry=r)
        self.heartbeat_age = Gauge(
            "forewarn_stage_heartbeat_age_seconds", "Seconds since each stage last ran",
            ["stage"], registry=r)
        # Fleet health read by deploy/prometheus alert rules and the Grafana
        # dashboard (tests/integration/test_deploy_configs.py checks the names);
        # set by the drift, storage and egress stages.
        self.drift_alarms = Gauge(
            "forewarn_drift_alarms",
            "Features (and the score) over their calibrated drift threshold, last interval",
            registry=r)
        self.storage_bytes = Gauge(
            "forewarn_storage_bytes", "Bytes of raw history on disk", registry=r)
        self.storage_budget_bytes = Gauge(
            "forewarn_storage_budget_bytes", "Configured disk budget for raw history",
            registry=r)
        self.storage_paused = Gauge(
            "forewarn_storage_paused", "1 while history writing is paused (disk full)",
            registry=r)
        self.outbox_depth = Gauge(
            "forewarn_outbox_depth", "Drift reports waiting in the egress outbox", registry=r)
        self.outbox_oldest_age = Gauge(
            "forewarn_outbox_oldest_age_seconds", "Age of the oldest report in the outbox",
            registry=r)
        self.drift_intervals = Counter(
            "forewarn_drift_intervals_total", "Drift reporting intervals closed", registry=r)
        self.drift_alarm_intervals = Counter(
            "forewarn_drift_alarm_intervals_total", "Drift intervals over a calibrated threshold",
            registry=r)
        self.drift_score_psi = Gauge(
            "forewarn_drift_score_psi", "PSI of the score in the last interval", registry=r)
        self.drift_max_feature_psi = Gauge(
            "forewarn_drift_max_feature_psi", "Largest feature PSI in the last interval",
            registry=r)
        self.egress_rejected = Counter(
            "forewarn_egress_rejected_total", "Reports refused by the egress allow-list",
            registry=r)
        self.egress_suppressed = Counter(
            "forewarn_egress_suppressed_total", "Reports suppressed for fewer than k windows",
            registry=r)

        self.commissioning_assets = Gauge(
            "forewarn_commissioning_assets", "Assets under a template bundle, by commissioning "
            "state (learning, ready, insufficient_data)", ["state"], registry=r)
        self.commissioning_unverified = Gauge(
            "forewarn_commissioning_unverified_assets", "Ready assets whose learned "
            "parameters failed the held-back verification and were installed flagged",
            registry=r)
        self.model_swaps = Counter(
            "forewarn_model_swaps_total", "Hot swaps to a newly promoted model version",
            registry=r)
        self.canary_rollbacks = Counter(
            "forewarn_canary_rollbacks_total", "Automatic canary rollbacks, by rule", ["rule"],
            registry=r)
        # The staged walk of a candidate (edge/models/stages.py); reason labels are its
        # fixed vocabulary (ROLLBACK_REASONS), never free text.
        self.rollout_stage = Gauge(
            "forewarn_rollout_stage", "Stage of the candidate's staged rollout (0 = the first, "
            "shadow by default); -1 while none runs", registry=r)
        self.rollout_stage.set(-1)
        self.rollout_share = Gauge(
            "forewarn_rollout_share", "Share of assets the candidate scores for (0 in shadow)",
            registry=r)
        self.rollout_paused = Gauge(
            "forewarn_rollout_paused", "1 while a person has paused the staged rollout",
            registry=r)
        self.rollout_hold_remaining = Gauge(
            "forewarn_rollout_hold_remaining_seconds", "Hold left in the current stage",
            registry=r)
        self.rollout_stages_passed = Counter(
            "forewarn_rollout_stages_passed_total", "Stages a candidate passed or a person "
            "advanced", registry=r)
        self.rollout_rollbacks = Counter(
            "forewarn_rollout_rollbacks_total", "Staged rollouts rolled back, by reason "
            "(error_rate, latency_p99, alert_rate, false_alarms, promote_refused, aborted)",
            ["reason"], registry=r)

    def add_state(self, read: Callable[[], list[StateRow]]) -> None:
        """Expose values read from live objects at scrape time (no hot-path cost).

        ``read`` returns ``(name, help, "gauge"|"counter", value)`` tuples; each
        subject has its own (``metric_state()`` of the store, the webhook, ...).
        """
        self.registry.register(_StateCollector(read))


class _StateCollector(Collector):
    def __init__(self, read: Callable[[], list[StateRow]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        for name, doc, kind, value in self._read():
            if kind == "counter":
                yield CounterMetricFamily(name.removesuffix("_total"), doc, value=value)
            else:
                yield GaugeMetricFamily(name, doc, value=value)
