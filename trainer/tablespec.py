"""``[data.table]``: which column of a CSV or Parquet table is which.

The description :func:`trainer.tabular.read_source` reads a table by, strict like
every config section (unknown keys refused, a description per field). The
presets (:mod:`trainer.presets`) fill it in for C-MAPSS and SKAB.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import Field, field_validator

from edge.core.strict import Strict
from trainer.tablecells import WHITESPACE

TS_FORMATS = ("auto", "epoch_s", "epoch_ms", "iso8601", "row_index")
Bound = float | str  # epoch seconds, or an ISO-8601 time


class TableSpec(Strict):
    """Which column of the table is which (``[data.table]``)."""

    path: str = Field("", description="CSV or Parquet file; relative paths are taken from "
                      "--data, else the config file's directory")
    format: Literal["auto", "csv", "parquet"] = Field(
        "auto", description="auto: .parquet/.pq is Parquet, anything else CSV")
    delimiter: str = Field("auto", description='CSV: "auto" (the most frequent of , ; tab | '
                           'in the header line), "whitespace" (runs of spaces and tabs), or '
                           'the character')
    columns: list[str] = Field(default_factory=list, description="CSV without a header "
                               "line: its column names in order; [] = the first line names "
                               "them")
    decimal: Literal["auto", ".", ","] = Field(
        "auto", description='CSV: "auto" ("," when the delimiter is not "," and a cell '
        'reads like 1,5), or the character')
    layout: Literal["auto", "wide", "long"] = Field(
        "auto", description="wide: one column per signal; long: columns ts, asset, signal, "
        "value (the agent's history and `forewarn export` file); auto: long when the table "
        "has signal and value columns")
    timestamp: str = Field("ts", description='timestamp column; "" = none (row index)')
    timestamp_format: str = Field(
        "auto", description="auto (numbers: epoch s; text: ISO-8601; Parquet timestamps as "
        "typed), epoch_s, epoch_ms, iso8601 (no zone = UTC), row_index (row i at i * "
        "sample_period_s), or a strftime pattern such as '%d.%m.%Y %H:%M:%S' (UTC)")
    asset_column: str = Field("", description='one series per value of this column; "" = '
                              'the column "asset" if there is one, else one asset')
    asset_name: str = Field("", description="the single asset's name (default: file stem)")
    label_column: str = Field("", description='"" = no labels')
    label_kind: Literal["anomaly", "rul", "run_to_failure"] = Field(
        "anomaly", description="anomaly: 0 healthy / 1 anomalous; rul: remaining life in "
        "samples; run_to_failure: 1 on the failure row, 0 before it (remaining life "
        "derived); run_to_failure without a label_column: every asset's last row is its "
        "failure (C-MAPSS training files)")
    train: list[Bound] = Field(default_factory=list, description="[start, end) of the "
                               "training rows (epoch s or ISO-8601); [] = all not below")
    validation: list[Bound] = Field(default_factory=list, description="[start, end) of "
                                    "the validation rows; [] = the family's default split")
    test: list[Bound] = Field(default_factory=list, description="[start, end) of held-out "
                              "test rows; [] = none")
    units: dict[str, str] = Field(default_factory=dict, description="signal -> unit text")

    @field_validator("delimiter")
    @classmethod
    def _delimiter(cls, v: str) -> str:
        if v not in ("auto", WHITESPACE) and len(v) != 1:
            raise ValueError(f'{v!r}: "auto", "{WHITESPACE}" or one character')
        return v

    @field_validator("timestamp_format")
    @classmethod
    def _ts_format(cls, v: str) -> str:
        if v not in TS_FORMATS and "%" not in v:
            raise ValueError(f"{v!r}: one of {', '.join(TS_FORMATS)} or a strftime pattern")
        return v

    @field_validator("train", "validation", "test")
    @classmethod
    def _range(cls, v: list[Bound]) -> list[Bound]:
        if v and len(v) != 2:
            raise ValueError(f"{v!r}: [start, end] or []")
        if v:
            lo, hi = (to_epoch(b) for b in v)
            if not lo < hi:
                raise ValueError(f"{v!r}: start must be before end")
        return v


def to_epoch(b: Bound) -> float:
    if isinstance(b, str):
        try:
            t = datetime.fromisoformat(b.strip())
        except ValueError as exc:
            raise ValueError(f"{b!r} is not an ISO-8601 time") from exc
        return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()
    return float(b)
