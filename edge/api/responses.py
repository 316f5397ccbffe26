"""The API's error body and the error responses documented on every route.

Every handled refusal answers ``{"detail": "<what and why>"}``; the limits in
``edge.api.limits`` apply to any route before it runs, so their codes are
documented on all of them (422 is FastAPI's own, on routes with parameters).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    detail: str = Field(description="what was refused and why, in words")


def _doc(description: str, retry_after: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"model": ErrorBody, "description": description}
    if retry_after:
        out["headers"] = {"Retry-After": {"description": "seconds to wait before retrying",
                                          "schema": {"type": "integer"}}}
    return out


ERRORS: dict[int | str, dict[str, Any]] = {
    400: _doc("Host header not allowed (DNS rebinding guard), or a request the agent "
              "cannot act on"),
    401: _doc("missing or unknown token (reads need one unless the API is open on loopback)"),
    404: _doc("no such alert, model or feature on this agent"),
    409: _doc("the alert or model is not in a state that allows this"),
    413: _doc("request body over api.max_body_bytes"),
    429: _doc("too many wrong tokens from this address, or too many live streams from it",
              retry_after=True),
    503: _doc("a store is unavailable, the agent is unhealthy, or the stream cap is reached",
              retry_after=True),
}
