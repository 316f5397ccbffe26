"""Scorer.score gives the same windows, in order, whatever the batch size.

The one-window path (batch 1, or the last window of a batch) is built differently
from the batched path; both must agree with the graph's own output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.models.bundle import load_bundle
from edge.models.infer import Scorer
from edge.scoring.window import ReadyWindow
from tests.bundlefactory import make_bundle


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> Scorer:
    root: Path = tmp_path_factory.mktemp("scorer")
    path, pub = make_bundle(root, signals=["a", "b", "c"], window=5)
    return Scorer(load_bundle(path, [pub]))


def _windows(n: int) -> list[ReadyWindow]:
    rng = np.random.default_rng(7)
    return [ReadyWindow(f"m{i % 3}", 100.0 + i, rng.uniform(0, 10, (3, 5)).astype(np.float32))
            for i in range(n)]


@pytest.mark.parametrize(("n", "batch"), [(1, 512), (5, 1), (5, 2), (7, 3), (6, 512)])
def test_every_batch_size_scores_like_the_graph(scorer: Scorer, n: int, batch: int) -> None:
    wins = _windows(n)
    want_scores, want_dev = scorer.run(np.stack([w.values for w in wins]))
    got = scorer.score(wins, batch)
    assert [(s.asset, s.ts) for s in got] == [(w.asset, w.end_ts) for w in wins]
    # onnxruntime's reductions may round differently per batch size (1 ulp of float32).
    np.testing.assert_allclose([s.score for s in got], want_scores, rtol=1e-6)
    assert all(type(s.score) is float for s in got)
    assert want_dev is not None
    for s, d, w in zip(got, want_dev, wins, strict=True):
        assert s.deviations is not None
        np.testing.assert_allclose(s.deviations, d, rtol=1e-6)
        assert s.window is w.values and s.model == scorer.ident
