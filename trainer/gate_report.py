"""The gate's HTML report: one self-contained file (inline SVG, no script, no assets).

Written for every gate run, accepted or refused: the decision and its reasons, the
protocol (what was counted), the table of counts for both bundles, each confirmed
fault and who caught it, what the training left out, and per asset the score
traces of both bundles over the gate period with their alert spans and the faults.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from trainer.gate import Fault, GateResult, Side, Trace, iso

W, H, PAD = 760, 120, 34
PROTOCOL = (
    "Candidate and active are replayed over the same gate period (the most recent "
    "history, held back from training) through the agent's window buffer, scorer and "
    "alert rule, each with its own alert policy. Confirmed faults are the spans of "
    "alerts the crew confirmed (from the window that opened them to their last "
    "evidence, widened by the fault margin) and runs of labelled rows. A bundle "
    "catches a fault when its alert is open after a window ending inside it. Healthy "
    "windows end outside every fault; false-alarm rate = healthy windows after which "
    "the alert is open / healthy windows. Accepted iff the candidate catches every "
    "fault the active catches and its false-alarm rate is not above the active's.")

ROWS = (("windows", "evaluated windows"), ("healthy", "healthy windows"),
        ("false_alarm_windows", "false-alarm windows"), ("false_alarm_rate", "false-alarm rate"),
        ("fault_windows_alerted", "fault windows alerted"),
        ("window_precision", "window precision"), ("alerts_opened", "alerts opened"),
        ("false_alerts", "alerts opened outside faults"))


def _cell(side: Side, key: str, n_faults: int) -> str:
    v = getattr(side, key)
    if key == "false_alarm_rate":
        return f"{v:.2%}"
    if key == "window_precision":
        return "–" if v is None else f"{v:.3f}"
    return str(v)


def _x(t: np.ndarray | float, x0: float, x1: float) -> Any:
    return PAD + (np.asarray(t, np.float64) - x0) / max(x1 - x0, 1e-9) * (W - 2 * PAD)


def panel(label: str, tr: Trace, faults: list[Fault], x0: float, x1: float,
          colour: str) -> str:
    """One bundle's score (log10 when it spans decades), its warning level, the faults
    (shaded) and the alert-open windows (bar under the plot)."""
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
             f'viewBox="0 0 {W} {H}" role="img" aria-label="{html.escape(label)}">']
    for f in faults:
        xa, xb = _x(max(f.start, x0), x0, x1), _x(min(f.end, x1), x0, x1)
        parts.append(f'<rect x="{xa:.1f}" y="{PAD / 2}" width="{max(xb - xa, 1):.1f}" '
                     f'height="{H - 1.5 * PAD:.1f}" fill="#f4c7c3"/>')
    s = np.asarray(tr.scores, np.float64)
    if len(s):
        finite = s[np.isfinite(s)]
        log = finite.size > 0 and finite.min() > 0 and finite.max() / finite.min() > 100
        scale = np.log10 if log else (lambda v: v)
        ys = scale(np.maximum(np.nan_to_num(s, nan=0.0), 1e-12))
        thr = float(scale(max(tr.threshold, 1e-12)))
        y0 = float(min(ys.min(), thr))
        y1 = float(max(np.quantile(ys, 0.995), thr)) * 1.05 + 1e-9
        ys = np.clip(ys, y0, y1)
        step = max(1, len(ys) // 1500)  # a day of 1 s windows stays a small file

        def y(v: Any) -> Any:
            return H - PAD - (np.asarray(v) - y0) / max(y1 - y0, 1e-9) * (H - 1.5 * PAD)

        px, py = _x(tr.win_ts[::step], x0, x1), y(ys[::step])
        line = " L".join(f"{a:.1f},{b:.1f}" for a, b in zip(px, py, strict=True))
        parts.append(f'<path d="M{line}" fill="none" stroke="{colour}" stroke-width="1"/>')
        ty = float(y(thr))
        parts.append(f'<line x1="{PAD}" x2="{W - PAD}" y1="{ty:.1f}" y2="{ty:.1f}" '
                     'stroke="#e37400" stroke-dasharray="4 3"/>')
        on = np.asarray(tr.active, bool)
        edges = np.flatnonzero(np.diff(np.r_[0, on.astype(np.int8), 0]))
        for a, b in zip(edges[::2], edges[1::2], strict=True):
            xa, xb = _x(tr.win_ts[a], x0, x1), _x(tr.win_ts[b - 1], x0, x1)
            parts.append(f'<rect x="{xa:.1f}" y="{H - PAD + 6}" width="{max(xb - xa, 1):.1f}" '
                         'height="6" fill="#d93025"/>')
        label += " (log10)" if log else ""
    parts.append(f'<text x="{PAD}" y="12" font-size="11">{html.escape(label)}: score, '
                 'dashed: warning level, pink: confirmed fault, red bar: alert open</text>')
    parts.append(f'<text x="{PAD}" y="{H - 2}" font-size="10">{iso(x0)}</text>'
                 f'<text x="{W - PAD}" y="{H - 2}" font-size="10" text-anchor="end">'
                 f'{iso(x1)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def write_report(path: Path, result: GateResult, active: Mapping[str, Trace],
                 candidate: Mapping[str, Trace], *, title: str,
                 context: Mapping[str, Any]) -> None:
    """``context``: ``(label, value)`` pairs shown under the decision (who, what, when)."""
    e = html.escape
    n = len(result.faults)
    verdict = "ACCEPTED" if result.accepted else "REFUSED"
    colour = "#188038" if result.accepted else "#d93025"
    rows = "".join(f"<tr><td>{e(label)}</td><td>{_cell(result.active, k, n)}</td>"
                   f"<td>{_cell(result.candidate, k, n)}</td></tr>" for k, label in ROWS)
    rows += (f"<tr><td>confirmed faults caught</td><td>{len(result.active.caught)} of {n}</td>"
             f"<td>{len(result.candidate.caught)} of {n}</td></tr>")
    faults = "".join(
        f"<tr><td>{e(f.asset)}</td><td>{iso(f.start)}</td><td>{iso(f.end)}</td>"
        f"<td>{e(f.source)}</td><td>{'yes' if i in result.active.caught else 'no'}</td>"
        f"<td>{'yes' if i in result.candidate.caught else 'no'}</td></tr>"
        for i, f in enumerate(result.faults))
    ctx = "".join(f"<tr><td>{e(str(k))}</td><td>{e(str(v))}</td></tr>"
                  for k, v in context.items())
    body = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title><style>body{{font:14px system-ui,sans-serif;margin:2em;"
        "max-width:800px}table{border-collapse:collapse;margin:.5em 0}"
        "td{border:1px solid #ccc;padding:2px 8px}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p style='font-size:20px;color:{colour}'><b>{verdict}</b></p>",
        *(f"<p>{e(r)}</p>" for r in result.reasons),
        f"<table>{ctx}</table>",
        f"<h2>Protocol</h2><p>{e(PROTOCOL)}</p>",
        "<h2>Counts over the gate period</h2>",
        f"<table><tr><td></td><td>active</td><td>candidate</td></tr>{rows}</table>",
        "<h2>Confirmed faults</h2>",
        ("<table><tr><td>asset</td><td>from (data time)</td><td>to</td><td>source</td>"
         f"<td>active caught</td><td>candidate caught</td></tr>{faults}</table>"
         if faults else "<p>none in the gate period</p>"),
        "<h2>Per asset</h2>",
    ]
    for asset, (sa, sc) in result.per_asset.items():
        ta, tc = active.get(asset), candidate.get(asset)
        ts = [t.win_ts for t in (ta, tc) if t is not None and len(t.win_ts)]
        body.append(f"<h3>{e(asset)}</h3><p>false-alarm windows: active "
                    f"{sa.false_alarm_windows} of {sa.healthy}, candidate "
                    f"{sc.false_alarm_windows} of {sc.healthy}</p>")
        if not ts:
            body.append("<p>no complete window</p>")
            continue
        x0 = float(min(t[0] for t in ts))
        x1 = float(max(t[-1] for t in ts))
        mine = [f for f in result.faults if f.asset == asset]
        for label, tr, col in (("active", ta, "#5f6368"), ("candidate", tc, "#1a73e8")):
            if tr is not None:
                body.append(panel(label, tr, mine, x0, x1, col))
    body.append("</body></html>")
    Path(path).write_text("\n".join(body), encoding="utf-8")
