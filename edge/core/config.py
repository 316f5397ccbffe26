"""One strict config tree for the agent, loaded once from TOML by the CLI.

Unknown keys are rejected and every error names the key path and the value at
fault. Secrets (MQTT password, API tokens) are read from files given by path, so
they can come from systemd ``LoadCredential=`` and never sit in the config text.
"""

from __future__ import annotations

import ipaddress
import itertools
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationError, model_validator

from edge.core.errors import ConfigError
from edge.core.names import SafeName, template_problem
from edge.core.opcua_config import OpcUaConfig
from edge.core.strict import StrictMutable

# Site, bundle and signal names: the one rule of edge/core/names.py (topic levels, paths).
Name = SafeName
_PLACEHOLDERS = ("{site}", "{asset}", "{signal}")


def _template(value: str) -> str:
    problem = template_problem(value, _PLACEHOLDERS)
    if problem is not None:
        raise ValueError(problem)
    return value


# A topic template: literal levels must be publishable (no wildcard, no control
# character); placeholders fill whole levels and are replaced by checked names.
TopicTemplate = Annotated[str, AfterValidator(_template)]


class TLSConfig(StrictMutable):
    ca_file: Path | None = Field(None, description="CA bundle to verify the broker")
    cert_file: Path | None = Field(None, description="client certificate (mutual TLS)")
    key_file: Path | None = Field(None, description="client private key")
    insecure: bool = Field(False, description="skip hostname check (testing only)")


class MQTTConfig(StrictMutable):
    host: str = Field("127.0.0.1", description="site broker host")
    port: int = Field(1883, ge=1, le=65535)
    protocol: Literal["3.1.1", "5"] = "5"
    client_id: str = Field("", description="persistent-session id; default forewarn-<site>")
    username: str | None = None
    password_file: Path | None = Field(None, description="file holding the MQTT password")
    tls: TLSConfig | None = None
    qos: Literal[0, 1] = 1
    keepalive_s: int = Field(30, ge=5, le=3600)
    session_expiry_s: int = Field(86_400, ge=0, description="MQTT 5 persistent session")
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    receive_maximum: int = Field(1000, ge=1, le=65535, description="in-flight QoS 1 window")
    topics: list[TopicTemplate] = Field(
        default_factory=lambda: ["forewarn/{site}/{asset}/{signal}", "forewarn/{site}/{asset}"],
        description="topic templates with {site} {asset} {signal} placeholders",
    )
    sparkplug: bool = Field(False, description="also subscribe to spBv1.0/# (Sparkplug B)")
    alerts_topic: TopicTemplate = "forewarn/{site}/alerts/{asset}"
    events_topic: TopicTemplate = "forewarn/{site}/events/{asset}"


class CanaryStageConfig(StrictMutable):
    share: float = Field(gt=0, lt=1, description="share of assets on the candidate (sha256 of "
                                                 "the asset id: a larger share only adds assets)")
    hold_s: float = Field(gt=0, description="how long the stage runs before it is judged "
                                            "(paused time does not count)")


class RolloutStagesConfig(StrictMutable):
    """The staged walk of a candidate (``rollout = "staged"``): shadow, canary stages, promotion."""

    shadow_hold_s: float = Field(
        86_400.0, ge=0, description="hold of the shadow stage (the candidate scores every window "
                                    "beside the active model, unseen); 0 skips it")
    canary: list[CanaryStageConfig] = Field(
        default_factory=lambda: [CanaryStageConfig(share=0.05, hold_s=28_800.0),
                                 CanaryStageConfig(share=0.20, hold_s=86_400.0),
                                 CanaryStageConfig(share=0.50, hold_s=86_400.0)],
        description="canary stages in order, shares growing; after the last one passes the "
                    "candidate is promoted (100 %)")
    max_false_alarms: int = Field(
        3, ge=0, description="a stage fails when the crew marked more of the alerts the candidate "
                             "raised (since its walk began) as false alarms")

    @model_validator(mode="after")
    def _growing(self) -> RolloutStagesConfig:
        shares = [c.share for c in self.canary]
        if any(b <= a for a, b in itertools.pairwise(shares)):
            raise ValueError(f"canary shares {shares} must grow stage by stage: a smaller "
                             "share would take assets off the candidate")
        if self.shadow_hold_s == 0 and not shares:
            raise ValueError("a staged rollout needs a stage: shadow_hold_s > 0 or a canary "
                             "stage")
        return self


class BundleConfig(StrictMutable):
    path: Path | None = Field(
        None, description="bundle directory (models/<name>/<version>); with `name`, it is "
                          "installed into the registry when the registry has no version yet")
    name: Name | None = Field(
        None, description="serve the ACTIVE version of this model from the registry under "
                          "<state_dir>/models (hot swap on promote/rollback)")
    trusted_keys: list[Path] = Field(
        default_factory=list, description="Ed25519 public keys (files or directories)"
    )
    site_keys: list[Path] = Field(
        default_factory=list, description="site Ed25519 public keys (files or directories): "
        "they may sign only site parameters of a template a trusted (central) key signed")
    allow_unsigned: bool = Field(False, description="development only: accept unsigned bundles")
    intra_op_threads: int = Field(1, ge=1, le=64, description="onnxruntime threads")
    registry_poll_s: float = Field(2.0, gt=0, description="how often registry pointers are read")
    rollout: Literal["staged", "shadow", "canary"] = Field(
        "staged", description="how a CANDIDATE version runs beside the active one: 'staged' "
                              "walks rollout_stages to promotion; 'shadow' or 'canary' (on "
                              "canary_share) run until a person promotes or clears it")
    rollout_stages: RolloutStagesConfig = Field(
        default_factory=RolloutStagesConfig, description="the stages of rollout = 'staged'")
    canary_share: float = Field(0.1, gt=0, lt=1, description="share of assets on the candidate "
                                                             "with rollout = 'canary'")
    canary_max_error_ratio: float = Field(2.0, gt=1, description="roll back above this x stable")
    canary_p99_bound_s: float = Field(0.2, gt=0, description="roll back above this p99 latency")
    canary_alert_rate_factor: float = Field(
        3.0, gt=1, description="roll back when the alert rate departs by this factor")
    canary_min_windows: int = Field(100, ge=1, description="windows per group before judging; "
                                    "a staged stage also needs this many to pass")

    @model_validator(mode="after")
    def _source(self) -> BundleConfig:
        if self.path is None and self.name is None:
            raise ValueError("bundle needs `path` (a bundle directory) or `name` (registry)")
        return self


class IngestConfig(StrictMutable):
    queue_size: int = Field(100_000, ge=100, description="bounded ingest queue (messages)")
    queue_bytes: int = Field(
        1_048_576, ge=0,
        description="bound on the bytes in the ingest queue (payloads, topics and ~240 B a "
                    "message; 0 = no byte bound): a backlog then waits in the broker, not "
                    "in the agent's memory")
    queue_wait_s: float = Field(
        2.0, ge=0, le=60,
        description="how long the network thread waits for room in a full ingest queue "
                    "before it sheds the burst (counted in forewarn_ingest_queue_dropped_total)")
    max_payload_bytes: int = Field(1_048_576, ge=64)
    max_lateness_slots: int = Field(5, ge=0, description="out-of-order tolerance in slots")
    max_future_skew_s: float = Field(300.0, ge=0)
    batch_max: int = Field(512, ge=1, description="windows per inference batch")
    dead_letter_max_bytes: int = Field(10_000_000, ge=0)
    processes: int = Field(
        1, ge=1, le=32,
        description="ingest processes on an MQTT 5 shared subscription (edge/ingest/workers.py)")
    merge_idle_s: float = Field(
        1.0, gt=0, description="with processes > 1: a connected worker silent this long stops "
                               "holding back the others' readings (adds at most this latency)")
    merge_connect_wait_s: float = Field(
        60.0, ge=0, description="with processes > 1: how long a worker that is not (yet, or no "
                                "longer) connected to the broker holds back the others")
    merge_hold_max: int = Field(
        1_000_000, ge=1000, description="with processes > 1: readings held for ordering at "
                                        "most; beyond it the oldest are released early, counted")


class LimitAlertConfig(StrictMutable):
    """Limit and sensor-fault alarms on readings outside their ranges (edge.alerts.limits)."""

    clear_after: int = Field(5, ge=1, le=10_000, description="consecutive readings back in "
                             "range (past the deadband) before the alarm clears itself")
    deadband: float = Field(0.02, ge=0, lt=0.5, description="share of the limit span inside "
                            "the limits a reading must reach to count towards clearing")


class AlertRuleConfig(StrictMutable):
    """The alert rule comes from the bundle (its thresholds and ``alert_policy``); each
    level or rule field set here overrides the bundle's (unset = from the bundle), and
    the agent logs which ones it overrides."""

    warning: float | None = Field(None, description="override the bundle's warning level")
    critical: float | None = Field(None, description="override the bundle's critical level")
    reset: float | None = Field(None, description="override the bundle's reset level")
    k: int | None = Field(None, ge=1, description="override the bundle's k: open when K of "
                          "the last N windows breach")
    n: int | None = Field(None, ge=1, description="override the bundle's n (see k)")
    clear_after: int | None = Field(None, ge=1, description="override the bundle's "
                                    "clear_after: M windows past the reset level to clear")
    cooldown_s: float | None = Field(None, ge=0, description="override the bundle's "
                                     "cooldown: wait before the condition may re-open")
    retention_days: float = Field(365.0, gt=0, description="keep resolved alerts this long")
    stale_after_s: float = Field(
        300.0, gt=0, description="an asset's data counts as stale after this silence")
    evidence_interval_s: float = Field(
        1.0, ge=0, le=60,
        description="write an open alert's latest score, peak and history to the alert "
                    "store at most this often (lifecycle changes are written and synced "
                    "at once; the page and API always read the latest); a crash loses at "
                    "most this much of the score trace; 0 = every batch")
    state_signal: Name | None = Field(
        None, description="signal carrying the machine's operating state (numeric code)")
    suppress_states: list[float] = Field(
        default_factory=list,
        description="state codes (idle, changeover...) during which alerts are suppressed")
    operators: int = Field(1, ge=1, le=1000,
                           description="operators sharing these alarms (alarm-rate KPIs)")
    limits: LimitAlertConfig = LimitAlertConfig()

    @model_validator(mode="after")
    def _k_le_n(self) -> AlertRuleConfig:
        if self.k is not None and self.n is not None and self.k > self.n:
            raise ValueError(f"k={self.k} must not exceed n={self.n}")
        return self


class APIConfig(StrictMutable):
    enabled: bool = True
    host: str = Field("127.0.0.1", description="listen address; not 0.0.0.0 by default")
    port: int = Field(8080, ge=0, le=65535)
    tokens_file: Path | None = Field(None, description="lines 'person:token' for mutations")
    read_open: bool | None = Field(
        None, description="allow unauthenticated reads; default: only on a loopback host")
    allowed_hosts: list[str] = Field(
        default_factory=list, description="extra Host header names ('*': any); loopback, "
        "the listen host, this machine's name and IP literals are always accepted")
    tls_cert_file: Path | None = Field(None, description="serve HTTPS: PEM certificate chain")
    tls_key_file: Path | None = Field(None, description="serve HTTPS: PEM private key")
    max_body_bytes: int = Field(65_536, ge=1024, le=2**26,
                                description="larger request bodies get 413 unread")
    max_streams: int = Field(64, ge=1, le=10_000, description="live /api/events streams")
    max_streams_per_client: int = Field(4, ge=1, le=10_000,
                                        description="live /api/events streams per address")
    session_days: float = Field(30.0, gt=0, le=3650,
                                description="a signed-in device stays signed in this long")

    @model_validator(mode="after")
    def _tls_pair(self) -> APIConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("api.tls_cert_file and api.tls_key_file go together (set both "
                             "or neither)")
        return self

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def reads_open(self) -> bool:
        return self.loopback if self.read_open is None else self.read_open


def is_loopback(host: str) -> bool:
    """Only a literal loopback address or ``localhost``: any other name may resolve anywhere."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def api_problems(api: APIConfig) -> list[str]:
    """Beyond loopback, the API must know who reads (DNS rebinding, the plant network)."""
    if not api.enabled or api.loopback:
        return []
    out = []
    if api.tokens_file is None:
        out.append(f"  api.host → {api.host!r} → listens beyond loopback, so reads need a "
                   "token: set api.tokens_file (or host = \"127.0.0.1\")")
    if api.read_open:
        out.append(f"  api.read_open → True → reads without a token are allowed only on a "
                   f"loopback host, not on {api.host!r}: remove it or set it to false")
    return out


class StorageConfig(StrictMutable):
    enabled: bool = True
    retention_days: float = Field(30.0, gt=0)
    disk_budget_mb: float = Field(2048.0, gt=0)
    flush_interval_s: float = Field(1.0, gt=0)
    flush_rows: int = Field(50_000, ge=1)


class DriftConfig(StrictMutable):
    enabled: bool = True
    interval_windows: int = Field(
        360, ge=1, description="windows per drift reporting interval (non-overlapping)")


class CloudMQTTConfig(StrictMutable):
    host: str = Field(description="cloud broker host (drift reports only)")
    port: int = Field(8883, ge=1, le=65535)
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    client_id: str = Field("", description="default forewarn-egress-<site_id>")
    username: str | None = None
    password_file: Path | None = Field(None, description="file holding the cloud password")
    tls: TLSConfig | None = Field(None, description="TLS to the cloud broker (use in production)")
    topic: str = Field("forewarn/{site_id}/drift", description="{site_id} is substituted")
    keepalive_s: int = Field(60, ge=5, le=3600)
    reconnect_min_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(120.0, gt=0)
    ack_timeout_s: float = Field(30.0, gt=0, description="wait for PUBACK before reconnecting")


class EgressConfig(StrictMutable):
    enabled: bool = Field(False, description="send drift reports to the cloud broker")
    site_id: str = Field("", pattern=r"^([A-Za-z0-9_\-]{1,64})?$",
                         description="opaque id assigned by central IT, not a site name")
    k: int = Field(20, ge=2, description="minimum windows behind any reported aggregate")
    include_bins: bool = Field(False, description="opt-in per-bin counts (no edges), each >= k")
    outbox_max_rows: int = Field(10_000, ge=2, description="outbox bound; overflow merges")
    health_interval_s: float = Field(300.0, ge=0,
                                     description="signed health report period; 0 = none")
    cloud: CloudMQTTConfig | None = None

    @model_validator(mode="after")
    def _complete(self) -> EgressConfig:
        if self.enabled and (not self.site_id or self.cloud is None):
            raise ValueError("egress.enabled needs egress.site_id and [egress.cloud]")
        return self


class WebhookConfig(StrictMutable):
    url: str | None = Field(None, pattern=r"^https?://", description="POST every alert event "
                            "here as JSON (forewarn.alert-event/1), each delivery recorded "
                            "in the egress ledger; unset = off")
    token_file: Path | None = Field(None, description="bearer token for the receiver")
    timeout_s: float = Field(5.0, gt=0)
    max_rows: int = Field(10_000, ge=1, description="outbox bound (oldest dropped, counted)")


class HealthConfig(StrictMutable):
    max_silence_s: float = Field(
        300.0, ge=0, description="/healthz answers 503 once readings were seen and none "
                                 "arrived for this long (0: never); a site that sent "
                                 "nothing since the start is not flagged")


class MemoryConfig(StrictMutable):
    unmap_library_text: bool = Field(
        True, description="once the agent has started and after each model swap, unmap "
                          "the clean library pages start-up touched (imports, session "
                          "creation); what the agent runs again maps back at its next use, "
                          "and RSS counts only that")


class RetrainConfig(StrictMutable):
    """``forewarn retrain`` on this appliance (the agent itself never reads it)."""

    key: Path | None = Field(
        None, description="Ed25519 private key that signs retrained candidates; its public "
                          "half must be among bundle.trusted_keys (systemd: LoadCredential)")
    train_days: float = Field(28.0, gt=0, description="history before the gate period "
                              "that trains the candidate, in days")
    gate_hours: float = Field(24.0, gt=0, description="the most recent history, held back "
                              "from training, over which candidate and active are replayed")
    fault_margin_s: float | None = Field(
        None, ge=0, description="seconds added before and after each confirmed alert's span; "
                                "unset: 2 x (window + n x hop) sample periods of the bundle")
    unjudged: Literal["exclude", "normal"] = Field(
        "exclude", description="alert spans without a verdict (or 'could not tell'): "
                               "exclude them from the normal set, or train on them as normal")
    max_windows: int = Field(50_000, ge=100, description="training windows at most (evenly "
                             "thinned beyond it: memory)")
    drift_alarm_hours: float = Field(6.0, gt=0, description="--if-needed: retrain when the "
                                     "drift alarm has been on this long (data time)")
    precision_drop_points: float = Field(
        5.0, gt=0, le=100, description="--if-needed: retrain when live precision is more "
                                       "than this many points below the bundle's figure")
    min_verdicts: int = Field(10, ge=1, description="--if-needed: judged alerts the live "
                              "precision needs before it is compared")
    max_model_age_days: float | None = Field(
        None, gt=0, description="--if-needed: retrain when the active version was installed "
                                "longer ago than this (unset: never on age alone)")


class AgentConfig(StrictMutable):
    site: Name = "site1"
    state_dir: Path = Path("/var/lib/forewarn")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    mqtt: MQTTConfig = MQTTConfig()
    bundle: BundleConfig
    ingest: IngestConfig = IngestConfig()
    alerts: AlertRuleConfig = AlertRuleConfig()
    api: APIConfig = APIConfig()
    storage: StorageConfig = StorageConfig()
    drift: DriftConfig = DriftConfig()
    egress: EgressConfig = EgressConfig()
    webhook: WebhookConfig = WebhookConfig()
    health: HealthConfig = HealthConfig()
    memory: MemoryConfig = MemoryConfig()
    retrain: RetrainConfig = RetrainConfig()
    opcua: OpcUaConfig = Field(default_factory=OpcUaConfig,
                               description="OPC UA servers read as sources")

    @model_validator(mode="after")
    def _shared_needs_v5(self) -> AgentConfig:
        if self.ingest.processes > 1 and self.mqtt.protocol != "5":
            raise ValueError(f"ingest.processes={self.ingest.processes} needs mqtt.protocol "
                             "'5' (shared subscriptions)")
        return self


def load_config(path: Path) -> AgentConfig:
    try:
        raw = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    return parse_config(raw, source=str(path))


def parse_config(raw: dict[str, object], source: str = "<config>") -> AgentConfig:
    try:
        cfg = AgentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}:\n" + "\n".join(config_problems(exc))) from exc
    if problems := api_problems(cfg.api):
        raise ConfigError(f"{source}:\n" + "\n".join(problems))
    base = Path(source).parent if source != "<config>" else Path.cwd()
    return _resolve_paths(cfg, base)


def config_problems(exc: ValidationError) -> list[str]:
    """``key → value → problem`` lines, as printed by ``forewarn agent --check-config``."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(root)"
        value = "(missing)" if err["type"] == "missing" else repr(err.get("input"))[:80]
        lines.append(f"  {key} → {value} → {err['msg']}")
    return lines


def _resolve_paths(cfg: AgentConfig, base: Path) -> AgentConfig:
    """Relative paths in a config file are relative to that file, not to the cwd."""

    def fix(p: Path | None) -> Path | None:
        return None if p is None or p.is_absolute() else (base / p)

    def r(p: Path | None) -> Path | None:
        return fix(p) or p

    cfg.state_dir = r(cfg.state_dir) or cfg.state_dir
    cfg.bundle.path = r(cfg.bundle.path) or cfg.bundle.path
    cfg.bundle.trusted_keys = [r(p) or p for p in cfg.bundle.trusted_keys]
    cfg.bundle.site_keys = [r(p) or p for p in cfg.bundle.site_keys]
    cfg.mqtt.password_file = r(cfg.mqtt.password_file)
    if cfg.mqtt.tls:
        cfg.mqtt.tls.ca_file = r(cfg.mqtt.tls.ca_file)
        cfg.mqtt.tls.cert_file = r(cfg.mqtt.tls.cert_file)
        cfg.mqtt.tls.key_file = r(cfg.mqtt.tls.key_file)
    cfg.api.tokens_file = r(cfg.api.tokens_file)
    cfg.api.tls_cert_file = r(cfg.api.tls_cert_file)
    cfg.api.tls_key_file = r(cfg.api.tls_key_file)
    cfg.webhook.token_file = r(cfg.webhook.token_file)
    cfg.retrain.key = r(cfg.retrain.key)
    if cfg.egress.cloud:
        cfg.egress.cloud.password_file = r(cfg.egress.cloud.password_file)
        if cfg.egress.cloud.tls:
            t = cfg.egress.cloud.tls
            t.ca_file, t.cert_file, t.key_file = r(t.ca_file), r(t.cert_file), r(t.key_file)
    cfg.opcua.resolve_paths(lambda p: fix(p) or p)
    return cfg


def read_secret(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read secret ({exc.strerror})") from exc
