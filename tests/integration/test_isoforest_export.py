"""A signed IsolationForest bundle trained on SKAB loads in the agent (SKAB is not
shipped: it is read from ``shared/datasets`` beside the checkout, skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.models.bundle import load_bundle
from edge.models.infer import Scorer
from tests.bundlefactory import train_fleet_bundle
from trainer.anomaly_pipeline import feed, window_set
from trainer.config import load_config
from trainer.skab import load_labelled

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "trainer" / "configs" / "skab_isoforest.toml"


def test_signed_isoforest_bundle_loads_scores_and_explains(shared_datasets: Path,
                                                            tmp_path: Path) -> None:
    path, pub = train_fleet_bundle(CONFIG, tmp_path, shared_datasets / "skab")
    bundle = load_bundle(path, [pub])
    m = bundle.manifest
    assert m.lineage["model_family"] == "isoforest" and m.metrics["isoforest_trees"] == 100
    assert m.output.kind == "anomaly" and "alarm" in m.thresholds.rationale
    # The config's [alerts] is the deployed rule, and the rule the calibration replayed.
    assert m.alert_policy is not None and m.alert_policy.direction == "above"
    cfg = load_config(CONFIG).alerts
    assert m.alert_policy.rule() == {"k": cfg.k, "n": cfg.n, "clear_after": cfg.clear_after,
                                     "cooldown_s": 0.0}
    assert "calibration replays this rule" in m.alert_policy.rationale
    assert set(m.reference.features) == set(m.output.feature_names)
    scorer = Scorer(bundle)  # refuses the bundle unless its self-test windows match
    f = load_labelled(shared_datasets / "skab", ("valve1",))[0]
    x = f.select(m.signal_names)
    _, wins = feed(window_set(m.signal_names, 1.0, m.window, m.hop, 3), "a", f.ts, x)
    scores, dev = scorer.run(wins)
    assert dev is not None and dev.shape == (len(wins), len(m.output.feature_names))
    assert np.all((scores > 0) & (scores <= 1))  # 2^(-E[h]/c): scikit-learn's range
