"""One exception tree for the agent.

    ForewarnError
    ├── ConfigError          a config file or value is wrong (names key and value)
    ├── BundleError          a model bundle is refused
    │   └── SignatureError   unsigned, tampered, or signed by an untrusted key
    ├── DecodeError          a payload cannot be turned into readings (carries a reason)
    ├── StorageError         local persistence failed (disk full, corrupt file)
    ├── EgressError          a payload was refused by the egress allow-list
    ├── SourceError          an input source cannot connect or subscribe (carries a reason)
    └── ReportRefused        the fleet service refused a report (carries a bounded reason)

Third-party errors are translated at the adapter boundary with ``raise ... from exc``.
"""

from __future__ import annotations


class ForewarnError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(ForewarnError):
    pass


class BundleError(ForewarnError):
    pass


class SignatureError(BundleError):
    pass


class DecodeError(ForewarnError):
    """A payload that cannot be decoded; ``reason`` is a short, bounded label for metrics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class StorageError(ForewarnError):
    pass


class CompactionAbandoned(Exception):
    """The store is closing: a compaction rolls back instead of finishing (not an error)."""


class EgressError(ForewarnError):
    pass


class SourceError(ForewarnError):
    """An input source (an OPC UA server, …) refused or failed; ``reason`` is a bounded label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ReportRefused(ForewarnError):
    """A report the fleet service will not store; ``reason`` is a short label for metrics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
