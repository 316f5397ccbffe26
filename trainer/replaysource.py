"""What ``forewarn replay`` plays, as one stream per asset: the table a training
config's ``[data]`` describes (C-MAPSS and SKAB through their presets), a table
described by flags, or the C-MAPSS preset's test engines.

Every table is read by the trainer's own source (:func:`trainer.tabular.read_source`),
so a table replays exactly when it trains, and a bad one is refused with the same
message naming the file, line or row, and column.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.core.errors import ConfigError
from trainer import cmapss, presets
from trainer.payloads import Stream
from trainer.tablespec import TableSpec
from trainer.tabular import TableData, read_source

# Table flags of `forewarn replay` -> [data.table] keys (None = not given).
SPEC_FLAGS = {"table_format": "format", "delimiter": "delimiter", "decimal": "decimal",
              "layout": "layout", "timestamp": "timestamp",
              "timestamp_format": "timestamp_format", "asset_column": "asset_column",
              "asset_name": "asset_name"}


@dataclass(frozen=True)
class Plan:
    source: str  # what is played, for the first line of output
    streams: list[Stream]
    signals: list[str]
    period: float
    row_index: bool  # no timestamp column: row i of an asset is at i * period
    repairs: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(len(s.ts) for s in self.streams)


def _plan(source: str, data: TableData, period: float, row_index: bool) -> Plan:
    streams = [Stream(s.asset, s.ts, s.values) for s in data.series]
    return Plan(source, streams, list(data.signals), period, row_index, list(data.repairs))


def _spec(base: TableSpec, flags: dict[str, Any], path: Path | None) -> TableSpec:
    given = {key: flags[f] for f, key in SPEC_FLAGS.items() if flags.get(f) is not None}
    if path is not None:
        given["path"] = str(path)
        given.setdefault("asset_name", "")  # a preset's asset name is its own file's
    return TableSpec.model_validate({**base.model_dump(), **given})


def _row_index(spec: TableSpec) -> bool:
    return not spec.timestamp or spec.timestamp_format == "row_index"


def table(path: Path, flags: dict[str, Any], signals: list[str] | None, period: float) -> Plan:
    """A table described by the command's flags alone."""
    spec = _spec(TableSpec(), flags, path)
    return _plan(str(path), read_source(spec, path, signals, period), period, _row_index(spec))


def cmapss_test(subset: str, data_root: Path | None, signals: list[str], period: float
                ) -> Plan:
    """The C-MAPSS preset's test engines (the records the official protocol scores)."""
    path = cmapss.find(data_root, subset)["test"]
    data, _ = cmapss.read(path, "test", signals, period)
    return _plan(f"C-MAPSS {subset} {path}", data, period, True)


def from_config(config: Path, data_root: Path | None, path: Path | None,
                flags: dict[str, Any], signals: list[str] | None,
                subset: str | None) -> Plan:
    """The table a training config's [data] section describes; ``path`` (``--table``)
    replaces its file, ``flags`` its column description, ``signals`` its signals."""
    from trainer.families import load_config

    _, cfg = load_config(config)
    d = cfg.data
    wanted = signals or cfg.inputs
    period = float(flags.get("sample_period") or d.sample_period_s)
    if d.dataset == "history":
        raise ConfigError(f"{config}: dataset = \"history\": replay reads a table; write the "
                          "history to one with `forewarn export --since ... --out h.parquet` "
                          "and give --table h.parquet")
    if subset is not None and d.dataset != "cmapss":
        raise ConfigError(f"--subset {subset}: {config} is dataset = {d.dataset!r}, not cmapss")
    if d.dataset == "cmapss":
        if path is None:
            return cmapss_test(subset or d.subset, data_root, wanted, period)
        return _plan(f"{path} (C-MAPSS, {config})",
                     cmapss.read(path, "test", wanted, period)[0], period, True)
    if d.dataset == "skab":
        src = presets.skab(data_root)
    else:
        base = d.table or TableSpec(path=d.path, layout=d.layout)
        src = presets.table(base, config.resolve().parent, data_root)
    spec = _spec(src.spec, flags, path)
    where = path or src.path
    return _plan(f"{where} ({config})", read_source(spec, where, wanted, period), period,
                 _row_index(spec))


def select(plan: Plan, assets: list[str] | None) -> Plan:
    """Only the named assets; an unknown name is an error listing what there is."""
    if not assets:
        return plan
    have = {s.asset: s for s in plan.streams}
    unknown = [a for a in assets if a not in have]
    if unknown:
        some = ", ".join(list(have)[:12]) + (" ..." if len(have) > 12 else "")
        raise ConfigError(f"--assets: {unknown} not in {plan.source} (assets: {some})")
    return Plan(plan.source, [have[a] for a in dict.fromkeys(assets)], plan.signals,
                plan.period, plan.row_index, plan.repairs)


def shifted(plan: Plan, mode: str, now: float, lead_s: float = 60.0) -> tuple[Plan, float]:
    """Timestamps for the agent: ``keep`` as recorded; ``shift`` moved by a whole
    number of sample periods so the last row lies ``lead_s`` before ``now`` (no
    reading is ever in the future, at any speed). Returns the plan and the shift."""
    if mode == "keep":
        if plan.row_index:
            raise ConfigError("--time keep: the table has no timestamp column (its rows "
                              "are numbered); keep needs real times, or use --time shift")
        return plan, 0.0
    last = max((float(s.ts[-1]) for s in plan.streams if len(s.ts)), default=0.0)
    shift = float(np.floor((now - lead_s - last) / plan.period) * plan.period)
    streams = [Stream(s.asset, s.ts + shift, s.values) for s in plan.streams]
    return Plan(plan.source, streams, plan.signals, plan.period, plan.row_index,
                plan.repairs), shift


def print_repairs(plan: Plan) -> None:
    for note in plan.repairs:
        print(f"{plan.source}: repaired: {note}", file=sys.stderr)
