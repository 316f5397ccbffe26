"""The ONNX feature graph: raw window ``[batch, signals, window]`` -> ``[batch, F]``.

The same graph computes the training features (through onnxruntime, see
:func:`compute_features`) and runs inside every bundle's ``model.onnx``, so
training and serving cannot disagree. :func:`reference_features` is an
independent numpy (float64) implementation the tests hold the graph to.

Features, each per signal, in the output order ``for feature: for signal``:

- ``mean``, ``std`` (population), ``min``, ``max``
- ``slope``: least-squares slope per sample over the window
- ``last``: mean of the last ``last_n`` samples, a de-noised current level

Optionally a constant level per signal is subtracted first (``centre``), which
keeps float32 features precise enough for tree splits to agree across
implementations (see :func:`build_feature_graph`).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 18  # ReduceMean/ReduceMin/ReduceMax take ``axes`` as an input from 18 on
FEATURES = ("mean", "std", "min", "max", "slope", "last")
INPUT_NAME = "window"
OUTPUT_NAME = "features"


def feature_names(signals: list[str], features: list[str]) -> list[str]:
    return [f"{s}:{f}" for f in features for s in signals]


def _check(signals: list[str], window: int, features: list[str], last_n: int) -> None:
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise ValueError(f"features={unknown}: unknown; available: {', '.join(FEATURES)}")
    if len(set(features)) != len(features) or not features:
        raise ValueError(f"features={features}: must be non-empty and without duplicates")
    if not signals or len(set(signals)) != len(signals):
        raise ValueError(f"signals={signals}: must be non-empty and without duplicates")
    if window < 2:
        raise ValueError(f"window={window}: a slope needs at least 2 samples")
    if "last" in features and not 1 <= last_n <= window:
        raise ValueError(f"last_n={last_n}: must be between 1 and window={window}")


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))


def build_feature_graph(
    signals: list[str],
    window: int,
    features: list[str],
    *,
    last_n: int = 5,
    centre: list[float] | None = None,
) -> tuple[onnx.ModelProto, list[str]]:
    """Build the feature graph for ``signals`` x ``window`` samples.

    Returns the model (input ``window`` float32 ``[batch, signals, window]``,
    output ``features`` float32 ``[batch, F]``) and the ``"<signal>:<feature>"``
    name of each output column.

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
    _check(signals, window, features, last_n)
    if centre is not None and len(centre) != len(signals):
        raise ValueError(f"centre has {len(centre)} values for {len(signals)} signals")
    t = np.arange(window, dtype=np.float64)
    t -= t.mean()
    # Pre-dividing the centred time vector by its sum of squares turns the
    # least-squares slope into one MatMul.
    slope_vec = (t / np.sum(t * t)).reshape(window, 1)
    nodes = [
        _const("axis_time", np.array([2], dtype=np.int64)),
        helper.make_node("Cast", [INPUT_NAME], ["raw64"], to=TensorProto.DOUBLE),
    ]
    x = "raw64"
    if centre is not None:
        level = np.asarray(centre, dtype=np.float64).reshape(len(signals), 1)
        nodes += [_const("centre", level), helper.make_node("Sub", [x, "centre"], ["levelled"])]
        x = "levelled"
    nodes += [
        helper.make_node("ReduceMean", [x, "axis_time"], ["mean_k"], keepdims=1),
        helper.make_node("Sub", [x, "mean_k"], ["centred"]),
    ]
    made: dict[str, str] = {}
    for f in features:
        out = f"feat_{f}"
        if f == "mean":
            nodes.append(helper.make_node("Squeeze", ["mean_k", "axis_time"], [out]))
        elif f == "std":
            nodes += [
                helper.make_node("Mul", ["centred", "centred"], ["sq"]),
                helper.make_node("ReduceMean", ["sq", "axis_time"], ["var"], keepdims=0),
                helper.make_node("Sqrt", ["var"], [out]),
            ]
        elif f in ("min", "max"):
            op = "ReduceMin" if f == "min" else "ReduceMax"
            nodes.append(helper.make_node(op, [x, "axis_time"], [out], keepdims=0))
        elif f == "slope":
            # On centred values: sum(t * x) on raw values of ~9000 cancels badly.
            nodes += [
                _const("slope_vec", slope_vec),
                helper.make_node("MatMul", ["centred", "slope_vec"], ["slope_k"]),
                helper.make_node("Squeeze", ["slope_k", "axis_time"], [out]),
            ]
        elif f == "last":
            nodes += [
                _const("last_start", np.array([window - last_n], dtype=np.int64)),
                _const("last_end", np.array([window], dtype=np.int64)),
                helper.make_node(
                    "Slice", [x, "last_start", "last_end", "axis_time"], ["tail"]
                ),
                helper.make_node("ReduceMean", ["tail", "axis_time"], [out], keepdims=0),
            ]
        made[f] = out
    nodes += [
        helper.make_node("Concat", [made[f] for f in features], ["features64"], axis=1),
        helper.make_node("Cast", ["features64"], [OUTPUT_NAME], to=TensorProto.FLOAT),
    ]
    n_sig, n_feat = len(signals), len(signals) * len(features)
    graph = helper.make_graph(
        nodes,
        "forewarn_features",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", n_sig, window])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", n_feat])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="forewarn.trainer"
    )
    onnx.checker.check_model(model, full_check=True)
    return model, feature_names(signals, features)


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
    """Run the feature graph on ``windows [n, signals, window]``; float32 ``[n, F]``."""
    sess = model if isinstance(model, ort.InferenceSession) else session(model)
    x = np.ascontiguousarray(windows, dtype=np.float32)
    parts = [sess.run([OUTPUT_NAME], {INPUT_NAME: x[i:i + batch]})[0]
             for i in range(0, x.shape[0], batch)]
    if not parts:
        n_feat = sess.get_outputs()[0].shape[1]
        return np.empty((0, n_feat), dtype=np.float32)
    return np.concatenate(parts)


def reference_features(
    windows: np.ndarray,
    features: list[str],
    last_n: int = 5,
    centre: list[float] | None = None,
) -> np.ndarray:
    """Numpy float64 reference for the graph; same column order and centring."""
    x = np.asarray(windows, dtype=np.float64)
    if centre is not None:
        x = x - np.asarray(centre, dtype=np.float64)[None, :, None]
    w = x.shape[2]
    t = np.arange(w, dtype=np.float64) - (w - 1) / 2.0
    cols = {
        "mean": lambda: x.mean(axis=2),
        "std": lambda: x.std(axis=2),
        "min": lambda: x.min(axis=2),
        "max": lambda: x.max(axis=2),
        # Closed form of the least-squares slope (the tests also hold it to polyfit).
        "slope": lambda: ((x - x.mean(axis=2, keepdims=True)) @ t) / np.sum(t * t),
        "last": lambda: x[:, :, w - last_n:].mean(axis=2),
    }
    return np.concatenate([cols[f]() for f in features], axis=1)
