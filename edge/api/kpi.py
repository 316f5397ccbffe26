"""``/api/alarm-kpis``: the alarm-system figures (EEMUA 191 / ISA-18.2) as JSON.

Computed on request from the alert store's event history through a read-only
connection (:mod:`edge.alerts.kpi`); the number of operators comes from
``alerts.operators`` (``app.state.alarm_operators``, 1 when unset).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from edge.alerts.kpi import DAY_S, alarm_kpis
from edge.api.responses import ERRORS
from edge.api.routes import Reader

router = APIRouter(tags=["alerts"], responses=ERRORS)


@router.get("/api/alarm-kpis", tags=["alerts"])
def alarm_kpis_route(request: Request, _: Reader,
                     window_h: Annotated[float, Query(gt=0, le=24 * 31)] = 24.0
                     ) -> dict[str, Any]:
    """Alarms per operator per 10 min and per day, floods, chattering and stale alarms."""
    store = request.app.state.api.deps.manager.store
    operators = int(getattr(request.app.state, "alarm_operators", 1))
    k = alarm_kpis(store.path, time.time(), operators, window_h * 3600.0)
    out = k.to_dict()
    out["window_h"] = window_h
    out["day_s"] = DAY_S
    return out
