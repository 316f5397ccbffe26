"""The health report's crew-verdict counts: per model version, k-suppressed, nothing else.

What leaves is counts of the last verdict of each resolved **model** alert
(:mod:`edge.alerts.verdicts`), per ``<name>/<version>`` and for the site; the
query reads only the kind, model, asset and verdict columns, so a note or a
work-order id is never even loaded, and asset names are dropped here.

k-suppression, as the drift report merges bins: a model version is listed only
with >= k verdicts, the site's totals only with >= k in all, and the versions
held back must add up to 0 or >= k verdicts, or the smallest listed ones are
held back too (otherwise the site total minus the listed ones would give a
small group away). A precision needs >= k confirmed + false-alarm verdicts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edge.alerts.verdicts import Tally, read_rows, split_model, summarise

_ID = re.compile(r"^[A-Za-z0-9_.\-+]{1,64}$")  # edge.egress.health's identifier rule


def k_suppress(groups: Mapping[str, Tally], k: int,
               showable: Callable[[str], bool] = lambda _: True
               ) -> tuple[dict[str, Tally], Tally | None]:
    """The groups that may be listed, and the total (None when it is < k).

    >>> t = lambda n: Tally(confirmed=n)
    >>> shown, total = k_suppress({"a/1": t(25), "a/2": t(30), "a/3": t(3)}, 20)
    >>> sorted(shown), total.total  # a/3's 3 alone would be 58 - 55: a/1 is held back too
    (['a/2'], 58)
    >>> k_suppress({"a/1": t(25), "a/2": t(22)}, 20)[0].keys()
    dict_keys(['a/1', 'a/2'])
    >>> k_suppress({"a/1": t(19)}, 20)
    ({}, None)
    """
    total = Tally()
    for g in groups.values():
        total.merge(g)
    if total.total < k:
        return {}, None
    shown = {key: g for key, g in groups.items() if g.total >= k and showable(key)}
    rest = total.total - sum(g.total for g in shown.values())
    while 0 < rest < k:  # terminates: with nothing listed, rest is the total (>= k)
        smallest = min(shown, key=lambda key: (shown[key].total, key))
        rest += shown.pop(smallest).total
    return shown, total


def _showable(model: str) -> bool:
    name, version = split_model(model)
    return bool(_ID.match(name) and _ID.match(version))


def verdict_section(store_path: Path, k: int) -> dict[str, Any]:
    """``verdicts``, ``precision`` and ``model_verdicts`` of a health report."""
    by_model = summarise(read_rows(store_path)).by_model
    shown, total = k_suppress(by_model, k, _showable)
    if total is None:
        site: dict[str, int | None] = {"confirmed": None, "false_alarm": None, "unsure": None}
    else:
        site = {"confirmed": total.confirmed, "false_alarm": total.false_alarm,
                "unsure": total.unsure}
    models = []
    for model, t in sorted(shown.items()):
        name, version = split_model(model)
        models.append({"name": name, "version": version, "confirmed": t.confirmed,
                       "false_alarm": t.false_alarm, "unsure": t.unsure,
                       "precision": t.precision if t.judged >= k else None})
    precision = total.precision if total is not None and total.judged >= k else None
    return {"verdicts": site, "precision": precision, "model_verdicts": models}
