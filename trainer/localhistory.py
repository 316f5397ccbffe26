"""The appliance's own history as the retrain reads it: one asset at a time, on the slot grid.

The agent writes ``<state_dir>/history`` (Parquet partitions plus the write-ahead
log) while this reads it: :func:`edge.history.history.read_history` takes both
and deduplicates. Rows are put on the bundle's sample grid the way the agent's
window buffers place readings (slot = round(ts / period)); readings of several
signals a few milliseconds apart land in one slot, the last reading of a
signal in a slot wins, and a slot without a reading of a signal is NaN (a
reading that never came, for the gap rule). One asset at a time keeps memory to
one asset's period; the ``forewarn export`` file of the same rows reads the same
through :mod:`trainer.tabular`.
"""

from __future__ import annotations

import calendar
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from edge.history import wal as wal_mod
from edge.history.history import read_history
from edge.history.layout import dir_asset

FAR_FUTURE = 1e10  # epoch s, year 2286: an upper bound for "everything"


@dataclass(frozen=True)
class AssetRows:
    """One asset's rows on the grid: ``values[signals, t]`` at ``ts``; ``label`` or None."""

    asset: str
    ts: np.ndarray
    values: np.ndarray
    label: np.ndarray | None
    readings: int  # readings read (before gridding)

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def select(self, lo: float, hi: float) -> AssetRows:
        keep = (self.ts >= lo) & (self.ts < hi)
        return AssetRows(self.asset, self.ts[keep], self.values[:, keep],
                         None if self.label is None else self.label[keep],
                         int(np.isfinite(self.values[:, keep]).sum()))

    def digest(self) -> str:
        h = hashlib.sha256(self.asset.encode())
        h.update(np.ascontiguousarray(self.ts).tobytes())
        h.update(np.ascontiguousarray(self.values).tobytes())
        return h.hexdigest()


def _day_start(day: str) -> float:
    return float(calendar.timegm(time.strptime(day, "%Y-%m-%d")))


def newest_ts(root: Path) -> float | None:
    """Data time of the newest reading in the history (None when it is empty)."""
    root = Path(root)
    days = sorted(d.name.removeprefix("date=") for d in root.glob("date=*") if d.is_dir())
    lo = _day_start(days[-1]) if days else 0.0
    t = read_history(root, lo, FAR_FUTURE, dedupe=False)
    if not t.num_rows:
        return None
    return float(pc.max(t["ts"]).as_py())


def assets_in(root: Path, since: float, until: float) -> list[str]:
    """Assets with a partition on a day of ``[since, until)`` or rows in the log."""
    root = Path(root)
    first = time.strftime("%Y-%m-%d", time.gmtime(since))
    last = time.strftime("%Y-%m-%d", time.gmtime(max(since, until - 1e-6)))
    found: set[str] = set()
    for ddir in root.glob("date=*"):
        if first <= ddir.name.removeprefix("date=") <= last:
            found.update(dir_asset(a.name) for a in ddir.glob("asset=*") if a.is_dir())
    from edge.history.arrow import SCHEMA

    for seg in wal_mod.segments(root):
        try:
            t = wal_mod.read_segment(seg, SCHEMA)
        except FileNotFoundError:  # compacted meanwhile: its rows are in a partition now
            continue
        mask = pc.and_(pc.greater_equal(t["ts"], since), pc.less(t["ts"], until))
        found.update(str(a) for a in pc.unique(t.filter(mask)["asset"]).to_pylist())
    return sorted(found)


def read_asset(root: Path, asset: str, since: float, until: float, signals: Sequence[str],
               period: float, label_signal: str | None = None) -> AssetRows:
    """``asset``'s readings of ``signals`` in ``[since, until)`` on the slot grid."""
    t = read_history(Path(root), since, until, [asset])
    names = [*signals, *([label_signal] if label_signal else [])]
    if not t.num_rows:
        empty = np.zeros(0)
        return AssetRows(asset, empty, np.zeros((len(signals), 0)),
                         empty if label_signal else None, 0)
    enc = pc.dictionary_encode(t["signal"]).combine_chunks()
    dictionary = [str(x) for x in enc.dictionary.to_pylist()]
    codes = np.asarray(enc.indices.to_numpy(zero_copy_only=False), np.int64)
    ts = _floats(t["ts"])
    value = _floats(t["value"])
    slots = np.rint(ts / period).astype(np.int64)
    wanted = np.isin(codes, [dictionary.index(n) for n in names if n in dictionary])
    u, inv = np.unique(slots[wanted], return_inverse=True)
    grid = np.full((len(names), u.size), np.nan)
    w_codes, w_val = codes[wanted], value[wanted]
    readings = 0
    for k, name in enumerate(names):
        if name not in dictionary:
            continue
        sel = (w_codes == dictionary.index(name)) & np.isfinite(w_val)
        # Rows are in time order per signal (read_history sorts): the last one wins.
        grid[k, inv[sel]] = w_val[sel]
        readings += int(sel.sum()) if k < len(signals) else 0
    label = None
    if label_signal:
        label = np.nan_to_num(grid[-1], nan=0.0)
        grid = grid[:-1]
    return AssetRows(asset, u.astype(np.float64) * period, grid, label, readings)


def _floats(col: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(col.to_numpy(), dtype=np.float64)
