"""Small, hand-built signed bundles for agent tests that do not need a trained model.

The graph's score is the mean of the first signal over the window (so a test
controls the score by the values it publishes); its deviations are the window
means of every signal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from edge.models.signing import generate_keypair, load_private_key, sha256_file, sign_bundle


def mean_graph(n_signals: int, window: int, *, nan: bool = False,
               slow_matmuls: int = 0, score_offset: float = 0.0) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("window", TensorProto.FLOAT, ["batch", n_signals, window])
    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])
    dev = helper.make_tensor_value_info("deviations", TensorProto.FLOAT, ["batch", n_signals])
    axes2 = helper.make_tensor("axes2", TensorProto.INT64, [1], [2])
    starts = helper.make_tensor("starts", TensorProto.INT64, [1], [0])
    ends = helper.make_tensor("ends", TensorProto.INT64, [1], [1])
    axes1 = helper.make_tensor("axes1", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("ReduceMean", ["window", "axes2"], ["dev_raw"], keepdims=0),
        helper.make_node("Slice", ["dev_raw", "starts", "ends", "axes1"], ["first"]),
        helper.make_node("Squeeze", ["first", "axes1"], ["score_raw"]),
    ]
    inits = [axes2, starts, ends, axes1]
    if nan:  # a deliberately broken model: 0/0 everywhere
        zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
        nodes += [helper.make_node("Mul", ["score_raw", "zero"], ["z"]),
                  helper.make_node("Div", ["z", "z"], ["score"])]
        inits.append(zero)
    elif score_offset:  # a deliberately miscalibrated model: every score shifted
        inits.append(helper.make_tensor("offset", TensorProto.FLOAT, [], [score_offset]))
        nodes.append(helper.make_node("Add", ["score_raw", "offset"], ["score"]))
    else:
        nodes.append(helper.make_node("Identity", ["score_raw"], ["score"]))
    if slow_matmuls:
        # A deliberately slow model: matrix products that depend on the input (so
        # onnxruntime cannot fold them away) and contribute 0 to the score.
        big = np.random.default_rng(0).normal(size=(600, 600)).astype(np.float32) / 600
        inits += [helper.make_tensor("big", TensorProto.FLOAT, [600, 600], big.ravel()),
                  helper.make_tensor("nil", TensorProto.FLOAT, [], [0.0])]
        nodes += [helper.make_node("ReduceMean", ["window"], ["xm"], keepdims=0),
                  helper.make_node("Mul", ["big", "xm"], ["m0"])]
        for i in range(slow_matmuls):
            nodes.append(helper.make_node("MatMul", [f"m{i}", "big"], [f"m{i + 1}"]))
        nodes += [helper.make_node("ReduceMean", [f"m{slow_matmuls}"], ["ms"], keepdims=0),
                  helper.make_node("Mul", ["ms", "nil"], ["zero_s"]),
                  helper.make_node("Add", ["score", "zero_s"], ["score_slow"])]
        score = helper.make_tensor_value_info("score_slow", TensorProto.FLOAT, ["batch"])
    nodes.append(helper.make_node("Identity", ["dev_raw"], ["deviations"]))
    graph = helper.make_graph(nodes, "mean_score", [x], [score, dev], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def make_bundle(root: Path, *, signals: list[str], window: int = 4, hop: int = 1,
                period: float = 1.0, warning: float = 50.0, critical: float | None = None,
                reset: float | None = None, alert_when: str = "above",
                version: str = "1", name: str = "test-model", key_dir: Path | None = None,
                ranges: dict[str, tuple[float, float]] | None = None,
                training: dict[str, tuple[float, float]] | None = None,
                plausible: dict[str, tuple[float, float]] | None = None,
                limits: dict[str, Any] | None = None,
                max_hold: int = 2, nan: bool = False,
                slow_matmuls: int = 0, kind: str = "anomaly", unit: str = "",
                units: dict[str, str] | None = None, lineage: dict[str, Any] | None = None,
                reference_score: dict[str, Any] | None = None,
                policy: dict[str, Any] | None = None,
                score_offset: float = 0.0) -> tuple[Path, Path]:
    """Write and sign a bundle; returns (bundle dir, public key path).

    ``kind``/``unit`` describe the score (manifest ``output``), ``units`` the signals;
    ``lineage`` and ``reference_score`` (a manifest ``Histogram``) go in as given;
    ``score_offset`` is added to every score (a model that always breaches).

    ``ranges`` writes a schema 1 manifest (one ``min``/``max`` per signal, as old
    trainers did); otherwise schema 2 with ``training`` and ``plausible`` ranges, or
    schema 3 when ``policy`` gives the ``alert_policy`` (k, n, clear_after, cooldown_s;
    the direction is ``alert_when``).
    """
    key_dir = key_dir or root / "keys"
    priv, pub = key_dir / "signing.key", key_dir / "signing.pub"
    if not priv.exists():
        generate_keypair(priv, pub)
    out = root / name / version
    out.mkdir(parents=True, exist_ok=True)
    model = mean_graph(len(signals), window, nan=nan, slow_matmuls=slow_matmuls,
                       score_offset=score_offset)
    (out / "model.onnx").write_bytes(model.SerializeToString())
    none = (None, None)
    if ranges is not None:
        schema = 1
        signal_specs = [{"name": s, "unit": (units or {}).get(s, ""),
                         "min": ranges.get(s, none)[0],
                         "max": ranges.get(s, none)[1]} for s in signals]
    else:
        schema = 2 if policy is None else 3
        tr, pl = training or {}, plausible or {}
        signal_specs = [{"name": s, "unit": (units or {}).get(s, ""),
                         "train_min": tr.get(s, none)[0],
                         "train_max": tr.get(s, none)[1], "plausible_min": pl.get(s, none)[0],
                         "plausible_max": pl.get(s, none)[1]} for s in signals]
    rng = np.random.default_rng(0)
    cases = []
    for _ in range(2):
        w = rng.uniform(0, 10, size=(len(signals), window)).astype(np.float32)
        expected = float(np.float32(w[0].mean()) + np.float32(score_offset)) if not nan else 0.0
        cases.append({"window": w.tolist(), "expected": expected, "tolerance": 1e-4})
    manifest = {
        "schema_version": schema, "name": name, "version": version,
        "signals": signal_specs,
        **({"limits": limits} if limits else {}),
        "sample_period_s": period, "window": window, "hop": hop,
        "gap": {"max_hold_samples": max_hold},
        "input_name": "window",
        "output": {"kind": kind, "unit": unit, "alert_when": alert_when,
                   "score_output": "score_slow" if slow_matmuls else "score",
                   "deviations_output": "deviations",
                   "feature_names": [f"{s}:mean" for s in signals]},
        "thresholds": {"warning": warning, "critical": critical, "reset": reset,
                       "rationale": "test"},
        **({"alert_policy": {"direction": alert_when, **policy}} if policy is not None
           else {}),
        "lineage": lineage or {},
        "reference": {"score": reference_score} if reference_score else {},
        "model_sha256": sha256_file(out / "model.onnx"),
        "self_test": [] if nan else cases,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    sign_bundle(out, load_private_key(priv))
    return out, pub


def train_fleet_bundle(config: Path, tmp: Path, skab: Path) -> tuple[Path, Path]:
    """Train and sign a SKAB fleet bundle from ``config``, calibrated for a false-alarm
    rate on held-out healthy data; returns (bundle dir, public key path)."""
    from trainer.anomaly_pipeline import train_from_config

    key, pub = tmp / "k.pem", tmp / "k.pub"
    generate_keypair(key, pub)
    cfg_path = tmp / "fleet.toml"
    cfg_path.write_text(config.read_text().replace('method = "fixed"',
                                                   'method = "false_alarm_rate"'))
    return train_from_config(cfg_path, tmp / "models", key, skab), pub


def tar_bundle(bundle: Path, out: Path, arc_prefix: str) -> Path:
    """The bundle directory as the .tar.gz a rollout ships (``<name>/<version>/...``)."""
    import tarfile

    with tarfile.open(out, "w:gz") as tf:
        tf.add(bundle, arcname=arc_prefix)
    return out
