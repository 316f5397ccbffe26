"""``GET /api/commissioning``: each asset's commissioning state under a template bundle.

``template`` is null for a full bundle (every asset scores as shipped). Otherwise
each asset is ``learning`` (``progress`` = windows seen / a gap-free commissioning
period's, no model alerts yet), ``ready`` (its own parameters installed;
``verified`` false with the ``reason`` when they failed the held-back check and the
template flags rather than refuses) or ``insufficient_data`` (the learner's
``reason``). Per-asset progress is here only,
never a Prometheus label (``forewarn_commissioning_assets{state}`` counts).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from edge.api.responses import ERRORS
from edge.api.routes import Reader, _api

router = APIRouter(tags=["models"], responses=ERRORS)


@router.get("/api/commissioning")
def commissioning(request: Request, _: Reader) -> dict[str, Any]:
    """The template in use and every asset's state, progress and reason."""
    view = _api(request).deps.commissioning
    snap = view() if view is not None else None
    return snap or {"template": None, "counts": {}, "assets": []}
