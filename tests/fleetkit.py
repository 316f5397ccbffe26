"""Helpers for fleet tests: an appliance's egress path and a fleet service on a real broker."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.core.config import CloudMQTTConfig
from edge.egress.envelope import PUB_FILE, SEQ_FILE, Sealer, SequenceFile, load_or_create_key
from edge.egress.ledger import Ledger
from edge.egress.outbox import Outbox
from edge.egress.sealed import SealedOutbox, merge_sealed
from edge.egress.uplink import Uplink
from fleet.config import FleetConfig, parse_config
from tests.conftest import free_port

TOKEN = "fleet-test-token-" + secrets.token_hex(8)


def drift_body(site: str, i: int, alarm: bool = False, model: str = "ab" * 32,
               alert_rate: float = 0.01) -> bytes:
    doc = {"schema_version": 1, "site_id": site, "model": model, "group": 0,
           "interval_first": i, "interval_last": i, "intervals": 1, "hour": 480_000 + i,
           "windows": 40, "missing_rate": 0.0, "alert_rate": alert_rate, "alarm": alarm,
           "features": [{"i": 0, "psi": 0.3 if alarm else 0.01, "ks": 0.05, "ms": 0.1,
                         "th": 0.25, "alarm": alarm}]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def health_body(site: str, version: str = "3", model: str = "ab" * 32,
                p99_ms: float = 2.0, name: str = "cmapss") -> bytes:
    doc: dict[str, Any] = {
        "schema_version": 1, "site_id": site, "hour": 480_000, "agent_version": "0.1.0",
        "uptime_s": 600, "models": [{"group": 0, "name": name, "version": version,
                                     "model": model}],
        "windows_scored": 500, "alerts": {"warning": 1}, "verdicts": {},
        "precision": None, "inference_p50_ms": 1.0, "inference_p99_ms": p99_ms,
        "errors": {}, "canary": {}, "disk_free_ratio": 0.5,
        "alarm": {"operators": 1, "per_10min_avg": 0.4, "per_10min_peak": 2.0,
                  "per_day": 60.0, "floods": 0, "flood_s": 0.0, "chattering": 0,
                  "stale": 0}}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class Appliance:
    """One site's egress path as the agent builds it: sealer -> outbox -> uplink."""

    site: str
    state: Path
    sealer: Sealer
    outbox: Outbox
    uplink: Uplink

    def drift(self) -> SealedOutbox:
        return SealedOutbox(self.outbox, self.sealer, "drift")

    def health(self) -> SealedOutbox:
        return SealedOutbox(self.outbox, self.sealer, "health")

    def enrol(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{self.site}.pub").write_bytes((self.state / PUB_FILE).read_bytes())


def appliance(state: Path, site: str, cloud_port: int, **cloud: Any) -> Appliance:
    """``cloud``: more [egress.cloud] keys (username, password_file, protocol...)."""
    sealer = Sealer(site, load_or_create_key(state), SequenceFile(state / SEQ_FILE))
    ob = Outbox(state / "egress" / "outbox.sqlite",
                merge=lambda a, b: merge_sealed(sealer, a, b, 20))
    up = Uplink(ob, Ledger(state / "egress" / "ledger.sqlite"),
                CloudMQTTConfig(host="127.0.0.1", port=cloud_port, reconnect_min_s=1,
                                reconnect_max_s=1, ack_timeout_s=2, **cloud), site)
    return Appliance(site, state, sealer, ob, up)


def fleet_config(tmp: Path, cloud_port: int, *, enrol: Path, client_id: str = "fleet-1",
                 dsn: str | None = None, sqlite: Path | None = None,
                 api_port: int | None = None, **over: Any) -> FleetConfig:
    tmp.mkdir(parents=True, exist_ok=True)
    tokens = tmp / "fleet-tokens"
    tokens.write_text(f"it-ops:{TOKEN}\n")
    raw: dict[str, Any] = {
        "enrolment": str(enrol),
        "broker": {"host": "127.0.0.1", "port": cloud_port, "client_id": client_id},
        "store": {"sqlite_path": str(sqlite or tmp / "fleet.sqlite"), "postgres_dsn": dsn},
        "api": {"host": "127.0.0.1", "port": api_port or free_port(),
                "tokens_file": str(tokens)},
        **over,
    }
    return parse_config(raw)


def toml_of(cfg: FleetConfig) -> str:
    """The config as TOML text (for a service run as a child process)."""
    lines: list[str] = []
    top = cfg.model_dump(mode="json", exclude_none=True)
    for k, v in top.items():
        if not isinstance(v, dict):
            lines.append(f"{k} = {json.dumps(v)}")
    for k, v in top.items():
        if isinstance(v, dict):
            lines.append(f"[{k}]")
            lines += [f"{a} = {json.dumps(b)}" for a, b in v.items()]
    return "\n".join(lines) + "\n"
