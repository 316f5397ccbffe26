"""What an ingest worker process sends the scoring process: decoded readings in columns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from edge.ingest.decode import DecodeResult
from edge.ingest.readings import Reading, Series

__all__ = ["DOWN", "HELLO", "DecodedBatch", "merge_nonfinite"]

HELLO = -1  # seq of a note: this worker's shared subscription is in place
DOWN = -2  # seq of a note: this worker lost its broker connection


@dataclass
class DecodedBatch:
    """What one worker decoded in one flush, in columns (cheap to pickle).

    The scoring process hands the pipeline batches of the same type, built by the
    watermark merge (edge/ingest/merge.py) from several workers' batches: those carry
    ``parts``, the (worker, seq) batches whose readings they contain.
    """

    worker: int
    seq: int
    n_messages: int
    keys: list[tuple[str, str]] = field(default_factory=list)  # (asset, signal)
    key_idx: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))
    ts: np.ndarray = field(default_factory=lambda: np.empty(0))
    value: np.ndarray = field(default_factory=lambda: np.empty(0))
    series: list[Series] = field(default_factory=list)
    stamped: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    rejects: list[tuple[str, str, str, bytes, float]] = field(default_factory=list)
    shed: int = 0  # messages the worker dropped because the scoring side fell behind
    needs_ack: bool = False
    watermark: float = -math.inf  # highest reading timestamp this worker has passed so far
    parts: list[tuple[int, int]] = field(default_factory=list)
    # Non-finite values by (asset, signal): (count, last ts), as in DecodeResult; their
    # messages are dead-lettered from ``letters`` (not counted again: ``dropped`` has them).
    nonfinite: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)
    letters: list[tuple[str, str, str, bytes, float]] = field(default_factory=list)
    origin: str = ""  # name of the Source that produced it (edge/ingest/source.py)

    def to_result(self) -> DecodeResult:
        """What the pipeline decodes from it (the dead letters are written already)."""
        keys = self.keys
        new = tuple.__new__
        items: list[Reading | Series] = [
            new(Reading, (*keys[k], t, v))
            for k, t, v in zip(self.key_idx.tolist(), self.ts.tolist(), self.value.tolist(),
                               strict=True)]
        items.extend(self.series)
        return DecodeResult(items, self.stamped, self.dropped or None,
                            nonfinite=self.nonfinite or None, lettered=True)


def merge_nonfinite(into: dict[tuple[str, str], tuple[int, float]],
                    more: dict[tuple[str, str], tuple[int, float]] | None) -> None:
    """Add ``more`` non-finite counts to ``into``: counts summed, latest timestamp kept."""
    if not more:
        return
    for key, (n, ts) in more.items():
        prev = into.get(key)
        into[key] = (n, ts) if prev is None else (prev[0] + n, max(prev[1], ts))
