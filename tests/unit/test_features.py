"""The ONNX feature graph against an independent numpy reference."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from trainer.features import (
    FEATURES,
    build_feature_graph,
    compute_features,
    feature_names,
    reference_features,
)

SIGNALS = ["a", "b", "c"]


def _windows(n: int = 64, window: int = 30, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Offsets like C-MAPSS (levels near 9000 with noise of a few units) plus trends.
    level = np.array([1.0, 640.0, 9046.0])[None, :, None]
    trend = rng.normal(0, 0.2, size=(n, len(SIGNALS), 1)) * np.arange(window)[None, None, :]
    noise = rng.normal(0, [0.5, 0.3, 5.0], size=(n, window, len(SIGNALS))).transpose(0, 2, 1)
    return (level + trend + noise).astype(np.float32)


@pytest.mark.parametrize("centre", [None, [0.5, 642.0, 9050.0]])
def test_graph_matches_numpy_reference(centre: list[float] | None) -> None:
    x = _windows()
    model, names = build_feature_graph(SIGNALS, 30, list(FEATURES), last_n=5, centre=centre)
    got = compute_features(model, x)
    want = reference_features(x, list(FEATURES), last_n=5, centre=centre)
    assert got.shape == (64, len(SIGNALS) * len(FEATURES))
    assert got.dtype == np.float32
    # Slopes can be ~0: relative 1e-4 plus an absolute floor far below any signal's noise.
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # Computed in float64 and rounded once: bit-identical to the rounded reference.
    assert np.array_equal(got, want.astype(np.float32))
    assert names == feature_names(SIGNALS, list(FEATURES))
    # The slope is the least-squares line's, as numpy fits it.
    slope = got[:, names.index("a:slope")]
    fitted = [np.polyfit(np.arange(30), w[0].astype(np.float64), 1)[0] for w in x]
    np.testing.assert_allclose(slope, fitted, rtol=1e-5, atol=1e-7)


def test_feature_values_on_a_known_window() -> None:
    # Signal a: 0, 2, 4, ..., 18 (slope 2); signal b: constant 7 except last sample 17.
    a = np.arange(10, dtype=np.float32) * 2
    b = np.full(10, 7.0, dtype=np.float32)
    b[-1] = 17.0
    model, names = build_feature_graph(["a", "b"], 10, list(FEATURES), last_n=2)
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
    model, _ = build_feature_graph(SIGNALS, 30, list(FEATURES))
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
        ({"features": ["kurtosis"]}, "kurtosis"),
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
