"""The ONNX feature graph against an independent numpy reference."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from trainer.features import (
    FEATURES,
    FeatureSpec,
    band_bases,
    build_feature_graph,
    compute_features,
    feature_names,
    reference_features,
)
from trainer.regimes import assign, find_centroids, fit_regimes, normalise

SIGNALS = ["a", "b", "c"]


def _windows(n: int = 64, window: int = 30, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Offsets like C-MAPSS (levels near 9000 with noise of a few units) plus trends.
    level = np.array([1.0, 640.0, 9046.0])[None, :, None]
    trend = rng.normal(0, 0.2, size=(n, len(SIGNALS), 1)) * np.arange(window)[None, None, :]
    noise = rng.normal(0, [0.5, 0.3, 5.0], size=(n, window, len(SIGNALS))).transpose(0, 2, 1)
    return (level + trend + noise).astype(np.float32)


BASIC = ["mean", "std", "min", "max", "slope", "last"]


@pytest.mark.parametrize("centre", [None, [0.5, 642.0, 9050.0]])
def test_graph_matches_numpy_reference(centre: list[float] | None) -> None:
    x = _windows()
    model, names = build_feature_graph(SIGNALS, 30, BASIC, last_n=5, centre=centre)
    got = compute_features(model, x)
    want = reference_features(x, BASIC, last_n=5, centre=centre)
    assert got.shape == (64, len(SIGNALS) * len(BASIC))
    assert got.dtype == np.float32
    # Slopes can be ~0: relative 1e-4 plus an absolute floor far below any signal's noise.
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # Computed in float64 and rounded once: bit-identical to the rounded reference.
    assert np.array_equal(got, want.astype(np.float32))
    assert names == feature_names(SIGNALS, BASIC)
    # The slope is the least-squares line's, as numpy fits it.
    slope = got[:, names.index("a:slope")]
    fitted = [np.polyfit(np.arange(30), w[0].astype(np.float64), 1)[0] for w in x]
    np.testing.assert_allclose(slope, fitted, rtol=1e-5, atol=1e-7)


def test_feature_values_on_a_known_window() -> None:
    # Signal a: 0, 2, 4, ..., 18 (slope 2); signal b: constant 7 except last sample 17.
    a = np.arange(10, dtype=np.float32) * 2
    b = np.full(10, 7.0, dtype=np.float32)
    b[-1] = 17.0
    model, names = build_feature_graph(["a", "b"], 10, BASIC, last_n=2)
    got = dict(zip(names, compute_features(model, np.stack([a, b])[None])[0], strict=True))
    assert got["a:mean"] == pytest.approx(9.0)
    assert got["a:slope"] == pytest.approx(2.0)
    assert got["a:min"] == 0.0 and got["a:max"] == 18.0
    assert got["a:last"] == pytest.approx(17.0)  # mean of 16 and 18
    assert got["a:std"] == pytest.approx(float(np.std(a)))
    assert got["b:last"] == pytest.approx(12.0)
    assert got["b:mean"] == pytest.approx(8.0)


def test_feature_order_and_subset() -> None:
    model, names = build_feature_graph(SIGNALS, 8, ["slope", "mean"])
    assert names == ["a:slope", "b:slope", "c:slope", "a:mean", "b:mean", "c:mean"]
    x = _windows(n=5, window=8)
    got = compute_features(model, x)
    np.testing.assert_allclose(got[:, 3:], x.astype(np.float64).mean(axis=2), rtol=1e-6)


def test_graph_interface() -> None:
    model, _ = build_feature_graph(SIGNALS, 30, BASIC)
    inp, out = model.graph.input[0], model.graph.output[0]
    assert inp.name == "window" and out.name == "features"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim][1:] == [3, 30]
    assert model.opset_import[0].version == 18
    # Any batch size, including one window.
    assert compute_features(model, _windows(n=1)).shape == (1, 18)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"features": ["wavelet"]}, "wavelet"),
        ({"features": []}, "non-empty"),
        ({"window": 1}, "window=1"),
        ({"features": ["last"], "last_n": 40}, "last_n=40"),
        ({"centre": [1.0]}, "centre has 1 values"),
    ],
)
def test_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"signals": SIGNALS, "window": 30, "features": ["mean"]}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        build_feature_graph(**args)  # type: ignore[arg-type]


def test_every_feature_matches_the_reference_with_centre() -> None:
    x = _windows(window=32)
    spec = FeatureSpec(list(FEATURES), last_n=4, ewm_halflife=6.0, n_bands=4)
    centre = [0.5, 642.0, 9050.0]
    model, names = build_feature_graph(SIGNALS, 32, spec, centre=centre)
    got = compute_features(model, x)
    want = reference_features(x, spec, centre=centre, signals=SIGNALS)
    assert got.shape == want.shape == (64, len(SIGNALS) * (len(FEATURES) - 1 + 4))
    assert names[-1] == "c:band3" and "b:kurtosis" in names
    # float64 inside, rounded once: equal to the rounded reference.
    assert np.array_equal(got, want.astype(np.float32))


def test_higher_moments_crest_and_bands_on_known_windows() -> None:
    t = np.arange(64)
    sine = np.sin(2 * np.pi * 8 * t / 64)            # one tone in bin 8 of 32
    spike = np.zeros(64)
    spike[10] = 8.0                                   # a single impact
    flat = np.full(64, 3.0)
    x = np.stack([sine, spike, flat])[None].astype(np.float32)
    spec = FeatureSpec(["rms", "p2p", "skew", "kurtosis", "crest", "bands"], n_bands=4)
    model, names = build_feature_graph(["sine", "spike", "flat"], 64, spec)
    got = dict(zip(names, compute_features(model, x)[0].astype(np.float64), strict=True))
    assert got["sine:rms"] == pytest.approx(np.sqrt(0.5), rel=1e-6)
    assert got["sine:crest"] == pytest.approx(np.sqrt(2.0), rel=1e-5)
    assert got["sine:p2p"] == pytest.approx(2.0, rel=1e-6)
    assert got["sine:kurtosis"] == pytest.approx(-1.5, abs=1e-5)  # a sine's excess kurtosis
    assert abs(got["sine:skew"]) < 1e-5
    # Bins 1..32 in four bands of 8: bin 8 is in band 0, all the power is there.
    assert got["sine:band0"] == pytest.approx(0.5, rel=1e-5)
    assert max(got[f"sine:band{j}"] for j in (1, 2, 3)) < 1e-9
    assert got["spike:skew"] == pytest.approx(scipy_skew(spike), rel=1e-5)
    assert got["spike:kurtosis"] == pytest.approx(scipy_kurtosis(spike), rel=1e-5)
    assert got["spike:crest"] == pytest.approx(8.0 / np.sqrt(64 / 64), rel=1e-5)
    # A flat window: skew, kurtosis are defined as 0, not NaN; no band power.
    assert got["flat:skew"] == 0.0 and got["flat:kurtosis"] == 0.0
    assert got["flat:crest"] == pytest.approx(1.0)
    assert all(got[f"flat:band{j}"] == 0.0 for j in range(4))


def scipy_skew(v: np.ndarray) -> float:
    c = v - v.mean()
    return float(np.mean(c**3) / np.mean(c**2) ** 1.5)


def scipy_kurtosis(v: np.ndarray) -> float:
    c = v - v.mean()
    return float(np.mean(c**4) / np.mean(c**2) ** 2 - 3.0)


def test_band_energies_sum_to_the_variance() -> None:
    x = _windows(window=50)
    for n_bands in (1, 3, 25):
        model, _names = build_feature_graph(SIGNALS, 50, FeatureSpec(["bands"], n_bands=n_bands))
        got = compute_features(model, x).astype(np.float64).reshape(64, n_bands, 3).sum(axis=1)
        np.testing.assert_allclose(got, x.astype(np.float64).var(axis=2), rtol=1e-5)
    _, _, band = band_bases(50, 3)
    assert band.shape == (25, 3) and (band > 0).sum(axis=0).tolist() == [9, 8, 8]


def test_features_per_signal() -> None:
    spec = FeatureSpec(["mean", "slope"], per_signal={"c": ["rms", "bands"]}, n_bands=2)
    model, names = build_feature_graph(SIGNALS, 30, spec)
    assert names == ["a:mean", "b:mean", "a:slope", "b:slope", "c:rms", "c:band0", "c:band1"]
    x = _windows()
    got = compute_features(model, x)
    want = reference_features(x, spec, signals=SIGNALS)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match=r"per_signal names \['zz'\]"):
        build_feature_graph(SIGNALS, 30, FeatureSpec(["mean"], per_signal={"zz": ["rms"]}))


def _regime_data(n: int = 3000, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Two sensors whose level depends on one of three set points (+ setting noise)."""
    rng = np.random.default_rng(seed)
    point = rng.choice([0.0, 10.0, 25.0], size=n)
    setting = point + rng.normal(0, 0.002, n)
    sensors = np.stack([500 + 4 * point, 40 - point]) + rng.normal(0, [[0.5], [0.2]], (2, n))
    return sensors, setting[None]


def test_regime_centroids_and_nearest_assignment() -> None:
    sensors, setting = _regime_data()
    cent = find_centroids(setting.T, [0])
    np.testing.assert_allclose(cent.ravel(), [0.0, 10.0, 25.0], atol=1e-3)
    assert assign(np.array([[9.2], [17.0], [18.0], [-3.0]]), cent, np.ones(1)).tolist() == \
        [1, 1, 2, 0]
    reg = fit_regimes(["a", "b"], ["op"], sensors, setting, [0])
    # Within each regime the standardised sensors are ~N(0, 1).
    z = normalise(reg, np.concatenate([sensors, setting])[None])[0]
    assert np.all(np.abs(z.mean(axis=1)) < 1e-3) and np.allclose(z.std(axis=1), 1, atol=1e-3)


def test_regime_normalisation_in_the_graph_matches_numpy() -> None:
    sensors, setting = _regime_data()
    reg = fit_regimes(["a", "b"], ["op"], sensors, setting, [0])
    # Windows of 30 that mix regimes sample by sample, as the flight conditions do.
    x = np.concatenate([sensors, setting])[:, :2970].reshape(3, 99, 30).transpose(1, 0, 2)
    x = x.astype(np.float32)
    model, _names = build_feature_graph(["a", "b"], 30, ["mean", "std", "last"], regime=reg)
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:] == [3, 30]
    got = compute_features(model, x)
    want = reference_features(normalise(reg, x), ["mean", "std", "last"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # The raw levels differ by ~100 between regimes; standardised, nothing of that is left.
    assert np.all(np.abs(got[:, :2]) < 1.0)
    with pytest.raises(ValueError, match="regime sensors"):
        build_feature_graph(["b", "a"], 30, ["mean"], regime=reg)
