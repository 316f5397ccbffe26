"""Shadow comparison: how a candidate model would have done on the active one's windows.

Pure, streaming objects with ``update()`` and a read-only ``snapshot()``, so the
agent feeds them live and tests feed them by hand. Memory is bounded: score
correlation uses running co-moments (Welford), latency quantiles a fixed
log-spaced histogram.

>>> s = ShadowComparator()
>>> for i in range(10):
...     s.update("m1", float(i), float(i), 2.0 * i + 1, 0.001, 0.002, i > 6, i > 5)
>>> snap = s.snapshot()
>>> round(snap["correlation"], 6), snap["alerts"]["opened"], snap["alerts"]["would_have_opened"]
(1.0, 3, 4)
"""

from __future__ import annotations

import math
from typing import Any


class LatencyHistogram:
    """Fixed log-spaced buckets from ``lo_s`` to ``hi_s``: quantiles within ~2.3 %.

    >>> h = LatencyHistogram()
    >>> for ms in range(1, 101):
    ...     h.update(ms / 1000)
    >>> 0.047 < h.quantile(0.5) < 0.053, 0.095 < h.quantile(0.99) < 0.105
    (True, True)
    """

    def __init__(self, lo_s: float = 1e-6, hi_s: float = 100.0, per_decade: int = 50) -> None:
        self.lo, self.hi = lo_s, hi_s
        self.per_decade = per_decade
        self.n_buckets = math.ceil(math.log10(hi_s / lo_s) * per_decade)
        # bucket 0 holds <= lo, the last one >= hi: nothing is ever dropped
        self.counts = [0] * (self.n_buckets + 2)
        self.count = 0
        self.max = 0.0

    def update(self, seconds: float) -> None:
        if not math.isfinite(seconds) or seconds < 0:
            return
        if seconds <= self.lo:
            i = 0
        elif seconds >= self.hi:
            i = self.n_buckets + 1
        else:
            i = 1 + min(self.n_buckets - 1,
                        int(math.log10(seconds / self.lo) * self.per_decade))
        self.counts[i] += 1
        self.count += 1
        self.max = max(self.max, seconds)

    def quantile(self, q: float) -> float | None:
        """Geometric middle of the bucket holding the q-quantile; None when empty."""
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                if i == 0:
                    return self.lo
                if i == self.n_buckets + 1:
                    return self.max
                mid = self.lo * 10 ** ((i - 0.5) / self.per_decade)
                return min(mid, self.max)
        return self.max  # pragma: no cover - rank <= count always stops the loop

    def summary(self) -> dict[str, float | int | None]:
        return {"count": self.count, "p50": self.quantile(0.5), "p99": self.quantile(0.99),
                "max": self.max if self.count else None}


class ShadowComparator:
    """Active vs candidate on the same windows: score correlation, alert agreement, latency.

    ``active_breached``/``candidate_breached`` say whether each model's alert
    condition held (or an alert opened: the caller decides, consistently) for
    the window. Windows where either score is not finite are counted as errors
    of that model and left out of the correlation.
    """

    def __init__(self) -> None:
        self.n = 0  # windows with both scores finite
        self._mean_a = self._mean_c = 0.0
        self._m2_a = self._m2_c = self._co = 0.0
        self._abs_diff = 0.0
        self.errors = {"active": 0, "candidate": 0}
        # confusion matrix over windows: (active, candidate) alert condition
        self.both = self.active_only = self.candidate_only = self.neither = 0
        self.latency = {"active": LatencyHistogram(), "candidate": LatencyHistogram()}
        self.last_ts: float | None = None

    def update(self, asset: str, ts: float, active_score: float, candidate_score: float,
               active_latency_s: float, candidate_latency_s: float,
               active_breached: bool, candidate_breached: bool) -> None:
        del asset  # per-asset state would grow with the fleet; the totals are what we report
        self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)
        self.latency["active"].update(active_latency_s)
        self.latency["candidate"].update(candidate_latency_s)
        if active_breached and candidate_breached:
            self.both += 1
        elif active_breached:
            self.active_only += 1
        elif candidate_breached:
            self.candidate_only += 1
        else:
            self.neither += 1
        a_ok, c_ok = math.isfinite(active_score), math.isfinite(candidate_score)
        self.errors["active"] += not a_ok
        self.errors["candidate"] += not c_ok
        if not (a_ok and c_ok):
            return
        self.n += 1
        da = active_score - self._mean_a
        dc = candidate_score - self._mean_c
        self._mean_a += da / self.n
        self._mean_c += dc / self.n
        # Welford co-moment: uses the old delta of one and the new delta of the other
        self._m2_a += da * (active_score - self._mean_a)
        self._m2_c += dc * (candidate_score - self._mean_c)
        self._co += da * (candidate_score - self._mean_c)
        self._abs_diff += abs(candidate_score - active_score)

    @property
    def windows(self) -> int:
        return self.both + self.active_only + self.candidate_only + self.neither

    @property
    def correlation(self) -> float | None:
        """Pearson r of the two scores; None until two windows with some variance."""
        if self.n < 2 or self._m2_a <= 0 or self._m2_c <= 0:
            return None
        return max(-1.0, min(1.0, self._co / math.sqrt(self._m2_a * self._m2_c)))

    @property
    def agreement(self) -> float | None:
        return (self.both + self.neither) / self.windows if self.windows else None

    @property
    def kappa(self) -> float | None:
        """Cohen's kappa: agreement beyond what the two alert rates give by chance."""
        n = self.windows
        if n == 0:
            return None
        p_a = (self.both + self.active_only) / n
        p_c = (self.both + self.candidate_only) / n
        chance = p_a * p_c + (1 - p_a) * (1 - p_c)
        observed = (self.both + self.neither) / n
        return None if chance >= 1.0 else (observed - chance) / (1 - chance)

    def snapshot(self) -> dict[str, Any]:
        return {
            "windows": self.windows,
            "compared": self.n,
            "correlation": self.correlation,
            "mean_abs_diff": self._abs_diff / self.n if self.n else None,
            "errors": dict(self.errors),
            "alerts": {
                "opened": self.both + self.active_only,  # by the active model
                "would_have_opened": self.both + self.candidate_only,  # by the candidate
                "both": self.both, "active_only": self.active_only,
                "candidate_only": self.candidate_only, "neither": self.neither,
                "agreement": self.agreement, "kappa": self.kappa,
            },
            "latency_s": {k: h.summary() for k, h in self.latency.items()},
            "last_ts": self.last_ts,
        }
