"""Reading the history back: Parquet partitions plus rows still in the write-ahead log.

The trainer and ``forewarn export`` read through here (with pyarrow); the agent writes
the history without ever importing this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from edge.core.errors import StorageError
from edge.history import wal as wal_mod
from edge.history.arrow import SCHEMA
from edge.history.layout import asset_dir, day_of

__all__ = ["SCHEMA", "read_history"]


def read_history(root: Path, since: float, until: float,
                 assets: Sequence[str] | None = None, dedupe: bool = True) -> pa.Table:
    """Rows with ``since <= ts < until`` (epoch s), sorted by asset, signal, ts.

    Includes rows still in the write-ahead log. Delivery is at least once (a QoS 1
    message stored but not yet acknowledged when the agent or the broker died comes
    again), and a crash during compaction leaves rows in both the log and Parquet,
    so the same reading can sit in two files. Deduplication happens here, at read
    time, on (asset, signal, ts), keeping the first-read row (Parquet files oldest
    first, then the log): at write time it would need an index of every row on
    disk. ``dedupe=False`` shows the raw rows.

    A file that cannot be read raises StorageError naming it; nothing is skipped.
    The trainer reads the store with this function.
    """
    import pyarrow.compute as pc

    root = Path(root)
    for _ in range(5):
        # A segment that vanishes between listing and reading was compacted
        # meanwhile: its rows may be in files listed too late, so list again. A
        # Parquet file that vanishes was undone by an abandoned compaction (its rows
        # are back in the log) or deleted by retention.
        try:
            tables = _read_files(root, since, until, assets)
            break
        except FileNotFoundError:
            continue
    else:
        tables = _read_files(root, since, until, assets)
    if not tables:
        return SCHEMA.empty_table()
    out = pa.concat_tables(tables)
    # A stable sort: files are read oldest first, so the first of equal keys was written first.
    out = out.sort_by([("asset", "ascending"), ("signal", "ascending"), ("ts", "ascending")])
    if dedupe and out.num_rows > 1:
        same = [pc.equal(out[c][1:], out[c][:-1]) for c in ("asset", "signal", "ts")]
        dup = pc.and_(pc.and_(same[0], same[1]), same[2])
        out = out.filter(pa.concat_arrays([pa.array([True]),
                                           pc.invert(dup.combine_chunks())]))
    return out


def _read_files(root: Path, since: float, until: float,
                assets: Sequence[str] | None) -> list[pa.Table]:
    import pyarrow.compute as pc

    segs = wal_mod.segments(root)  # listed first: compaction writes Parquet, then deletes
    first, last = day_of(since), day_of(max(since, until - 1e-6))
    want = None if assets is None else {asset_dir(a) for a in assets}
    tables = []
    for ddir in sorted(root.glob("date=*")):
        day = ddir.name.removeprefix("date=")
        if not (first <= day <= last):
            continue
        for adir in sorted(ddir.glob("asset=*")):
            if want is not None and adir.name not in want:
                continue
            for f in sorted(adir.glob("part-*.parquet")):
                try:
                    t = pq.read_table(f, schema=SCHEMA)
                except FileNotFoundError:
                    raise
                except (OSError, pa.ArrowException) as exc:
                    raise StorageError(f"{f}: unreadable Parquet file ({exc})") from exc
                mask = pc.and_(pc.greater_equal(t["ts"], since), pc.less(t["ts"], until))
                tables.append(t.filter(mask))
    for f in segs:
        try:
            t = wal_mod.read_segment(f, SCHEMA)
        except FileNotFoundError:
            raise
        except (OSError, pa.ArrowException) as exc:
            raise StorageError(f"{f}: unreadable WAL segment ({exc})") from exc
        mask = pc.and_(pc.greater_equal(t["ts"], since), pc.less(t["ts"], until))
        if assets is not None:
            mask = pc.and_(mask, pc.is_in(t["asset"], value_set=pa.array(list(assets),
                                                                          pa.string())))
        tables.append(t.filter(mask))
    return tables
