"""The agent's local HTTP API and crew page (FastAPI, served on the site network).

The exports load on first use (PEP 562): FastAPI, Starlette and uvicorn are ~17 MB
of the agent's RSS, and an agent with ``api.enabled = false`` (or a CLI that only
needs ``edge.api.serve.check_tls``) should not pay for them by importing this package.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge.api.app import ApiDeps, create_app
    from edge.api.auth import FailureLimiter, TokenAuth, load_tokens

__all__ = ["ApiDeps", "FailureLimiter", "TokenAuth", "create_app", "load_tokens"]

_WHERE = {"ApiDeps": "edge.api.app", "create_app": "edge.api.app",
          "FailureLimiter": "edge.api.auth", "TokenAuth": "edge.api.auth",
          "load_tokens": "edge.api.auth"}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'edge.api' has no attribute {name!r}")
    return getattr(import_module(where), name)
