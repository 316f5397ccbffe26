"""Template bundles: per-asset parameters score exactly as a bundle fit on the asset's data."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from edge.core.errors import BundleError
from edge.models.bundle import Bundle, Manifest
from edge.models.infer import Scorer, TemplateScorer, scorer_for
from edge.models.template import probe_params, read_params, write_params
from edge.scoring.window import ReadyWindow
from trainer.anomaly import build_anomaly_model, fit_pca
from trainer.export import self_test_cases
from trainer.features import build_feature_graph, compute_features, session
from trainer.template import (
    feature_model_of,
    fit_params,
    param_specs,
    run_template,
    template_graph,
)

SIGNALS = ["a", "b", "c"]
WINDOW = 8


def _windows(seed: int, n: int, coupling: float) -> np.ndarray:
    """Windows of three signals, c following a with the given coupling (level with it)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(10 * coupling, 1.0, (n, 1, WINDOW))
    b = rng.normal(-3, 0.5, (n, 1, WINDOW))
    c = coupling * a + rng.normal(0, 0.1, (n, 1, WINDOW))
    return np.concatenate([a, b, c], axis=1).astype(np.float32)


def _graphs() -> tuple[object, object, int]:
    feat, names = build_feature_graph(SIGNALS, WINDOW, ["mean", "std", "slope", "last"],
                                      last_n=3)
    return feat, template_graph(feat, len(names)), len(names)


def test_template_with_an_assets_params_equals_the_bundle_fit_on_its_data() -> None:
    feat, tpl, n_feat = _graphs()
    tsess, fsess = session(tpl), session(feature_model_of(tpl.SerializeToString()))
    for seed, coupling in ((1, 2.0), (2, -1.0)):  # two assets, two different normals
        train, test = _windows(seed, 300, coupling), _windows(seed + 10, 50, coupling)
        f_train = compute_features(session(feat), train)
        # The template's own feature subgraph computes the same features.
        assert np.array_equal(compute_features(fsess, train), f_train)
        mean, std = f_train.mean(axis=0, dtype=np.float64), f_train.std(axis=0, dtype=np.float64)
        full = session(build_anomaly_model(feat, fit_pca(f_train), mean, std))
        want_s, _, _, want_d = full.run(None, {"window": test})
        params, pca = fit_params(f_train, 0.9, 0.99)
        got_s, got_d = run_template(tsess, test, params)
        assert np.array_equal(got_s, want_s.astype(np.float64))
        assert np.array_equal(got_d, want_d)
        assert params["proj"].shape == (n_feat, 2 * n_feat)
        assert pca.n_components < n_feat  # the zero-padded T² columns are in play


def _template_bundle(tmp: Path) -> tuple[Bundle, dict[str, dict[str, np.ndarray]]]:
    feat, tpl, n_feat = _graphs()
    specs = param_specs(n_feat)
    raw = tpl.SerializeToString()
    st = _windows(1, 3, 2.0)
    expected = run_template(session(tpl), st, probe_params(specs))[0]
    params = {}
    for asset, seed, coupling in (("m1", 1, 2.0), ("m2", 2, -1.0)):
        params[asset] = fit_params(compute_features(session(feat), _windows(seed, 300,
                                                                              coupling)),
                                   0.9, 0.99)[0]
    m = Manifest.model_validate({
        "schema_version": 2, "name": "tpl", "version": "1", "kind": "template",
        "commissioning": {"rows": 100, "pca": {"variance": 0.9, "quantile": 0.99},
                          "params": [s.model_dump() for s in specs]},
        "signals": [{"name": s} for s in SIGNALS], "sample_period_s": 1.0,
        "window": WINDOW, "hop": 1,
        "output": {"kind": "anomaly", "score_output": "score", "alert_when": "above",
                   "deviations_output": "deviations"},
        "thresholds": {"warning": 3.0}, "model_sha256": hashlib.sha256(raw).hexdigest(),
        "self_test": [c.model_dump() for c in self_test_cases(st, expected)]})
    return Bundle(tmp, m, raw, None), params


def test_template_scorer_scores_assets_with_params_and_hands_back_the_others(
        tmp_path: Path) -> None:
    bundle, params = _template_bundle(tmp_path)
    unscored: list[ReadyWindow] = []
    scorer = TemplateScorer(bundle, on_unscored=unscored.extend)  # self-test passes
    assert isinstance(scorer_for(bundle), TemplateScorer)
    scorer.set_params({"m1": params["m1"], "m2": params["m2"]})
    x1, x2 = _windows(21, 5, 2.0), _windows(22, 5, -1.0)
    wins = [ReadyWindow(a, float(i), x[i]) for i in range(5)
            for a, x in (("m1", x1), ("m2", x2), ("new", x1))]
    out = scorer.score(wins, batch_max=4)
    assert [w.asset for w in out] == [w.asset for w in wins if w.asset != "new"]
    assert [w.asset for w in unscored] == ["new"] * 5
    tsess = session(bundle.model_bytes)
    for asset, x in (("m1", x1), ("m2", x2)):
        want = run_template(tsess, x, params[asset])[0]
        got = [w.score for w in out if w.asset == asset]
        assert np.allclose(got, want, rtol=1e-6)
    # Each asset against its own normal: m2's windows under m1's parameters look anomalous.
    alien = run_template(tsess, x2, params["m1"])[0]
    assert alien.min() > 10 * max(w.score for w in out if w.asset == "m2")


def test_a_template_is_refused_when_its_graph_or_manifest_disagree(tmp_path: Path) -> None:
    bundle, _ = _template_bundle(tmp_path)
    wrong = bundle.manifest.model_copy(update={"self_test": [
        bundle.manifest.self_test[0].model_copy(update={"expected": 123.0})]})
    with pytest.raises(BundleError, match="self-test case 0"):
        Scorer(Bundle(tmp_path, wrong, bundle.model_bytes, None))
    assert bundle.manifest.commissioning is not None
    spec = bundle.manifest.commissioning.params[0].model_copy(update={"shape": [5]})
    other = bundle.manifest.commissioning.model_copy(update={"params": [
        spec, *bundle.manifest.commissioning.params[1:]]})
    with pytest.raises(BundleError, match="param_centre"):
        Scorer(Bundle(tmp_path, bundle.manifest.model_copy(update={"commissioning": other}),
                      bundle.model_bytes, None))
    with pytest.raises(ValueError, match="commissioning"):
        Manifest.model_validate({**bundle.manifest.model_dump(), "commissioning": None})


def test_params_file_round_trip_and_refusals(tmp_path: Path) -> None:
    specs = param_specs(4)
    p = probe_params(specs)
    write_params(tmp_path / "a.npz", p)
    write_params(tmp_path / "b.npz", p)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    back = read_params(tmp_path / "a.npz", specs)
    assert all(np.array_equal(back[k], p[k]) for k in p)
    bad = dict(p, centre=np.full(4, np.nan))
    write_params(tmp_path / "nan.npz", bad)
    with pytest.raises(BundleError, match=r"nan\.npz: parameter 'centre' holds non-finite"):
        read_params(tmp_path / "nan.npz", specs)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match=r"junk\.npz: not a readable parameters file"):
        read_params(tmp_path / "junk.npz", specs)
