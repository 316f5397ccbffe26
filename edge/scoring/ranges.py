"""Readings against the manifest's two ranges: in range, outside training, impossible.

Each signal of a bundle may carry a *training range* (what the model has seen;
the limit alarm sits ``limits.margin`` of its span outside it) and a
*physical-plausibility bound* (see :class:`edge.models.bundle.SignalSpec`). A reading
gets one verdict:

* ``OK`` — inside the alarm limits (or the signal has none);
* ``LOW`` / ``HIGH`` — outside the alarm limits but physically possible: it
  still reaches the window (clipped to the limit when ``limits.clip``) and
  raises a limit alert;
* ``FAULT`` — outside the plausibility bound, or not finite: a sensor fault,
  kept out of the window.

Pure and vectorised: the pipeline calls :meth:`SignalBounds.codes` on a whole
``Series`` at once, and :func:`repair` replaces a Series' faulty samples by
NaN, which the window stage treats exactly like a reading that never came.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge.models.bundle import LimitSpec, SignalSpec

OK, LOW, HIGH, FAULT = 0, 1, 2, 3
VERDICTS = ("ok", "low", "high", "fault")


@dataclass(frozen=True, slots=True)
class SignalBounds:
    signal: str
    unit: str
    low: float  # the limit alarm's bounds (-inf / inf when the manifest has none)
    high: float
    plausible_low: float
    plausible_high: float
    clip: bool = False

    def code(self, v: float) -> int:
        if not (self.plausible_low <= v <= self.plausible_high):  # also False for NaN
            return FAULT
        if v < self.low:
            return LOW
        if v > self.high:
            return HIGH
        return OK

    def codes(self, v: np.ndarray) -> np.ndarray:
        """Verdicts of every value, int8; all zero in the common case."""
        with np.errstate(invalid="ignore"):
            out = np.where(v < self.low, LOW, OK).astype(np.int8)
            out[v > self.high] = HIGH
            out[~((v >= self.plausible_low) & (v <= self.plausible_high))] = FAULT
        return out

    def limit_of(self, verdict: int) -> tuple[str, float]:
        """Which bound a verdict broke and its value (for the alert's detail)."""
        if verdict == LOW:
            return "training_min", self.low
        if verdict == HIGH:
            return "training_max", self.high
        return "plausible", math.nan

    def for_model(self, v: np.ndarray) -> np.ndarray:
        """What the model sees of readings outside the limits: the value, or clipped."""
        return np.clip(v, self.low, self.high) if self.clip else v


def bounds_of(signals: Sequence[SignalSpec], limits: LimitSpec) -> dict[str, SignalBounds]:
    """Per signal with any bound; signals with none are absent (no check at all)."""
    out: dict[str, SignalBounds] = {}
    for s in signals:
        lo, hi = s.train_min, s.train_max
        span = (hi - lo) if lo is not None and hi is not None else 0.0
        pad = limits.margin * span
        b = SignalBounds(
            s.name, s.unit,
            -math.inf if lo is None else lo - pad, math.inf if hi is None else hi + pad,
            -math.inf if s.plausible_min is None else s.plausible_min,
            math.inf if s.plausible_max is None else s.plausible_max, limits.clip)
        if math.isfinite(b.low) or math.isfinite(b.high) or math.isfinite(
                b.plausible_low) or math.isfinite(b.plausible_high):
            out[s.name] = b
    return out


def repair(values: np.ndarray, codes: np.ndarray, b: SignalBounds) -> np.ndarray:
    """A Series' values for the window: faults as NaN (missing), the rest as the model
    should see them."""
    v = np.where(codes == FAULT, np.nan, values)
    return b.for_model(v) if b.clip else v


def apply_rows(values: np.ndarray, bounds: Sequence[SignalBounds | None]) -> np.ndarray:
    """``values[signals, t]`` as the agent's pipeline would window them (bulk replays)."""
    out = np.array(values, dtype=np.float64, copy=True)
    for i, b in enumerate(bounds):
        if b is not None:
            out[i] = repair(out[i], b.codes(out[i]), b)
    return out
