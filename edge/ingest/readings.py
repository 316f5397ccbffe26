"""What decoders produce and the window stage consumes.

Point readings are plain named tuples (cheap to build at 50k+ messages/s);
high-rate batches stay numpy arrays end to end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


class Reading(NamedTuple):
    asset: str
    signal: str
    ts: float  # epoch seconds
    value: float


@dataclass(frozen=True, slots=True)
class Series:
    """Evenly spaced samples of one signal: ``ts[i] = t0 + i * dt``."""

    asset: str
    signal: str
    t0: float
    dt: float
    values: np.ndarray  # float64, 1-D


Decoded = list[Reading | Series]
