"""IsolationForest scoring speed: the rebuilt one-TreeEnsemble graph vs skl2onnx's vs sklearn.

    nice -n 5 .venv/bin/python -m bench.isoforest_export

One forest (100 trees, max_samples 256, 36 features like skab_isoforest.toml's
6 signals x 6 features) fit on synthetic rows; the three scorers get the same
rows in the same process. Per-call latency at batch 1 (median of many calls)
and rows/s at batch 1024; onnxruntime sessions use the agent's options (one
intra-op thread, no spinning). Ratios are against scikit-learn's
``score_samples``, measured here, not against a stored figure.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType

from trainer.isoforest import fit_isoforest, isoforest_graph

N_FEATURES, N_TREES = 36, 100


def agent_session(model_bytes: bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model_bytes, sess_options=opts,
                                providers=["CPUExecutionProvider"])


def per_call_us(fn: Callable[[np.ndarray], object], x: np.ndarray, calls: int) -> float:
    for _ in range(20):
        fn(x)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def rows_per_s(fn: Callable[[np.ndarray], object], x: np.ndarray, seconds: float) -> float:
    fn(x)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn(x)
        n += len(x)
    return n / (time.perf_counter() - t0)


def main() -> None:
    rng = np.random.default_rng(0)
    f = rng.normal(size=(4000, N_FEATURES)).astype(np.float32)
    iso = fit_isoforest(f[:2000], n_estimators=N_TREES, seed=0)
    rebuilt = isoforest_graph(iso)
    # skl2onnx sees the same forest on the same scaled rows (the scaling is not part of
    # its graph); it needs ai.onnx.ml 3 and '' 17 for IsolationForest (it refuses other opsets).
    conv = to_onnx(iso.forest, initial_types=[("features", FloatTensorType([None, N_FEATURES]))],
                   target_opset={"": 17, "ai.onnx.ml": 3})
    s_re, s_cv = agent_session(rebuilt.SerializeToString()), agent_session(conv.SerializeToString())
    cv_out = [o.name for o in s_cv.get_outputs()]
    x = f[2000:]
    z = iso.scaled(x).astype(np.float32)
    ref = -iso.forest.score_samples(z)
    re_score = s_re.run(["score"], {"features": x})[0]
    # Its second output is decision_function = score_samples - offset_ (offset_ -0.5).
    cv_score = -s_cv.run([cv_out[1]], {"features": z})[0].ravel() + 0.5
    print(f"nodes: rebuilt {len(rebuilt.graph.node)}, skl2onnx {len(conv.graph.node)}")
    print(f"max |score - sklearn|: rebuilt {np.abs(re_score - ref).max():.2g}, "
          f"skl2onnx {np.abs(cv_score - ref).max():.2g}")

    scorers: dict[str, tuple[Callable[[np.ndarray], object], bool]] = {
        "sklearn score_samples": (iso.forest.score_samples, True),
        "skl2onnx graph": (lambda a: s_cv.run(cv_out, {"features": a}), True),
        "rebuilt TreeEnsemble graph": (lambda a: s_re.run(["score"], {"features": a}), False),
    }
    base_call = base_rows = 0.0
    print(f"{'scorer':28s} {'batch 1 µs/call':>16s} {'batch 1024 rows/s':>18s}  vs sklearn")
    for name, (fn, scaled_input) in scorers.items():
        rows = z if scaled_input else x  # the rebuilt graph scales inside
        us = per_call_us(fn, rows[:1], 300 if "sklearn" in name else 2000)
        rps = rows_per_s(fn, rows[:1024], 3.0)
        if not base_call:
            base_call, base_rows = us, rps
        print(f"{name:28s} {us:16.1f} {rps:18,.0f}  latency x{base_call / us:.1f}, "
              f"throughput x{rps / base_rows:.1f}")


if __name__ == "__main__":
    main()
