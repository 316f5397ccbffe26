"""The ONNX feature graph: raw window ``[batch, inputs, window]`` -> ``[batch, F]``.

The same graph computes the training features (through onnxruntime, see
:func:`compute_features`) and runs inside every bundle's ``model.onnx``, so
training and serving cannot disagree. :func:`reference_features` is an
independent numpy (float64) implementation the tests hold the graph to.

Features, each per signal, in the output order ``for feature: for signal``:

- ``mean``, ``std`` (population), ``min``, ``max``, ``p2p`` (max - min)
- ``rms``: root mean square of the (levelled) signal
- ``skew``, ``kurtosis`` (excess, Fisher); 0 for a flat window
- ``crest``: max |x| / rms; 0 for an all-zero window
- ``slope``: least-squares slope per sample over the window
- ``last``: mean of the last ``last_n`` samples, a de-noised current level
- ``ewm``: exponentially weighted level (half-life ``ewm_halflife`` samples)
- ``bands``: ``n_bands`` spectral band energies by a DFT in the graph (MatMul
  against constant cos/sin bases); band ``j`` holds the one-sided power of an
  equal share of the bins 1..window/2, scaled so the bands sum to the variance

Each signal may get its own feature list (``per_signal``); levels are first
taken relative to a constant per signal (``centre``) or standardised per
operating regime (``regime``, see :mod:`trainer.regimes`), both inside the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from trainer.regimes import RegimeNorm, regime_nodes

OPSET = 18  # ReduceMean/ReduceMin/ReduceMax take ``axes`` as an input from 18 on
FEATURES = ("mean", "std", "min", "max", "slope", "last", "rms", "p2p", "skew", "kurtosis",
            "crest", "ewm", "bands")
INPUT_NAME = "window"
OUTPUT_NAME = "features"
_TINY = 1e-20  # a window with a smaller second moment counts as flat


@dataclass(frozen=True)
class FeatureSpec:
    """What to compute; ``per_signal`` overrides ``features`` for the signals it names."""

    features: list[str]
    last_n: int = 5
    ewm_halflife: float = 10.0
    n_bands: int = 4
    per_signal: dict[str, list[str]] = field(default_factory=dict)

    def of(self, signal: str) -> list[str]:
        return self.per_signal.get(signal, self.features)


def _columns(signals: list[str], spec: FeatureSpec) -> list[tuple[str, str, int]]:
    """(feature, signal, band) of each output column, ``for feature: for signal``."""
    cols = []
    for f in FEATURES:
        if not any(f in spec.of(s) for s in signals):
            continue
        for b in range(spec.n_bands if f == "bands" else 1):
            cols += [(f, s, b) for s in signals if f in spec.of(s)]
    return cols


def _name(f: str, s: str, b: int) -> str:
    return f"{s}:band{b}" if f == "bands" else f"{s}:{f}"


def feature_names(signals: list[str], features: list[str] | FeatureSpec) -> list[str]:
    spec = features if isinstance(features, FeatureSpec) else FeatureSpec(list(features))
    if not any(spec.per_signal) and "bands" not in spec.features:
        # The historical order: the features as listed, each for every signal.
        return [f"{s}:{f}" for f in spec.features for s in signals]
    return [_name(*c) for c in _columns(signals, spec)]


def _check(signals: list[str], window: int, spec: FeatureSpec) -> None:
    for owner, feats in [("features", spec.features), *spec.per_signal.items()]:
        unknown = [f for f in feats if f not in FEATURES]
        if unknown:
            raise ValueError(f"{owner}={unknown}: unknown; available: {', '.join(FEATURES)}")
        if len(set(feats)) != len(feats) or not feats:
            raise ValueError(f"{owner}={feats}: must be non-empty and without duplicates")
    if not signals or len(set(signals)) != len(signals):
        raise ValueError(f"signals={signals}: must be non-empty and without duplicates")
    stray = sorted(set(spec.per_signal) - set(signals))
    if stray:
        raise ValueError(f"per_signal names {stray}, which are not among signals={signals}")
    if window < 2:
        raise ValueError(f"window={window}: a slope needs at least 2 samples")
    used = {f for s in signals for f in spec.of(s)}
    if "last" in used and not 1 <= spec.last_n <= window:
        raise ValueError(f"last_n={spec.last_n}: must be between 1 and window={window}")
    if "bands" in used and not 1 <= spec.n_bands <= window // 2:
        raise ValueError(f"n_bands={spec.n_bands}: must be between 1 and window/2={window // 2}")
    if spec.ewm_halflife <= 0:
        raise ValueError(f"ewm_halflife={spec.ewm_halflife}: must be > 0")


def ewm_weights(window: int, halflife: float) -> np.ndarray:
    w = 0.5 ** ((window - 1 - np.arange(window, dtype=np.float64)) / halflife)
    out: np.ndarray = w / w.sum()
    return out


def band_bases(window: int, n_bands: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cos and sin bases ``[window, K]`` for bins 1..window//2 and the band matrix ``[K, n]``
    (one-sided power scaling folded in, so the bands sum to the population variance)."""
    k = np.arange(1, window // 2 + 1, dtype=np.float64)
    ang = 2.0 * np.pi * np.outer(np.arange(window, dtype=np.float64), k) / window
    scale = np.where(2 * k == window, 1.0, 2.0) / float(window) ** 2
    band = np.zeros((k.size, n_bands))
    for j, idx in enumerate(np.array_split(np.arange(k.size), n_bands)):
        band[idx, j] = scale[idx]
    return np.cos(ang), np.sin(ang), band


def band_edges_hz(window: int, n_bands: int, sample_period_s: float) -> list[list[float]]:
    """[low, high] frequency (Hz) of each band, for the manifest's lineage."""
    k = np.arange(1, window // 2 + 1)
    return [[float(k[i[0]] / (window * sample_period_s)),
             float(k[i[-1]] / (window * sample_period_s))]
            for i in np.array_split(np.arange(k.size), n_bands)]


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))


def _node(op: str, ins: list[str], out: str, **kw: Any) -> onnx.NodeProto:
    return helper.make_node(op, ins, [out], **kw)


def _feature_nodes(f: str, x: str, window: int, spec: FeatureSpec, n_sig: int
                   ) -> list[onnx.NodeProto]:
    """Nodes computing ``feat_<f>`` ``[batch, signals]`` (bands: ``[batch, n*signals]``)."""
    out, ax = f"feat_{f}", "axis_time"
    if f == "mean":
        return [_node("Squeeze", ["mean_k", ax], out)]
    if f == "std":
        return [_node("Sqrt", ["m2"], out)]
    if f in ("min", "max"):
        return [_node("ReduceMin" if f == "min" else "ReduceMax", [x, ax], out, keepdims=0)]
    if f == "p2p":
        return [_node("Sub", ["feat_max_", "feat_min_"], out)]
    if f == "rms":
        return [_node("Sqrt", ["sq_mean"], out)]
    if f in ("skew", "kurtosis"):
        m, other = ("m3", "centred") if f == "skew" else ("m4", "m2_el")
        return [_node("Mul", ["m2_el", other], f"{m}_el"),
                _node("ReduceMean", [f"{m}_el", ax], m, keepdims=0),
                _node("Div", [m, f"{m}_den"], f"{f}_ratio"),
                *([_node("Sub", [f"{f}_ratio", "three"], f"{f}_raw")] if f == "kurtosis"
                  else [_node("Identity", [f"{f}_ratio"], f"{f}_raw")]),
                _node("Where", ["flat", "zero", f"{f}_raw"], out)]
    if f == "crest":
        return [_node("Abs", [x], "absx"), _node("ReduceMax", ["absx", ax], "peak", keepdims=0),
                _node("Sqrt", ["sq_mean"], "rms_c"), _node("Max", ["rms_c", "tiny"], "rms_safe"),
                _node("Div", ["peak", "rms_safe"], "crest_raw"),
                _node("Less", ["sq_mean", "tiny"], "silent"),
                _node("Where", ["silent", "zero", "crest_raw"], out)]
    if f == "slope":
        t = np.arange(window, dtype=np.float64)
        t -= t.mean()
        # The centred time vector over its sum of squares makes the slope one MatMul;
        # on centred values, since sum(t * x) on raw levels of ~9000 cancels badly.
        return [_const("slope_vec", (t / np.sum(t * t)).reshape(window, 1)),
                _node("MatMul", ["centred", "slope_vec"], "slope_k"),
                _node("Squeeze", ["slope_k", ax], out)]
    if f == "last":
        return [_const("last_start", np.array([window - spec.last_n], dtype=np.int64)),
                _const("last_end", np.array([window], dtype=np.int64)),
                _node("Slice", [x, "last_start", "last_end", ax], "tail"),
                _node("ReduceMean", ["tail", ax], out, keepdims=0)]
    if f == "ewm":
        return [_const("ewm_vec", ewm_weights(window, spec.ewm_halflife).reshape(window, 1)),
                _node("MatMul", [x, "ewm_vec"], "ewm_k"), _node("Squeeze", ["ewm_k", ax], out)]
    if f == "bands":
        cos, sin, band = band_bases(window, spec.n_bands)
        return [_const("dft_cos", cos), _const("dft_sin", sin), _const("band_mat", band),
                _node("MatMul", ["centred", "dft_cos"], "dft_re"),
                _node("MatMul", ["centred", "dft_sin"], "dft_im"),
                _node("Mul", ["dft_re", "dft_re"], "pow_re"),
                _node("Mul", ["dft_im", "dft_im"], "pow_im"),
                _node("Add", ["pow_re", "pow_im"], "power"),
                _node("MatMul", ["power", "band_mat"], "band_e"),  # [b, S, n]
                _node("Transpose", ["band_e"], "band_t", perm=[0, 2, 1]),
                _const("band_shape", np.array([0, spec.n_bands * n_sig], dtype=np.int64)),
                _node("Reshape", ["band_t", "band_shape"], out)]
    raise ValueError(f"feature {f!r}: unknown")


def _shared_nodes(used: set[str], x: str) -> list[onnx.NodeProto]:
    ax = "axis_time"
    nodes = [_node("ReduceMean", [x, ax], "mean_k", keepdims=1), _node("Sub", [x, "mean_k"],
                                                                       "centred")]
    if used & {"std", "skew", "kurtosis"}:
        nodes += [_node("Mul", ["centred", "centred"], "m2_el"),
                  _node("ReduceMean", ["m2_el", ax], "m2", keepdims=0)]
    if used & {"rms", "crest"}:
        nodes += [_node("Mul", [x, x], "sq"), _node("ReduceMean", ["sq", ax], "sq_mean",
                                                      keepdims=0)]
    if used & {"skew", "kurtosis", "crest"}:
        nodes += [_const("tiny", np.array(_TINY)), _const("zero", np.array(0.0))]
    if used & {"skew", "kurtosis"}:
        # Moments over max(m2, tiny); a flat window's ratios are defined as 0 by Where.
        nodes += [_const("three", np.array(3.0)), _node("Less", ["m2", "tiny"], "flat"),
                  _node("Max", ["m2", "tiny"], "m2_safe"), _node("Sqrt", ["m2_safe"], "sd_safe"),
                  _node("Mul", ["m2_safe", "sd_safe"], "m3_den"),
                  _node("Mul", ["m2_safe", "m2_safe"], "m4_den")]
    if "p2p" in used:
        nodes += [_node("ReduceMax", [x, ax], "feat_max_", keepdims=0),
                  _node("ReduceMin", [x, ax], "feat_min_", keepdims=0)]
    return nodes


def _levelled(signals: list[str], centre: list[float] | None, regime: RegimeNorm | None
              ) -> tuple[list[onnx.NodeProto], str]:
    """The window in float64, levelled by regime or by ``centre``; the nodes and the
    name of the tensor the features read."""
    nodes = [_const("axis_time", np.array([2], dtype=np.int64)),
             helper.make_node("Cast", [INPUT_NAME], ["raw64"], to=TensorProto.DOUBLE)]
    if regime is not None:
        return [*nodes, *regime_nodes(regime, "raw64", "normed")], "normed"
    if centre is not None:
        level = np.asarray(centre, dtype=np.float64).reshape(len(signals), 1)
        sub = helper.make_node("Sub", ["raw64", "centre"], ["levelled"])
        return [*nodes, _const("centre", level), sub], "levelled"
    return nodes, "raw64"


def _joined(signals: list[str], spec: FeatureSpec, used: list[str], names: list[str]
             ) -> list[onnx.NodeProto]:
    """Every feature's columns joined into ``features64``, in the order of ``names``."""
    uniform = not any(spec.per_signal) and "bands" not in spec.features
    order = spec.features if uniform else used
    full = [_name(f, s, b) for f in order
            for b in range(spec.n_bands if f == "bands" else 1) for s in signals]
    if full == names:
        return [helper.make_node("Concat", [f"feat_{f}" for f in order], ["features64"],
                                 axis=1)]
    # Per-signal lists: every feature ran on every signal; keep the wanted columns.
    pick = np.array([full.index(n) for n in names], dtype=np.int64)
    return [helper.make_node("Concat", [f"feat_{f}" for f in order], ["all64"], axis=1),
            _const("pick", pick),
            helper.make_node("Gather", ["all64", "pick"], ["features64"], axis=1)]


def build_feature_graph(
    signals: list[str],
    window: int,
    features: list[str] | FeatureSpec,
    *,
    last_n: int = 5,
    centre: list[float] | None = None,
    regime: RegimeNorm | None = None,
) -> tuple[onnx.ModelProto, list[str]]:
    """Build the feature graph for ``signals`` x ``window`` samples.

    Returns the model (input ``window`` float32 ``[batch, inputs, window]``,
    output ``features`` float32 ``[batch, F]``) and the ``"<signal>:<feature>"``
    name of each output column. Without ``regime`` the inputs are ``signals``;
    with it, they are ``regime.inputs`` (sensors and operating settings), and
    ``signals`` must equal ``regime.sensors``.

    The graph computes in float64 and rounds once at the end. Why: tree splits
    sit between neighbouring training values, and C-MAPSS readings are on a
    0.01 grid, so a feature off by one float32 step from another implementation
    (numpy, a different onnxruntime build) lands on the other side of a split
    for about 1 window in 1000. Rounded once from float64, both sides agree.

    ``centre`` (one level per signal) is subtracted first, so level features
    (mean, min, max, last) are relative to it: a mean of readings near 9000 has
    a float32 spacing of ~0.001, coarser than its 0.01/30 grid, while centred
    values keep the detail.
    """
    spec = features if isinstance(features, FeatureSpec) else FeatureSpec(
        list(features), last_n=last_n)
    _check(signals, window, spec)
    if centre is not None and len(centre) != len(signals):
        raise ValueError(f"centre has {len(centre)} values for {len(signals)} signals")
    if regime is not None and list(regime.sensors) != list(signals):
        raise ValueError(f"regime sensors {regime.sensors} differ from signals {signals}")
    n_in = len(regime.inputs) if regime is not None else len(signals)
    nodes, x = _levelled(signals, centre, regime)
    used = [f for f in FEATURES if any(f in spec.of(s) for s in signals)]
    nodes += _shared_nodes(set(used), x)
    for f in used:
        nodes += _feature_nodes(f, x, window, spec, len(signals))
    names = feature_names(signals, spec)
    nodes += _joined(signals, spec, used, names)
    nodes.append(helper.make_node("Cast", ["features64"], [OUTPUT_NAME], to=TensorProto.FLOAT))
    graph = helper.make_graph(
        nodes, "forewarn_features",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", n_in, window])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", len(names)])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="forewarn.trainer"
    )
    onnx.checker.check_model(model, full_check=True)
    return model, names


def session(model: onnx.ModelProto | bytes) -> ort.InferenceSession:
    """A single-threaded CPU session: deterministic, and cheap on a shared gateway."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    raw = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(raw, sess_options=opts, providers=["CPUExecutionProvider"])


def compute_features(
    model: onnx.ModelProto | ort.InferenceSession, windows: np.ndarray, batch: int = 4096
) -> np.ndarray:
    """Run the feature graph on ``windows [n, inputs, window]``; float32 ``[n, F]``."""
    sess = model if isinstance(model, ort.InferenceSession) else session(model)
    x = np.ascontiguousarray(windows, dtype=np.float32)
    parts = [sess.run([OUTPUT_NAME], {INPUT_NAME: x[i:i + batch]})[0]
             for i in range(0, x.shape[0], batch)]
    if not parts:
        n_feat = sess.get_outputs()[0].shape[1]
        return np.empty((0, n_feat), dtype=np.float32)
    return np.concatenate(parts)


def _reference_columns(x: np.ndarray, spec: FeatureSpec) -> dict[str, np.ndarray]:
    w = x.shape[2]
    t = np.arange(w, dtype=np.float64) - (w - 1) / 2.0
    c = x - x.mean(axis=2, keepdims=True)
    m2 = (c**2).mean(axis=2)
    flat = m2 < _TINY
    safe = np.maximum(m2, _TINY)
    sq = (x**2).mean(axis=2)
    cos, sin, band = band_bases(w, spec.n_bands)
    bands = ((c @ cos) ** 2 + (c @ sin) ** 2) @ band  # [n, S, bands]
    return {
        "mean": x.mean(axis=2), "std": np.sqrt(m2), "min": x.min(axis=2), "max": x.max(axis=2),
        # Closed form of the least-squares slope (the tests also hold it to polyfit).
        "slope": (c @ t) / np.sum(t * t),
        "last": x[:, :, w - spec.last_n:].mean(axis=2),
        "rms": np.sqrt(sq), "p2p": x.max(axis=2) - x.min(axis=2),
        "skew": np.where(flat, 0.0, (c**3).mean(axis=2) / (safe * np.sqrt(safe))),
        "kurtosis": np.where(flat, 0.0, (c**4).mean(axis=2) / safe**2 - 3.0),
        "crest": np.where(sq < _TINY, 0.0, np.abs(x).max(axis=2) / np.sqrt(np.maximum(sq, _TINY))),
        "ewm": x @ ewm_weights(w, spec.ewm_halflife),
        "bands": bands.transpose(0, 2, 1).reshape(x.shape[0], -1),
    }


def reference_features(
    windows: np.ndarray,
    features: list[str] | FeatureSpec,
    last_n: int = 5,
    centre: list[float] | None = None,
    signals: list[str] | None = None,
) -> np.ndarray:
    """Numpy float64 reference for the graph; same column order and centring.

    ``windows`` are the feature signals (regime normalisation already applied,
    see :func:`trainer.regimes.normalise`).
    """
    spec = features if isinstance(features, FeatureSpec) else FeatureSpec(
        list(features), last_n=last_n)
    x = np.asarray(windows, dtype=np.float64)
    if centre is not None:
        x = x - np.asarray(centre, dtype=np.float64)[None, :, None]
    sigs = signals or [f"x{i}" for i in range(x.shape[1])]
    cols = _reference_columns(x, spec)
    names = feature_names(sigs, spec)
    n_sig = len(sigs)
    out = []
    for n in names:
        s, f = n.rsplit(":", 1)
        i = sigs.index(s)
        if f.startswith("band") and f != "bands":
            out.append(cols["bands"][:, int(f[4:]) * n_sig + i])
        else:
            out.append(cols[f][:, i])
    return np.stack(out, axis=1) if out else np.empty((x.shape[0], 0))
