"""The ``[opcua]`` part of the agent config: servers, their security and the nodes read.

Checked without importing asyncua (the config is read on every start; the OPC UA
library is loaded only when a server is configured). A node is named by its NodeId
in the OPC UA text form or by a browse path below the Objects folder, and mapped to
one (asset, signal) that follows the one name rule (edge/core/names.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from edge.core.names import SafeName
from edge.core.strict import StrictMutable

# ns=<index>; or nsu=<namespace uri>; then i=<number> | s=<string> | g=<guid> | b=<base64>
_NODE_ID = re.compile(
    r"(?:ns=\d{1,5};|nsu=[^;]+;)?"
    r"(?:i=\d{1,10}|s=.+|g=[0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}"
    r"|b=[A-Za-z0-9+/]+={0,2})", re.DOTALL)
_BROWSE_NAME = re.compile(r"\d{1,5}:[^/]+")


def node_id_problem(text: str) -> str | None:
    """Why ``text`` is not a NodeId in the OPC UA text form, or None.

    >>> node_id_problem("ns=2;s=Pump1.Temperature") is None
    True
    >>> node_id_problem("ns=2;i=5") is None
    True
    >>> node_id_problem("Pump1.Temperature")
    'is not a NodeId: expected "ns=<index>;i=<number>" or "ns=<index>;s=<name>" (also g=, b=, nsu=)'
    """
    if _NODE_ID.fullmatch(text):
        return None
    return ('is not a NodeId: expected "ns=<index>;i=<number>" or "ns=<index>;s=<name>" '
            "(also g=, b=, nsu=)")


def browse_path_elements(text: str) -> list[str]:
    """The browse names of a path, each ``<namespace index>:<name>``; ValueError if not.

    >>> browse_path_elements("2:Pump1/2:Temperature")
    ['2:Pump1', '2:Temperature']
    >>> browse_path_elements("Pump1/Temperature")
    Traceback (most recent call last):
    ...
    ValueError: element 'Pump1' is not '<namespace index>:<browse name>' (e.g. '2:Pump1')
    """
    parts = text.split("/")
    for p in parts:
        if not _BROWSE_NAME.fullmatch(p):
            raise ValueError(f"element {p!r} is not '<namespace index>:<browse name>' "
                             "(e.g. '2:Pump1')")
    return parts


class OpcUaNodeConfig(StrictMutable):
    """One variable on the server, read as one signal of one asset."""

    node_id: str | None = Field(None, description='NodeId in the OPC UA text form, e.g. '
                                '"ns=2;s=Pump1.Temperature" or "ns=2;i=5" (or browse_path)')
    browse_path: str | None = Field(None, description='browse names below the Objects '
                                    'folder, "<ns>:<name>" per level, e.g. '
                                    '"2:Pump1/2:Temperature" (or node_id)')
    asset: SafeName = Field(description="asset the readings belong to")
    signal: SafeName = Field(description="signal name in the model bundle")

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, v: str | None) -> str | None:
        if v is not None and (problem := node_id_problem(v)):
            raise ValueError(problem)
        return v

    @field_validator("browse_path")
    @classmethod
    def _browse_path(cls, v: str | None) -> str | None:
        if v is not None:
            browse_path_elements(v)
        return v

    @model_validator(mode="after")
    def _one_name(self) -> OpcUaNodeConfig:
        if (self.node_id is None) == (self.browse_path is None):
            raise ValueError("give exactly one of node_id and browse_path")
        return self

    @property
    def label(self) -> str:
        return self.node_id or self.browse_path or ""


class OpcUaServerConfig(StrictMutable):
    """One OPC UA server (a PLC, a SCADA gateway) and the nodes subscribed on it."""

    name: SafeName = Field(description="short name of the server: metric label, health, logs")
    endpoint: str = Field(pattern=r"^opc\.tcp://[^/\s]+", description="server endpoint URL, "
                          "e.g. opc.tcp://plc-7.plant:4840")
    security_policy: Literal["None", "Basic256Sha256"] = Field(
        "None", description="None (plain, isolated networks only) or Basic256Sha256")
    security_mode: Literal["Sign", "SignAndEncrypt"] = Field(
        "SignAndEncrypt", description="with Basic256Sha256: sign only, or sign and encrypt")
    certificate_file: Path | None = Field(
        None, description="this agent's application instance certificate (DER or PEM); its "
                          "URI subject alternative name must be application_uri")
    private_key_file: Path | None = Field(None, description="its private key (PEM, unencrypted)")
    trusted_server_certificates: list[Path] = Field(
        default_factory=list, description="server certificates or issuing CA certificates "
        "(files or directories of .der/.pem/.crt); any other server certificate is refused")
    application_uri: str = Field("urn:forewarn:agent", min_length=1,
                                 description="this client's ApplicationUri")
    auth: Literal["anonymous", "username", "certificate"] = Field(
        "anonymous", description="user identity: anonymous, username + password_file, or "
                                 "an X.509 user certificate")
    username: str | None = Field(None, min_length=1, description="with auth = username")
    password_file: Path | None = Field(None, description="file holding the password")
    user_certificate_file: Path | None = Field(
        None, description="with auth = certificate: the user certificate (default: "
                          "certificate_file)")
    user_private_key_file: Path | None = Field(
        None, description="its private key (default: private_key_file)")
    publishing_interval_ms: float = Field(1000.0, ge=10, le=3_600_000,
                                          description="how often the server sends what changed")
    sampling_interval_ms: float = Field(
        100.0, ge=0, le=3_600_000, description="how often the server samples each node "
        "(0: as fast as it can; match the model's sample period)")
    queue_size: int = Field(
        600, ge=1, le=65_535, description="samples the server keeps per node between two "
        "publishes; with sampling_interval_ms it bounds the outage bridged without loss")
    subscription_lifetime_s: float = Field(
        600.0, ge=10, le=86_400, description="how long the server keeps the subscription "
        "(and its queues) while the agent is unreachable, for transfer on reconnect")
    request_timeout_s: float = Field(10.0, gt=0, le=600, description="per request")
    reconnect_min_s: float = Field(1.0, gt=0, description="first reconnect delay (doubles)")
    reconnect_max_s: float = Field(30.0, gt=0, description="longest reconnect delay")
    nodes: list[OpcUaNodeConfig] = Field(min_length=1, description="the variables read")

    @model_validator(mode="after")
    def _security(self) -> OpcUaServerConfig:
        secure = self.security_policy != "None"
        if secure and (self.certificate_file is None or self.private_key_file is None):
            raise ValueError(f"security_policy = {self.security_policy!r} needs "
                             "certificate_file and private_key_file (this agent's identity)")
        if secure and not self.trusted_server_certificates:
            raise ValueError(f"security_policy = {self.security_policy!r} needs "
                             "trusted_server_certificates: an unknown server certificate is "
                             "refused, so at least one must be trusted")
        if self.auth != "anonymous" and not secure:
            raise ValueError(f"auth = {self.auth!r} needs security_policy = "
                             "'Basic256Sha256' (credentials would cross the network "
                             "unprotected)")
        if self.auth == "username" and (self.username is None or self.password_file is None):
            raise ValueError("auth = 'username' needs username and password_file")
        if self.auth != "username" and (self.username or self.password_file):
            raise ValueError(f"username and password_file are used only with auth = "
                             f"'username' (auth is {self.auth!r})")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(f"reconnect_min_s = {self.reconnect_min_s:g} exceeds "
                             f"reconnect_max_s = {self.reconnect_max_s:g}")
        if self.subscription_lifetime_s * 1000 < 3 * self.publishing_interval_ms:
            raise ValueError("subscription_lifetime_s must be at least three publishing "
                             "intervals")
        return self

    @model_validator(mode="after")
    def _unique_nodes(self) -> OpcUaServerConfig:
        seen_nodes: set[str] = set()
        seen_keys: set[tuple[str, str]] = set()
        for i, n in enumerate(self.nodes):
            if n.label in seen_nodes:
                raise ValueError(f"nodes.{i}: {n.label!r} is listed twice")
            if (n.asset, n.signal) in seen_keys:
                raise ValueError(f"nodes.{i}: asset {n.asset!r} signal {n.signal!r} is "
                                 "already read from another node")
            seen_nodes.add(n.label)
            seen_keys.add((n.asset, n.signal))
        return self


class OpcUaConfig(StrictMutable):
    """OPC UA servers read besides (or instead of) the site broker; none by default."""

    servers: list[OpcUaServerConfig] = Field(
        default_factory=list, description="one [[opcua.servers]] table per server")

    @model_validator(mode="after")
    def _unique(self) -> OpcUaConfig:
        names: set[str] = set()
        keys: dict[tuple[str, str], str] = {}
        for i, s in enumerate(self.servers):
            if s.name in names:
                raise ValueError(f"servers.{i}: name {s.name!r} is used twice")
            names.add(s.name)
            for n in s.nodes:
                other = keys.setdefault((n.asset, n.signal), s.name)
                if other != s.name:
                    raise ValueError(f"servers.{i}: asset {n.asset!r} signal {n.signal!r} "
                                     f"is also read from server {other!r}")
        return self

    def resolve_paths(self, fix: Callable[[Path], Path]) -> None:
        """Relative paths are relative to the config file (``fix`` makes them so)."""
        for s in self.servers:
            for attr in ("certificate_file", "private_key_file", "password_file",
                         "user_certificate_file", "user_private_key_file"):
                p = getattr(s, attr)
                if p is not None:
                    setattr(s, attr, fix(p))
            s.trusted_server_certificates = [fix(p) for p in s.trusted_server_certificates]
