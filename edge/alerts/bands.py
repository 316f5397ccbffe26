"""What the crew reads beside an alert: each signal's unit and normal band.

The band is the range the model was trained on. Schema 2 manifests record it
exactly (``SignalSpec.train_min``/``train_max``). Schema 1 manifests had one
``min``/``max`` pair that the trainer wrote as the training range widened by
``range_margin`` of its span on each side; when the lineage records that margin
the widening is undone (``source = "training range"``), otherwise the pair is
shown as it is (``source = "accepted range"``).

The reading shown is the signal's last value in the scored window (its newest
aligned sample), in the signal's unit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edge.models.bundle import Manifest


@dataclass(frozen=True, slots=True)
class SignalBand:
    unit: str
    low: float | None
    high: float | None
    source: str  # "training range" | "accepted range" | "none"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def range_margin(manifest: Manifest) -> float | None:
    """The trainer's ``data.range_margin`` from the lineage, if it is recorded."""
    cfg = manifest.lineage.get("config")
    data = cfg.get("data") if isinstance(cfg, dict) else None
    m = data.get("range_margin") if isinstance(data, dict) else None
    if isinstance(m, int | float) and not isinstance(m, bool) and math.isfinite(m) and m >= 0:
        return float(m)
    return None


def signal_bands(manifest: Manifest) -> dict[str, SignalBand]:
    """Per signal name: unit and normal band (see the module's docstring)."""
    margin = range_margin(manifest) if manifest.schema_version == 1 else 0.0
    out: dict[str, SignalBand] = {}
    for s in manifest.signals:
        lo, hi = s.train_min, s.train_max
        if lo is None or hi is None:
            out[s.name] = SignalBand(s.unit, lo, hi, "accepted range" if lo is not None
                                     or hi is not None else "none")
            continue
        if margin is None:
            out[s.name] = SignalBand(s.unit, lo, hi, "accepted range")
            continue
        if margin and hi > lo:
            # min = a - m(b-a), max = b + m(b-a)  =>  b-a = (max-min)/(1+2m)
            span = (hi - lo) / (1 + 2 * margin)
            lo, hi = lo + margin * span, hi - margin * span
        out[s.name] = SignalBand(s.unit, _round(lo), _round(hi), "training range")
    return out


def _round(x: float) -> float:
    # The trainer rounded min/max outwards to 4 decimals; more digits here are noise.
    return float(f"{x:.6g}")


def add_readings(top: list[dict[str, Any]], window: np.ndarray | None,
                 signals: list[str], bands: Mapping[str, SignalBand]) -> list[dict[str, Any]]:
    """Give each explained feature its signal's reading, unit and normal band.

    ``window`` is the scored window ``[signals, samples]`` (None: no reading).
    Keys added (payload schema, :mod:`edge.alerts.payload`): ``reading``,
    ``unit``, ``normal_low``, ``normal_high``, ``band``.
    """
    index = {s: i for i, s in enumerate(signals)}
    for f in top:
        sig = f.get("signal")
        if sig is None:
            continue
        reading = None
        i = index.get(sig)
        if window is not None and i is not None and i < window.shape[0] and window.shape[1]:
            v = float(window[i, -1])
            reading = round(v, 6) if math.isfinite(v) else None
        band = bands.get(sig)
        f["reading"] = reading
        f["unit"] = band.unit if band else ""
        f["normal_low"] = band.low if band else None
        f["normal_high"] = band.high if band else None
        f["band"] = band.source if band else "none"
    return top
