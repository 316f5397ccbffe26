"""Data quality before fitting: what is wrong with each signal of each asset.

Per (asset, signal): readings, duplicate timestamps, non-finite values, values
outside a configured range, gaps longer than 1.5 sample periods (count and the
longest), the longest flat-lined run (identical consecutive values) and the
share of grid slots with no reading. Per signal, over all assets: a signal that
is constant or missing from more than ``max_missing`` of its slots is refused,
naming it, unless the config allows it; the verdicts go into the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge.core.errors import ForewarnError
from trainer.loaders import Readings


class DataQualityError(ForewarnError):
    """A signal failed the quality gate (and the config does not allow it)."""


@dataclass(frozen=True)
class SignalQuality:
    asset: str
    signal: str
    readings: int
    duplicates: int
    non_finite: int
    out_of_range: int
    gaps: int
    longest_gap_s: float
    longest_flat: int
    missing_share: float


@dataclass
class QualityReport:
    rows: list[SignalQuality]
    refused: dict[str, str] = field(default_factory=dict)   # signal -> reason
    allowed: dict[str, str] = field(default_factory=dict)   # refused, but kept by config
    flat_samples: int = 20

    def totals(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for s in dict.fromkeys(r.signal for r in self.rows):  # config order
            mine = [r for r in self.rows if r.signal == s]
            out[s] = {
                "readings": sum(r.readings for r in mine),
                "duplicates": sum(r.duplicates for r in mine),
                "non_finite": sum(r.non_finite for r in mine),
                "out_of_range": sum(r.out_of_range for r in mine),
                "gaps": sum(r.gaps for r in mine),
                "longest_gap_s": max(r.longest_gap_s for r in mine),
                "flat_assets": sum(r.longest_flat >= self.flat_samples for r in mine),
                "missing_share": round(float(np.mean([r.missing_share for r in mine])), 6),
            }
        return out

    def lineage(self) -> dict[str, object]:
        return {"signals": self.totals(), "refused": dict(self.refused),
                "allowed_by_config": dict(self.allowed), "flat_samples": self.flat_samples}

    def text(self) -> str:
        lines = [f"{'signal':12s} {'readings':>9s} {'dups':>6s} {'nonfin':>6s} {'range':>6s} "
                 f"{'gaps':>6s} {'flat':>5s} {'missing':>8s}  verdict"]
        for s, t in self.totals().items():
            verdict = (f"REFUSED: {self.refused[s]}" if s in self.refused else
                       f"allowed by config: {self.allowed[s]}" if s in self.allowed else "ok")
            lines.append(f"{s:12s} {t['readings']:9.0f} {t['duplicates']:6.0f} "
                         f"{t['non_finite']:6.0f} {t['out_of_range']:6.0f} {t['gaps']:6.0f} "
                         f"{t['flat_assets']:5.0f} {t['missing_share']:8.1%}  {verdict}")
        return "\n".join(lines)


def _longest_run(v: np.ndarray) -> int:
    if v.size == 0:
        return 0
    change = np.flatnonzero(np.r_[True, v[1:] != v[:-1], True])
    return int(np.diff(change).max())


def _one(asset: str, signal: str, ts: np.ndarray, v: np.ndarray, span: tuple[float, float],
         period: float, rng: tuple[float, float] | None) -> SignalQuality:
    order = np.lexsort((np.arange(ts.size), ts))
    ts, v = ts[order], v[order]
    uniq = np.r_[True, np.diff(ts) > 0] if ts.size else np.zeros(0, bool)
    finite = np.isfinite(v)
    out = 0 if rng is None else int(np.sum(finite & ((v < rng[0]) | (v > rng[1]))))
    t_ok = np.unique(ts[finite])
    steps = np.diff(np.r_[span[0], t_ok, span[1]]) if t_ok.size else np.array([span[1] - span[0]])
    gaps = steps[steps > 1.5 * period]
    slots = int(np.floor((span[1] - span[0]) / period + 1e-9)) + 1
    return SignalQuality(
        asset, signal, int(ts.size), int(np.sum(~uniq)), int(np.sum(~finite)), out,
        int(gaps.size), float(gaps.max()) if gaps.size else 0.0,
        _longest_run(v[uniq & finite]), round(max(0.0, 1.0 - t_ok.size / slots), 6),
    )


def assess(r: Readings, signals: list[str], period: float, *, max_missing: float = 0.5,
           flat_samples: int = 20, allow: list[str] | None = None,
           ranges: dict[str, tuple[float, float]] | None = None) -> QualityReport:
    """Inspect ``signals`` of every asset in ``r``; raise :class:`DataQualityError` naming
    each refused signal that ``allow`` does not list."""
    rows = []
    # One sort and a split into (asset, signal) groups: masks per pair would be O(N·pairs).
    order = np.lexsort((r.ts, r.signal, r.asset))
    a_s, s_s, t_s, v_s = r.asset[order], r.signal[order], r.ts[order], r.value[order]
    cut = np.flatnonzero((a_s[1:] != a_s[:-1]) | (s_s[1:] != s_s[:-1])) + 1
    groups = {(a_s[i], s_s[i]): (i, j) for i, j in zip(np.r_[0, cut], np.r_[cut, len(r)],
                                                          strict=True) if j > i}
    spans: dict[str, tuple[float, float]] = {}
    for (a, _s), (i, j) in groups.items():
        lo, hi = spans.get(a, (np.inf, -np.inf))
        spans[a] = (min(lo, float(t_s[i])), max(hi, float(t_s[j - 1])))
    empty = np.zeros(0)
    for a in sorted(spans):
        for s in signals:
            i, j = groups.get((a, s), (0, 0))
            ts, v = (t_s[i:j], v_s[i:j]) if j > i else (empty, empty)
            rows.append(_one(a, s, ts, v, spans[a], period, (ranges or {}).get(s)))
    report = QualityReport(rows, flat_samples=flat_samples)
    for s in signals:
        v = r.value[(r.signal == s) & np.isfinite(r.value)]
        missing = float(np.mean([q.missing_share for q in rows if q.signal == s] or [1.0]))
        reason = ""
        if v.size == 0:
            reason = "no finite readings"
        elif missing > max_missing:
            reason = f"missing from {missing:.0%} of its slots (max_missing {max_missing:.0%})"
        elif np.ptp(v) == 0:
            reason = f"constant ({float(v[0]):g}) in every asset"
        if reason:
            (report.allowed if s in (allow or []) else report.refused)[s] = reason
    if report.refused:
        detail = "; ".join(f"signal {s!r}: {why}" for s, why in report.refused.items())
        raise DataQualityError(
            f"data quality: {detail} (drop it from data.signals, or list it in "
            f"quality.allow to keep it)\n{report.text()}")
    return report
