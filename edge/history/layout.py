"""Names of the history's partitions (``date=YYYY-MM-DD/asset=<asset>``), without pyarrow.

Retention needs them in every agent; pyarrow (~27 MB RSS) is imported only by
agents that store history.
"""

from __future__ import annotations

import re
import time
from urllib.parse import quote, unquote

DAY = 86_400
_SAFE = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")


def asset_dir(asset: str) -> str:
    """Directory name of an asset; anything outside a safe alphabet is %-encoded."""
    return "asset=" + (asset if _SAFE.match(asset) else quote(asset, safe=""))


def dir_asset(name: str) -> str:
    return unquote(name.removeprefix("asset="))


def day_of(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))
