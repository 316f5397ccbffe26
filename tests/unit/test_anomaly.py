"""PCA T²/Q as ONNX nodes, calibration through the alert rules, SKAB point-wise metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.alerts.rules import RuleSpec
from trainer.anomaly import build_anomaly_model, fit_pca, pca_graph
from trainer.anomaly_pipeline import quality_gate
from trainer.calibrate import (
    Counts,
    LabelledRun,
    calibrate_best_f1,
    calibrate_false_alarms,
    pointwise,
    run_rules,
)
from trainer.config import TrainingConfig, load_config
from trainer.features import build_feature_graph, compute_features, session
from trainer.quality import DataQualityError


def healthy(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 1, 16))
    x = np.concatenate([base, 2 * base + 0.1 * rng.normal(size=(n, 1, 16)),
                        rng.normal(5, 1, size=(n, 1, 16))], axis=1)
    return x.astype(np.float32)


def test_onnx_pca_matches_numpy_statistics_and_flags_broken_correlation() -> None:
    fm, _ = build_feature_graph(["a", "b", "c"], 16, ["mean", "std", "slope"])
    x = healthy(600)
    f = compute_features(fm, x)
    pca = fit_pca(f, variance=0.9, quantile=0.99)
    sess = session(pca_graph(pca).SerializeToString())
    score, t2, spe = sess.run(None, {"features": f})
    ref_t2, ref_spe = pca.statistics(f)
    np.testing.assert_allclose(t2, ref_t2 / pca.t2_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(spe, ref_spe / pca.spe_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(score, pca.score(f), rtol=1e-4, atol=1e-5)
    assert 0.95 <= float(np.mean(score <= 1.0)) <= 1.0  # 1 = the training 99th percentile
    # Signal b stops following a: no single value is extreme, the correlation breaks.
    bad = healthy(50, seed=1)
    bad[:, 1] = -2 * bad[:, 0]
    bad_score = sess.run(["score"], {"features": compute_features(fm, bad)})[0]
    assert np.median(bad_score) > 5 * np.quantile(score, 0.99)


def test_merged_bundle_graph_takes_raw_windows_and_explains_with_deviations() -> None:
    fm, names = build_feature_graph(["a", "b", "c"], 16, ["mean", "std"])
    x = healthy(400)
    f = compute_features(fm, x)
    pca = fit_pca(f)
    model = build_anomaly_model(fm, pca, f.mean(axis=0), f.std(axis=0))
    sess = session(model.SerializeToString())
    assert [o.name for o in sess.get_outputs()] == ["score", "t2", "spe", "deviations"]
    shifted = x[:5].copy()
    shifted[:, 2] += 10.0  # signal c's level jumps
    score, _, _, dev = sess.run(None, {"window": shifted})
    np.testing.assert_allclose(score, pca.score(compute_features(fm, shifted)), rtol=1e-4)
    assert {names[i] for i in np.abs(dev).argmax(axis=1)} == {"c:mean"}


def test_quantised_constant_features_get_a_finite_scale() -> None:
    f = np.zeros((100, 2))
    f[:, 0] = np.r_[np.zeros(98), 1.0, 1.0]  # IQR 0, as SKAB's pressure
    f[:, 1] = np.linspace(0, 1, 100)
    pca = fit_pca(f)
    assert np.all(np.isfinite(pca.score(f))) and pca.score(f[98:99])[0] < 1e6


def test_pointwise_prediction_is_the_state_after_the_last_ended_window() -> None:
    win_ts = np.array([2.0, 3.0, 4.0])
    active = np.array([False, True, False])
    assert pointwise(np.arange(6.0), win_ts, active).tolist() == \
        [False, False, False, True, False, False]


def test_skab_binary_metrics() -> None:
    c = Counts().add(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0]))
    m = c.metrics()
    assert m["f1"] == pytest.approx(1 / (1 + 1))
    assert m["far_pct"] == pytest.approx(50.0) and m["mar_pct"] == pytest.approx(50.0)


def test_false_alarm_calibration_honours_the_k_of_n_rule() -> None:
    rng = np.random.default_rng(3)
    ts = np.arange(20_000, dtype=float)
    runs = [(ts, rng.exponential(size=ts.size))]
    spec1 = RuleSpec(warning=1.0, k=1, n=1, clear_after=3)
    spec3 = RuleSpec(warning=1.0, k=3, n=5, clear_after=3)
    c1 = calibrate_false_alarms(spec1, runs, target_per_week=1.0, hop_s=60.0)
    c3 = calibrate_false_alarms(spec3, runs, target_per_week=1.0, hop_s=60.0)
    # 20k windows at one a minute ≈ 2 weeks: at most ~2 alarms allowed.
    for c in (c1, c3):
        assert c.expected_false_alarms_per_week is not None
        assert c.expected_false_alarms_per_week <= 1.0
        opened = run_rules(RuleSpec(warning=c.threshold, k=c.evidence["k"],
                                    n=c.evidence["n"]), *runs[0]).opened
        assert len(opened) == c.evidence["opened"]
    assert c3.threshold < c1.threshold  # debouncing lets a lower level keep the promise


def test_best_f1_calibration_finds_the_separating_level() -> None:
    rng = np.random.default_rng(4)
    ts = np.arange(400, dtype=float)
    y = (ts >= 200) & (ts < 300)
    scores = np.where(y, 5.0, 1.0) + 0.3 * rng.normal(size=ts.size)
    cal = calibrate_best_f1(RuleSpec(warning=1.0, k=1, n=1, clear_after=1),
                            [LabelledRun(ts, y, ts, scores)])
    assert scores[~y].max() <= cal.threshold < scores[y].min()
    assert cal.evidence["f1"] == 1.0 and cal.evidence["far_pct"] == 0.0


def _anomaly_config(tmp_path: Path, extra: str = "") -> TrainingConfig:
    base = Path(__file__).resolve().parents[2] / "trainer" / "configs" / "skab_pca.toml"
    p = tmp_path / "a.toml"
    p.write_text(base.read_text() + extra)
    return load_config(p)


def test_anomaly_quality_gate_refuses_a_stuck_signal_by_name(tmp_path: Path) -> None:
    cfg = _anomaly_config(tmp_path)
    sigs = cfg.data.signals
    rng = np.random.default_rng(0)
    series = rng.normal(size=(len(sigs), 600))
    series[1] = 3.0  # stuck
    ts = 1.6e9 + np.arange(600.0)
    with pytest.raises(DataQualityError, match=sigs[1]):
        quality_gate(cfg, "run", ts, series)
    allowed = _anomaly_config(tmp_path, f'\n[quality]\nallow = ["{sigs[1]}"]\n'
                                        f'[quality.ranges]\n{sigs[0]} = [-1.0, 1.0]\n')
    report = quality_gate(allowed, "run", ts, series)
    assert sigs[1] in report.allowed
    out = report.totals()[sigs[0]]["out_of_range"]
    assert out == int((np.abs(series[0]) > 1.0).sum()) > 0
    # Leaving the gate at its defaults keeps the fingerprint JSON of older configs.
    assert '"quality"' not in cfg.canonical_json()
    assert '"quality"' in allowed.canonical_json()
