"""The agent's local HTTP API and crew page (FastAPI, served on the site network)."""

from __future__ import annotations

from edge.api.app import ApiDeps, create_app
from edge.api.auth import FailureLimiter, TokenAuth, load_tokens

__all__ = ["ApiDeps", "FailureLimiter", "TokenAuth", "create_app", "load_tokens"]
