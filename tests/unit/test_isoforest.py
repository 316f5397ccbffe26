"""IsolationForest as one TreeEnsemble node: parity with scikit-learn, bundle, graph size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from edge.core.errors import ConfigError
from edge.models.infer import Scorer
from trainer.anomaly_pipeline import fit_bundle
from trainer.config import TrainingConfig, load_config
from trainer.export import _with_deviations
from trainer.families.isoforest import IsoForestSection
from trainer.families.pca import PcaSection
from trainer.features import build_feature_graph, compute_features, session
from trainer.isoforest import average_path_length, build_isoforest_model, fit_isoforest

SIGNALS = ["a", "b", "c"]
WINDOW = 16
REPO = Path(__file__).resolve().parents[2]


def healthy(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 1, WINDOW))
    x = np.concatenate([base, 2 * base + 0.1 * rng.normal(size=(n, 1, WINDOW)),
                        np.round(rng.normal(5, 1, size=(n, 1, WINDOW)))], axis=1)
    return x.astype(np.float32)


def faulty(n: int, seed: int) -> np.ndarray:
    x = healthy(n, seed)
    x[: n // 2, 1] = -2 * x[: n // 2, 0]  # b stops following a
    x[n // 2:, 2] += 3.0  # c's level jumps
    return x


def config(method: str = "false_alarm_rate", **model: object) -> TrainingConfig:
    return TrainingConfig.model_validate({
        "bundle": {"name": "iso-test"},
        "data": {"signals": SIGNALS},
        "window": {"length": WINDOW, "hop": 1},
        "features": {"names": ["mean", "std", "min", "max", "slope"]},
        "model": {"family": "isoforest", "n_estimators": 50, "seed": 3, **model},
        "alerts": {"k": 1, "n": 1, "clear_after": 1},
        "calibration": {"method": method, "threshold": 0.6,
                        # 3000 one-second windows are 0.005 weeks: ~10 alarms allowed.
                        "alarms_per_week": 2000.0},
    })


def test_average_path_length_is_scikit_learns() -> None:
    from sklearn.ensemble._iforest import _average_path_length

    n = np.array([0, 1, 2, 3, 4, 17, 256, 10_000])
    np.testing.assert_allclose(average_path_length(n), _average_path_length(n), rtol=1e-15)


@pytest.mark.parametrize("max_features", [1.0, 0.4])
def test_onnx_score_equals_sklearn_and_labels_agree_at_the_calibrated_threshold(
        max_features: float) -> None:
    cfg = config(max_features=max_features)
    train, val, test = healthy(1500), healthy(3000, seed=1), faulty(400, seed=2)
    ts = np.arange(len(val), dtype=np.float64)
    fitted, model, _ = fit_bundle(cfg, train, train[:, :, 0].T, healthy_val=[(ts, val)])
    sess = session(model.SerializeToString())
    fm, _ = build_feature_graph(SIGNALS, WINDOW, cfg.features.names)
    f_train = compute_features(fm, train)
    # The pipeline's forest, refit from the same rows and seed: the same trees.
    iso = fit_isoforest(f_train, n_estimators=50, max_features=max_features, seed=3)
    rows = np.concatenate([val, test])
    f_rows = compute_features(fm, rows)
    onnx_score = sess.run(["score"], {"window": rows})[0]
    ref = -iso.forest.score_samples(iso.scaled(f_rows))
    np.testing.assert_allclose(onnx_score, ref, rtol=0, atol=1e-5)
    thr = fitted.bundle.manifest.thresholds.warning
    assert thr == fitted.calibration.threshold and 0.3 < thr < 1.0
    assert 0 < np.count_nonzero(ref > thr) < len(ref)  # rows on both sides of the level
    np.testing.assert_array_equal(onnx_score > thr, ref > thr)
    # The level jump scores above held-out healthy rows (the correlation break of the
    # first half barely does: axis-parallel splits do not see it, PCA's Q does).
    jump = onnx_score[len(val) + len(test) // 2:]
    assert np.median(jump) > np.quantile(onnx_score[:len(val)], 0.9)
    if max_features < 1:  # trees index feature subsets: mapped back, or parity fails
        assert len(iso.forest.estimators_features_[0]) < f_train.shape[1]


def test_bundle_passes_the_agents_self_test_and_records_the_family() -> None:
    train = healthy(600)
    fitted, _, _ = fit_bundle(config("fixed"), train, train[:, :, 0].T)
    m = fitted.bundle.manifest
    assert m.lineage["model_family"] == "isoforest"
    assert m.lineage["config"]["model"]["family"] == "isoforest"
    assert m.metrics["isoforest_trees"] == 50 and m.metrics["isoforest_max_samples"] == 256
    assert m.output.deviations_output == "deviations" and len(m.self_test) == 4
    scorer = Scorer(fitted.bundle)  # raises unless every self-test window matches
    shifted = train[:8].copy()
    shifted[:, 2] += 10.0
    scores, dev = scorer.run(shifted)
    assert dev is not None and np.min(scores) > np.median(fitted.train_scores)
    assert {m.output.feature_names[i].split(":")[0]
            for i in np.abs(dev).argmax(axis=1)} == {"c"}


def test_the_forest_is_one_tree_ensemble_node_plus_a_few_arithmetic_nodes() -> None:
    fm, _ = build_feature_graph(SIGNALS, WINDOW, ["mean", "std", "slope"])
    f = compute_features(fm, healthy(800))
    iso = fit_isoforest(f, n_estimators=100, seed=0)
    model = build_isoforest_model(fm, iso, f.mean(axis=0), f.std(axis=0))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("TreeEnsemble") == 1
    assert [n.domain for n in model.graph.node].count("ai.onnx.ml") == 1
    feature_part = len(_with_deviations(fm, f.mean(axis=0), f.std(axis=0)).graph.node)
    assert len(ops) - feature_part <= 16, ops[feature_part:]
    tree = next(n for n in model.graph.node if n.op_type == "TreeEnsemble")
    roots = next(a for a in tree.attribute if a.name == "tree_roots")
    assert len(roots.ints) == 100


def test_config_selects_the_family() -> None:
    iso = load_config(REPO / "trainer" / "configs" / "skab_isoforest.toml")
    pca = load_config(REPO / "trainer" / "configs" / "skab_pca.toml")
    assert isinstance(iso.model, IsoForestSection) and isinstance(pca.model, PcaSection)
    assert iso.data.signals == pca.data.signals and iso.features == pca.features
    # One default family for every entry point: a [model] without family is
    # gradient_boosting, so PCA's keys there are refused by name.
    with pytest.raises(ValidationError, match=r"model\.gradient_boosting\.variance"):
        TrainingConfig.model_validate(
            {"bundle": {"name": "x"}, "data": {"signals": ["a"]}, "model": {"variance": 0.8}})


def test_bad_isoforest_setting_names_file_and_field(tmp_path: Path) -> None:
    text = (REPO / "trainer" / "configs" / "skab_isoforest.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace('max_samples = "auto"', "max_samples = 1"))
    with pytest.raises(ConfigError, match=r"bad\.toml.*max_samples"):
        load_config(bad)
    bad.write_text(text.replace("n_estimators = 100", "n_estimators = 100\nvariance = 0.9"))
    with pytest.raises(ConfigError, match=r"bad\.toml.*variance"):
        load_config(bad)
