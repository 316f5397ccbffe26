"""The fleet service's strict config tree (unknown keys rejected), from one TOML file."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from edge.core.errors import ConfigError
from edge.core.strict import Strict


class BrokerConfig(Strict):
    host: str = Field(description="the cloud broker the appliances publish to")
    port: int = Field(8883, ge=1, le=65535)
    client_id: str = Field("forewarn-fleet-1", description="unique per collector process; "
                           "its persistent session holds its share while it is down")
    share_group: str = Field("fleet", pattern=r"^[A-Za-z0-9_\-]{1,64}$",
                             description="MQTT 5 shared subscription group of the collectors")
    topic: str = Field("forewarn/+/drift", description="topic filter of the reports")
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = Field(None, description="TLS: CA of the broker (TLS on when set)")
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = Field(60, ge=5, le=3600)
    session_expiry_s: int = Field(7 * 86_400, ge=0,
                                  description="how long the broker keeps our session offline")
    receive_maximum: int = Field(100, ge=1, le=65535, description="QoS 1 in flight to us")


class StoreConfig(Strict):
    sqlite_path: Path = Path("/var/lib/forewarn-fleet/reports.sqlite")
    postgres_dsn: str | None = Field(None, description="use PostgreSQL instead of SQLite "
                                     "(libpq DSN; prefer a password file over a password)")


class ApiConfig(Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8090, ge=0, le=65535)
    tokens_file: Path | None = Field(None, description="'person:token' lines; required "
                                     "unless read_open")
    read_open: bool = Field(False, description="allow reads without a token (off by default)")
    metrics_open: bool = Field(False, description="allow /metrics without a token")


class FleetConfig(Strict):
    enrolment: Path = Field(description="directory of <site_id>.pub appliance keys")
    broker: BrokerConfig
    store: StoreConfig = StoreConfig()
    api: ApiConfig = ApiConfig()
    k: int = Field(20, ge=2, description="lowest k the appliances use (schema check)")
    max_report_bytes: int = Field(256 * 1024, ge=1024)
    stale_after_s: float = Field(3600.0, gt=0,
                                 description="a site with no report for this long is stale")
    max_sites_in_metrics: int = Field(
        2000, ge=1, description="per-site series beyond this are left out (counted)")

    @model_validator(mode="after")
    def _auth(self) -> FleetConfig:
        if self.api.enabled and not self.api.read_open and self.api.tokens_file is None:
            raise ValueError("api.tokens_file is required (auth is on by default); "
                             "set api.read_open = true only on a trusted network")
        return self


def parse_config(raw: dict[str, Any], source: str = "config") -> FleetConfig:
    try:
        return FleetConfig.model_validate(raw)
    except ValidationError as exc:
        errs = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or '(root)'} = "
                         f"{e.get('input')!r}: {e['msg']}" for e in exc.errors()[:5])
        raise ConfigError(f"{source}: {errs}") from exc


def load_config(path: Path) -> FleetConfig:
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read fleet config ({exc})") from exc
    return parse_config(raw, str(path))
