"""Forewarn edge agent: ingest -> window -> infer -> alerts | store | drift -> egress."""

__version__ = "0.1.0"
