"""Drift of features and score against the manifest's reference bins, in bounded memory.

Streaming objects in the river style: ``update(values)`` then read ``psi()``,
``ks()``, ``mean_shift()``. Memory is one integer count per reference bin plus a
running sum per feature, never samples, so the same objects run live on the edge
and in replay.

Binning: the reference stores the *inner* quantile edges ``e_1 <= ... <= e_{B-1}``;
bin ``i`` holds ``e_i <= x < e_{i+1}`` with open outer bins ``(-inf, e_1)`` and
``[e_{B-1}, +inf)`` (``np.searchsorted(edges, x, side="right")``). The trainer must
compute the reference proportions with the same rule (:func:`reference_histogram`).

Empty bins (PSI smoothing): PSI has ``ln(p/q)`` terms that are infinite when a bin
is empty. Rather than dropping those terms (which hides exactly the bins a shift
empties or fills), both distributions get an additive pseudo-count of 0.5 per bin
(Jeffreys prior) at the interval's sample size ``n``::

    p_i = (c_i + 0.5) / (n + 0.5 B)        q_i = (r_i n + 0.5) / (n + 0.5 B)

so an interval that matches the reference exactly scores 0, and an empty bin
contributes a large but finite term.

Autocorrelation: sensor data is not i.i.d., so PSI rules of thumb (0.1/0.2) and
test p-values raise false alarms. :func:`calibrate_thresholds` sets each PSI
threshold from contiguous chunks of the reference data of the reporting
interval's size (mean + 3 sigma of the chunk PSIs); the trainer stores the result
in ``manifest.drift_thresholds``. Only PSI raises the alarm; KS and mean shift are
reported alongside for diagnosis.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edge.bundle import Histogram, Manifest

SMOOTHING = 0.5  # pseudo-count per bin, see module docstring
SCORE_KEY = "score"  # key of the score's threshold in manifest.drift_thresholds
DEFAULT_PSI_THRESHOLD = 0.25  # only for features the trainer did not calibrate
SIGMAS = 3.0


class BinnedDrift:
    """Counts of one feature's values in the reference bins.

    >>> ref = Histogram(edges=[0.0, 1.0], proportions=[0.25, 0.5, 0.25], mean=0.5, std=1.0)
    >>> d = BinnedDrift(ref)
    >>> d.update(np.array([-1.0, 0.5, 0.5, 2.0]))
    >>> d.count, d.counts.tolist()
    (4, [1, 2, 1])
    >>> round(d.psi(), 12), round(d.ks(), 12), d.mean_shift()
    (0.0, 0.0, 0.0)
    >>> d.update(np.array([5.0, 5.0, 5.0, 5.0]))  # all new mass in the top bin
    >>> round(d.ks(), 3), round(d.mean_shift(), 3)
    (0.375, 2.25)
    >>> # counts [1, 2, 5], n=8: p=[1.5, 2.5, 5.5]/9.5, q=[2.5, 4.5, 2.5]/9.5
    >>> round(d.psi(), 4)
    0.4265
    """

    __slots__ = ("counts", "edges", "nonfinite", "ref", "ref_props", "total")

    def __init__(self, reference: Histogram) -> None:
        self.ref = reference
        self.edges = np.asarray(reference.edges, dtype=np.float64)
        props = np.asarray(reference.proportions, dtype=np.float64)
        s = props.sum()
        self.ref_props = props / s if s > 0 else np.full(props.size, 1.0 / props.size)
        self.counts = np.zeros(self.edges.size + 1, dtype=np.int64)
        self.total = 0.0
        self.nonfinite = 0

    def update(self, values: np.ndarray) -> None:
        """Add a batch of values; NaN/inf are counted in ``nonfinite``, not binned."""
        v = np.asarray(values, dtype=np.float64).ravel()
        ok = np.isfinite(v)
        if not ok.all():
            self.nonfinite += int(v.size - ok.sum())
            v = v[ok]
        if v.size == 0:
            return
        idx = np.searchsorted(self.edges, v, side="right")
        self.counts += np.bincount(idx, minlength=self.counts.size)
        self.total += float(v.sum())

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def psi(self) -> float:
        """Population stability index with Jeffreys smoothing; NaN when empty."""
        n = self.count
        if n == 0:
            return math.nan
        return _psi(self.counts, self.ref_props)

    def ks(self) -> float:
        """Largest distance between the binned CDFs (interval vs reference); NaN when empty."""
        n = self.count
        if n == 0:
            return math.nan
        cdf = np.cumsum(self.counts[:-1]) / n
        ref_cdf = np.cumsum(self.ref_props[:-1])
        return float(np.max(np.abs(cdf - ref_cdf), initial=0.0))

    def mean_shift(self) -> float:
        """(interval mean - reference mean) / reference std; a zero std counts as 1."""
        n = self.count
        if n == 0:
            return math.nan
        std = self.ref.std if self.ref.std > 0 else 1.0
        return (self.total / n - self.ref.mean) / std

    def reset(self) -> None:
        self.counts[:] = 0
        self.total = 0.0
        self.nonfinite = 0


def _psi(counts: np.ndarray, ref_props: np.ndarray) -> float:
    n = float(counts.sum())
    denom = n + SMOOTHING * counts.size
    p = (counts + SMOOTHING) / denom
    q = (ref_props * n + SMOOTHING) / denom
    return float(np.sum((p - q) * np.log(p / q)))


def reference_histogram(values: np.ndarray, n_bins: int = 10) -> Histogram:
    """Quantile-binned reference of a sample, binned by the same rule as :class:`BinnedDrift`.

    >>> h = reference_histogram(np.arange(100.0), n_bins=4)
    >>> h.edges, h.proportions
    ([24.75, 49.5, 74.25], [0.25, 0.25, 0.25, 0.25])
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("reference_histogram: no finite values")
    edges = np.quantile(v, np.linspace(0, 1, n_bins + 1)[1:-1])
    counts = np.bincount(np.searchsorted(edges, v, side="right"), minlength=n_bins)
    return Histogram(edges=[float(e) for e in edges],
                     proportions=[float(c) for c in counts / v.size],
                     mean=float(v.mean()), std=float(v.std()))


def calibrate_thresholds(
    reference_features: np.ndarray,
    names: Sequence[str],
    hist: Mapping[str, Histogram],
    interval: int,
    sigmas: float = SIGMAS,
) -> dict[str, float]:
    """PSI alarm thresholds: mean + ``sigmas`` x std of the PSIs of contiguous chunks.

    ``reference_features`` is ``[rows, len(names)]`` in time order (rows = windows);
    each chunk is ``interval`` consecutive rows, the size of one reporting interval,
    so the threshold includes the autocorrelation the live intervals will have.
    Names without a histogram are skipped. Pass the score as a column named
    :data:`SCORE_KEY` to calibrate its threshold too.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(2000, 1))
    >>> th = calibrate_thresholds(x, ["a"], {"a": reference_histogram(x[:, 0])}, 100)
    >>> 0.02 < th["a"] < 0.5
    True
    """
    x = np.asarray(reference_features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(names):
        raise ValueError(f"reference_features has shape {x.shape}, expected [rows, {len(names)}]")
    chunks = x.shape[0] // interval
    if chunks < 2:
        raise ValueError(f"need at least 2 chunks of {interval} rows, got {x.shape[0]} rows")
    out: dict[str, float] = {}
    for j, name in enumerate(names):
        if name not in hist:
            continue
        acc = BinnedDrift(hist[name])
        psis = []
        for c in range(chunks):
            acc.reset()
            acc.update(x[c * interval:(c + 1) * interval, j])
            if acc.count:
                psis.append(acc.psi())
        if len(psis) >= 2:
            arr = np.asarray(psis)
            out[name] = float(arr.mean() + sigmas * arr.std(ddof=1))
    return out


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    index: int  # position in DriftMonitor.names; -1 for the score
    name: str  # local only: egress sends the index, never the name
    psi: float
    ks: float
    mean_shift: float
    threshold: float
    alarm: bool
    counts: tuple[int, ...]  # per reference bin; egress sends them only when opted in


@dataclass(frozen=True, slots=True)
class DriftInterval:
    """One closed reporting interval: scalars only (plus local bookkeeping)."""

    model_name: str
    model_version: str
    model_sha256: str
    group: int  # opaque index of the monitored group (0 = all assets of the model)
    index: int  # interval sequence number since the monitor started
    windows: int
    features: tuple[FeatureDrift, ...]
    score: FeatureDrift | None
    missing_rate: float
    alert_rate: float
    closed_at: float  # agent wall clock (not data timestamps)
    first_ts: float = field(default=math.nan)  # local only: data time of the first window
    last_ts: float = field(default=math.nan)  # local only

    @property
    def alarm(self) -> bool:
        return any(f.alarm for f in self.features) or bool(self.score and self.score.alarm)


class DriftMonitor:
    """Per-interval drift of every feature and the score of one model.

    Decision: one monitor per model aggregates all assets scored by it (``group=0``);
    bins count windows, so memory is ``O(features x bins)`` whatever the number of
    assets, and each report pools enough windows to meet the egress k threshold.
    For per-asset drift, build one monitor per asset with a distinct ``group`` index.

    ``update`` takes a batch of windows: ``features [n, len(names)]`` (columns in
    ``names`` order: ``manifest.output.feature_names``, else the reference keys),
    ``scores [n]``, optional per-window ``missing`` fractions (gap-filled slots /
    slots) and ``breaches`` (alert condition held); without ``breaches`` the alert
    rate is the fraction of scores past the manifest's warning level. It returns
    the intervals closed by this batch (every ``interval_windows`` windows).
    """

    def __init__(self, manifest: Manifest, interval_windows: int, group: int = 0,
                 clock: object = time.time) -> None:
        if interval_windows < 1:
            raise ValueError(f"interval_windows={interval_windows} must be >= 1")
        self.manifest = manifest
        self.interval_windows = interval_windows
        self.group = group
        self._clock = clock
        ref = manifest.reference
        self.names: list[str] = list(manifest.output.feature_names) or list(ref.features)
        self._acc = {j: BinnedDrift(ref.features[n])
                     for j, n in enumerate(self.names) if n in ref.features}
        self._score = BinnedDrift(ref.score) if ref.score is not None else None
        self.index = 0
        self._reset_interval()

    def _reset_interval(self) -> None:
        for a in self._acc.values():
            a.reset()
        if self._score is not None:
            self._score.reset()
        self._windows = 0
        self._missing = 0.0
        self._breaches = 0
        self._first_ts = math.nan
        self._last_ts = math.nan

    def update(self, features: np.ndarray, scores: np.ndarray,
               missing: np.ndarray | None = None, breaches: np.ndarray | None = None,
               ts: np.ndarray | None = None) -> list[DriftInterval]:
        f = np.asarray(features, dtype=np.float64)
        s = np.asarray(scores, dtype=np.float64).ravel()
        if f.ndim != 2 or f.shape[1] != len(self.names) or f.shape[0] != s.size:
            raise ValueError(f"features {f.shape} / scores {s.shape} do not match "
                             f"[n, {len(self.names)}] / [n]")
        if breaches is None:
            m, lvl = self.manifest, self.manifest.thresholds.warning
            breaches = s > lvl if m.output.alert_when == "above" else s < lvl
        b = np.asarray(breaches, dtype=bool).ravel()
        miss = np.zeros(s.size) if missing is None else np.asarray(missing, float).ravel()
        t = None if ts is None else np.asarray(ts, dtype=np.float64).ravel()
        closed: list[DriftInterval] = []
        start = 0
        while start < s.size:
            take = min(s.size - start, self.interval_windows - self._windows)
            sl = slice(start, start + take)
            for j, acc in self._acc.items():
                acc.update(f[sl, j])
            if self._score is not None:
                self._score.update(s[sl])
            self._windows += take
            self._missing += float(np.nan_to_num(miss[sl], nan=1.0).sum())
            self._breaches += int(b[sl].sum())
            if t is not None and take:
                if math.isnan(self._first_ts):
                    self._first_ts = float(t[sl][0])
                self._last_ts = float(t[sl][-1])
            start += take
            if self._windows >= self.interval_windows:
                closed.append(self._close())
        return closed

    def _close(self) -> DriftInterval:
        th = self.manifest.drift_thresholds
        feats = tuple(_result(j, self.names[j], acc, th.get(self.names[j]))
                      for j, acc in sorted(self._acc.items()))
        score = (None if self._score is None
                 else _result(-1, SCORE_KEY, self._score, th.get(SCORE_KEY)))
        m = self.manifest
        n = self._windows
        out = DriftInterval(
            model_name=m.name, model_version=m.version, model_sha256=m.model_sha256,
            group=self.group, index=self.index, windows=n, features=feats, score=score,
            missing_rate=self._missing / n, alert_rate=self._breaches / n,
            closed_at=float(self._clock()),  # type: ignore[operator]
            first_ts=self._first_ts, last_ts=self._last_ts)
        self.index += 1
        self._reset_interval()
        return out


def _result(index: int, name: str, acc: BinnedDrift, threshold: float | None) -> FeatureDrift:
    th = DEFAULT_PSI_THRESHOLD if threshold is None else float(threshold)
    psi = acc.psi()
    return FeatureDrift(index=index, name=name, psi=psi, ks=acc.ks(),
                        mean_shift=acc.mean_shift(), threshold=th,
                        alarm=bool(psi > th), counts=tuple(int(c) for c in acc.counts))
