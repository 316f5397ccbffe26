"""Self-contained HTML report of a ``forewarn evaluate`` run (inline SVG, no assets)."""

from __future__ import annotations

import html
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from trainer.evaluate import AssetResult, Evaluation

W, H, PAD = 720, 140, 30


def _path(xs: np.ndarray, ys: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> str:
    if len(xs) == 0:
        return ""
    # At most ~1,500 points per line keeps a 30-asset report small.
    step = max(1, len(xs) // 1500)
    px = PAD + (xs[::step] - x0) / max(x1 - x0, 1e-9) * (W - 2 * PAD)
    py = H - PAD - (ys[::step] - y0) / max(y1 - y0, 1e-9) * (H - 2 * PAD)
    return "M" + " L".join(f"{a:.1f},{b:.1f}" for a, b in zip(px, py, strict=True))


def asset_svg(a: AssetResult) -> str:
    """Score (log-scaled when it spans decades), threshold, labels and open alerts."""
    if len(a.win_ts) == 0:
        return "<p>no complete window</p>"
    x0 = float(min(a.win_ts[0], a.row_ts[0] if len(a.row_ts) else a.win_ts[0]))
    x1 = float(a.win_ts[-1])
    s = np.asarray(a.scores, np.float64)
    log = s.min() > 0 and np.nanmax(s) / max(np.nanmin(s), 1e-12) > 100
    f = np.log10 if log else (lambda v: v)
    ys, thr = f(np.maximum(s, 1e-12)), float(f(max(a.threshold, 1e-12)))
    y0, y1 = float(min(ys.min(), thr)), float(max(np.quantile(ys, 0.995), thr) * 1.05)
    ys = np.clip(ys, y0, y1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
             f'viewBox="0 0 {W} {H}" role="img">']

    def band(mask: np.ndarray, ts: np.ndarray, colour: str, top: float, h: float) -> None:
        edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(int), 0]))
        for lo, hi in zip(edges[::2], edges[1::2], strict=True):
            xa = PAD + (ts[lo] - x0) / max(x1 - x0, 1e-9) * (W - 2 * PAD)
            xb = PAD + (ts[hi - 1] - x0) / max(x1 - x0, 1e-9) * (W - 2 * PAD)
            parts.append(f'<rect x="{xa:.1f}" y="{top}" width="{max(xb - xa, 1):.1f}" '
                         f'height="{h}" fill="{colour}"/>')

    if a.labels is not None:
        band(a.labels.astype(bool), a.row_ts, "#f4c7c3", PAD, H - 2 * PAD)
    band(a.active, a.win_ts, "#d93025", H - PAD + 4, 6)
    parts.append(f'<path d="{_path(a.win_ts, ys, x0, x1, y0, y1)}" fill="none" '
                 'stroke="#1a73e8" stroke-width="1"/>')
    ty = H - PAD - (thr - y0) / max(y1 - y0, 1e-9) * (H - 2 * PAD)
    parts.append(f'<line x1="{PAD}" x2="{W - PAD}" y1="{ty:.1f}" y2="{ty:.1f}" '
                 'stroke="#e37400" stroke-dasharray="4 3"/>')
    parts.append(f'<text x="{PAD}" y="14" font-size="11">score{" (log10)" if log else ""}; '
                 'dashed: threshold; pink: labelled anomaly; red bar: alert open</text>')
    parts.append("</svg>")
    return "".join(parts)


def lead_histogram(leads: list[float], unit: str) -> str:
    if not leads:
        return "<p>no alert inside a labelled event</p>"
    counts, edges = np.histogram(leads, bins=min(15, max(3, len(leads) // 2)))
    top = max(int(counts.max()), 1)
    bw = (W - 2 * PAD) / len(counts)
    bars = [f'<rect x="{PAD + i * bw:.1f}" y="{H - PAD - c / top * (H - 2 * PAD):.1f}" '
            f'width="{bw - 2:.1f}" height="{c / top * (H - 2 * PAD):.1f}" fill="#1a73e8">'
            f'<title>{edges[i]:.0f}–{edges[i + 1]:.0f} {unit}: {c}</title></rect>'
            for i, c in enumerate(counts)]
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" role="img">'
            + "".join(bars)
            + f'<text x="{PAD}" y="{H - 8}" font-size="11">{edges[0]:.0f} {unit}</text>'
            + f'<text x="{W - PAD - 80}" y="{H - 8}" font-size="11">{edges[-1]:.0f} {unit}'
            + f'</text><text x="{PAD}" y="14" font-size="11">max count {top}</text></svg>')


def write_report(ev: Evaluation, path: Path) -> None:
    e = html.escape
    unit = "s" if ev.kind == "anomaly" else "cycles"
    leads = [x for a in ev.assets for x in a.lead_s]
    rows = "".join(f"<tr><td>{e(k)}</td><td>{v:.6g}</td><td>{e(ev.protocol_of(k))}</td></tr>"
                   for k, v in ev.metrics.items())
    drivers: Counter[str] = Counter()
    for a in ev.assets:
        for _, devs in a.alert_deviations:
            drivers.update(list(devs)[:1])
    drv = "".join(f"<tr><td>{e(n)}</td><td>{c}</td></tr>" for n, c in drivers.most_common(10))
    body = [
        "<!doctype html><html><head><meta charset='utf-8'><title>forewarn evaluate</title>",
        "<style>body{font:14px system-ui,sans-serif;margin:2em;max-width:760px}"
        "table{border-collapse:collapse}td{border:1px solid #ccc;padding:2px 8px}</style>",
        "</head><body><h1>forewarn evaluate</h1>",
        f"<h2>Protocol</h2><p>{e(ev.protocol)}</p>",
        f"<p>Command: <code>{e(ev.command)}</code></p>",
        f"<h2>Results</h2><p>Figures from: {e(ev.scored_by)}</p>",
        f"<p>Alert rule: {e(ev.rule_text)}</p>",
        f"<table><tr><td>figure</td><td>value</td><td>protocol</td></tr>{rows}</table>",
        *(f"<p>{e(n)}</p>" for n in ev.notes),
        f"<p>{e(ev.rate_line())}.</p>",
        f"<h2>Alert lead time ({unit})</h2>{lead_histogram(leads, unit)}",
        "<h2>Feature that deviated most when an alert opened</h2>",
        f"<table><tr><td>feature</td><td>alerts</td></tr>{drv}</table>",
        "<h2>Per asset</h2>",
    ]
    for a in ev.assets:
        dev = "; ".join(f"t={t:.0f}: " + ", ".join(f"{e(k)} {v:+.1f}σ" for k, v in d.items())
                        for t, d in a.alert_deviations[:3])
        body.append(f"<h3>{e(a.asset)}</h3>{asset_svg(a)}"
                    f"<p>alerts opened: {len(a.opened)}; deviations at alert: {dev or '–'}</p>")
    body.append("</body></html>")
    Path(path).write_text("\n".join(body), encoding="utf-8")
