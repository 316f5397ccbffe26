"""``forewarn export``: one Parquet file of local history for retraining.

The file stays on site (it is written to a local path); it is the data scientist's
way in, not an egress path.
"""

from __future__ import annotations

import argparse
import calendar
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from edge.core.errors import ConfigError
from edge.history import history_root


def export(root: Path, out_path: Path, since: float, until: float,
           assets: Sequence[str] | None = None) -> int:
    """Write rows ``since <= ts < until`` of ``assets`` (all when None) to ``out_path``.

    Written atomically (temp file, fsync, rename); returns the number of rows.
    """
    # pyarrow here, not at import: every ``forewarn`` command, the agent's included,
    # registers this subcommand, and the agent never loads pyarrow.
    import pyarrow.parquet as pq

    from edge.history.history import read_history

    table = read_history(root, since, until, assets)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    with open(tmp, "wb") as fh:
        pq.write_table(table, fh, compression="zstd")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out_path)
    return int(table.num_rows)


def parse_time(text: str) -> float:
    """Epoch seconds from ``YYYY-MM-DD``, ``YYYY-MM-DDTHH:MM[:SS]`` (UTC) or a number."""
    try:
        return float(text)
    except ValueError:
        pass
    for fmt in ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"):
        try:
            return float(calendar.timegm(time.strptime(text.removesuffix("Z"), fmt)))
        except ValueError:
            continue
    raise ConfigError(f"time {text!r}: expected YYYY-MM-DD[THH:MM[:SS]] (UTC) or epoch seconds")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("export", help="write local history to one Parquet file")
    p.add_argument("--since", required=True, help="start (UTC date/time or epoch s), inclusive")
    p.add_argument("--until", required=True, help="end (UTC date/time or epoch s), exclusive")
    p.add_argument("--asset", action="append", default=None,
                   help="asset to include (repeatable; default all)")
    p.add_argument("--state-dir", type=Path, default=Path("/var/lib/forewarn"),
                   help="agent state directory holding history/")
    p.add_argument("--out", type=Path, default=Path("forewarn-export.parquet"))
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    since, until = parse_time(args.since), parse_time(args.until)
    if until <= since:
        raise ConfigError(f"--until {args.until!r} is not after --since {args.since!r}")
    n = export(history_root(args.state_dir), args.out, since, until, args.asset)
    print(f"{args.out}: {n} rows", file=sys.stderr)
    return 0
