"""Warm the window buffers at start from the write-ahead log, so a restart loses no window.

Without this, an agent that stops (cleanly or by SIGKILL) loses what its window
buffers held: the readings of each asset's last window length are durable in the
history and acknowledged, so the broker never sends them again, and the first
windows after the start need ``window - 1`` new slots each. About one window of
readings per asset went unscored at every restart.

At start, before anything is received, the tail of the log (the newest
:func:`tail_s` of each asset's readings) is fed to the new :class:`WindowSet` in
timestamp order. The windows that this replay completes were scored by the
previous run (the pipeline scores a batch before it stores it), so they are
discarded; the buffers are left in the state the previous run had, and the next
live reading continues them. Readings that were not yet durable when the agent
stopped were not acknowledged either: the broker redelivers them (persistent
session), and one that was durable but whose PUBACK was lost lands in a closed
slot and is dropped as ``late``, never scoring a window twice.

The log keeps its newest segments out of compaction for :func:`tail_s` seconds
(``ParquetStore(wal_keep_s=...)``), so the tail is there even when a compaction
ran just before the stop; the agent reads only the log (numpy), never Parquet.
Legacy ``.arrow`` segments (which need pyarrow) are not replayed.

With ``hop`` > 1, windows end every ``hop`` slots counted from an asset's first
slot, which the tail alone does not tell: the agent saves each asset's phase
(:func:`save_phases`, a few bytes per asset, only when one changed: a new asset
or a gap restart) before each store flush, so every durable reading's phase is
durable too, and the replay anchors the buffers on it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.core.errors import StorageError
from edge.history import wal
from edge.ingest.ratelog import RateLimitedLog
from edge.scoring.window import WindowSet

log = logging.getLogger(__name__)
_MARGIN_SLOTS = 2


@dataclass
class WarmStart:
    assets: int = 0  # assets whose buffers were refilled
    readings: int = 0  # readings replayed into them
    windows_skipped: int = 0  # windows the replay completed: scored before the restart
    segments: int = 0  # log segments read
    unreadable: int = 0  # damaged or legacy segments not replayed


def tail_s(windows: WindowSet) -> float:
    """Seconds of readings per asset that rebuild its buffer: a window, the lateness
    bound and a hop, plus a margin."""
    slots = windows.window + windows.max_lateness + windows.hop + _MARGIN_SLOTS
    return slots * windows.period


def save_phases(path: Path, windows: WindowSet) -> dict[str, int]:
    """Write each asset's window phase (only meaningful with ``hop`` > 1) atomically."""
    phases = windows.phases()
    doc = {"version": 1, "hop": windows.hop, "period": windows.period, "phases": phases}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(doc, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return phases


def load_phases(path: Path, windows: WindowSet) -> dict[str, int]:
    """Phases saved for the same grid (hop and period), else none."""
    try:
        doc = json.loads(path.read_text())
        if doc.get("hop") != windows.hop or doc.get("period") != windows.period:
            return {}
        return {str(a): int(p) % windows.hop for a, p in doc["phases"].items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("window warm-up: %s unreadable (%s); window phases start afresh", path, exc)
        return {}


def warm_windows(root: Path, windows: WindowSet, *,
                 skip_assets: Collection[str] = (),
                 skip_signals: Collection[str] = (),
                 phases: dict[str, int] | None = None) -> WarmStart:
    """Refill ``windows`` from the log under ``root``; see the module docstring.

    ``phases`` (from :func:`load_phases`) keeps each asset's windows ending on the
    slots they ended on before the restart when ``hop`` > 1.
    """
    out = WarmStart()
    span = tail_s(windows)
    names: dict[str, int] = {}
    asset_codes, signal_idx, ts_parts, value_parts = [], [], [], []
    for path in wal.segments(root):
        if path.suffix != wal.SUFFIX:
            out.unreadable += 1
            continue
        try:
            cols = wal.read_columns(path)
        except FileNotFoundError:
            continue
        except (OSError, StorageError) as exc:
            out.unreadable += 1
            log.warning("window warm-up: %s not replayed (%s)", path, exc)
            continue
        out.segments += 1
        sig_map = np.array([windows.index.get(s, -1) if s not in skip_signals else -1
                            for s in cols.signals], dtype=np.int64)
        asset_map = np.array([-1 if a in skip_assets else names.setdefault(a, len(names))
                              for a in cols.assets], dtype=np.int64)
        if not len(sig_map) or not len(asset_map):
            continue
        si = sig_map[cols.signal]
        ai = asset_map[cols.asset]
        keep = (si >= 0) & (ai >= 0) & np.isfinite(cols.value)
        asset_codes.append(ai[keep])
        signal_idx.append(si[keep])
        ts_parts.append(cols.ts[keep])
        value_parts.append(cols.value[keep])
    if not ts_parts:
        return out
    a = np.concatenate(asset_codes)
    s = np.concatenate(signal_idx)
    t = np.concatenate(ts_parts)
    v = np.concatenate(value_parts)
    if not len(t):
        return out
    newest = np.full(len(names), -np.inf)
    np.maximum.at(newest, a, t)
    keep = t >= newest[a] - span
    a, s, t, v = a[keep], s[keep], t[keep], v[keep]
    order = np.lexsort((s, t, a))  # by asset, then time, then signal
    by_code = list(names)
    signals = windows.signals
    phases = phases or {}
    for code, ts, si, value in zip(a[order].tolist(), t[order].tolist(),
                                   s[order].tolist(), v[order].tolist(), strict=True):
        asset = by_code[code]
        if asset not in windows.assets and asset in phases:
            windows.anchor(asset, round(ts / windows.period), phases[asset])
        windows.add_point(asset, signals[si], ts, value)
    out.readings = len(t)
    out.assets = len(np.unique(a))
    out.windows_skipped = len(windows.drain())
    # The previous run counted these drops and skips already.
    windows.dropped.clear()
    windows.skipped.clear()
    return out


class PhaseFile:
    """With ``hop`` > 1, the window phases the next start anchors on (module docstring).

    ``save`` runs before each store flush and at stop; it writes only when a phase
    changed (a new asset or a gap restart). ``windows`` returns the current buffers
    (a model on another grid replaces them). A failed write is logged once a minute:
    the warm start then anchors that asset afresh, it never stops the flush.
    """

    def __init__(self, path: Path, windows: Callable[[], WindowSet]) -> None:
        self.path, self.windows = path, windows
        self._saved: dict[str, int] = {}
        self._log = RateLimitedLog(log, 60.0)

    def load(self) -> dict[str, int]:
        return load_phases(self.path, self.windows())

    def save(self) -> None:
        w = self.windows()
        if w.hop == 1 or w.phases() == self._saved:
            return
        try:
            self._saved = save_phases(self.path, w)
        except OSError as exc:
            self._log.warning("phases", "cannot save window phases: %s", exc)


def warm_agent(root: Path, windows: WindowSet, phases: PhaseFile, *,
               dead: Collection[str] = (), state_signal: str | None = None) -> WarmStart:
    """The agent's warm start: dead sources and the state signal (never windowed) skipped."""
    w = warm_windows(root, windows, skip_assets=dead,
                     skip_signals=[state_signal] if state_signal else [], phases=phases.load())
    if w.readings:
        log.info("window buffers of %d assets warmed from %d readings of the write-ahead "
                 "log (%d windows they complete were scored before the restart)",
                 w.assets, w.readings, w.windows_skipped)
    return w
