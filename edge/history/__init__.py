"""Local raw history: Parquet partitions by date and asset, retention, export.

Layout under ``<state_dir>/history``::

    date=YYYY-MM-DD/asset=<asset>/part-<seq>-<uuid>.parquet

Columns: asset (string), signal (string), ts (float64, epoch s), value (float64).
"""

from __future__ import annotations

from pathlib import Path

HISTORY_DIR = "history"


def history_root(state_dir: Path) -> Path:
    return Path(state_dir) / HISTORY_DIR
