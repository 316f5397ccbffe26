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
                metrics: dict[str, float] | None = None,
                bundle_kind: str = "full",
                score_offset: float = 0.0) -> tuple[Path, Path]:
    """Write and sign a bundle; returns (bundle dir, public key path).

    ``kind``/``unit`` describe the score (manifest ``output``), ``units`` the signals;
    ``lineage``, ``reference_score`` (a manifest ``Histogram``) and ``metrics`` go in as
    given; ``score_offset`` is added to every score (a model that always breaches).

    ``bundle_kind`` other than "full" is written as the manifest's ``kind``.

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
        **({"kind": bundle_kind} if bundle_kind != "full" else {}),
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
        "metrics": metrics or {},
        "reference": {"score": reference_score} if reference_score else {},
        "model_sha256": sha256_file(out / "model.onnx"),
        "self_test": [] if nan else cases,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    sign_bundle(out, load_private_key(priv))
    return out, pub


def make_template(root: Path, *, name: str = "tpl", version: str = "1",
                  key_dir: Path | None = None, **kw: Any) -> tuple[Path, Path]:
    """A centrally signed bundle of kind template (the one place tests make one).

    Its score is :func:`mean_graph`'s. Where the manifest has a ``commissioning``
    section (templates with per-asset parameter inputs), the graph also takes
    ``asset_index`` and one parameter ``param_centre [sets, signals]``, gathered per
    row and added times 0, and the manifest declares it; else the graph is
    :func:`mean_graph` as it is.
    """
    from edge.models.bundle import Manifest

    signals = kw.pop("signals", ["a", "b"])
    path, pub = make_bundle(root, signals=signals, name=name, version=version,
                            key_dir=key_dir, bundle_kind="template", **kw)
    if "commissioning" not in Manifest.model_fields:
        return path, pub
    window = int(kw.get("window", 4))
    (path / "model.onnx").write_bytes(
        _with_params(mean_graph(len(signals), window), len(signals)).SerializeToString())
    m = json.loads((path / "manifest.json").read_text())
    m["commissioning"] = {"rows": 10, "pca": {"variance": 0.9, "quantile": 0.99},
                          "params": [{"name": "centre", "dtype": "float64",
                                      "shape": [len(signals)]}]}
    m["model_sha256"] = sha256_file(path / "model.onnx")
    (path / "manifest.json").write_text(json.dumps(m, indent=1))
    sign_bundle(path, load_private_key((key_dir or root / "keys") / "signing.key"))
    return path, pub


def _with_params(model: onnx.ModelProto, n_signals: int) -> onnx.ModelProto:
    """``score`` + 0 * sum(param_centre[asset_index]): a template's inputs, a mean's score."""
    g = model.graph
    g.input.extend([
        helper.make_tensor_value_info("asset_index", TensorProto.INT64, ["batch"]),
        helper.make_tensor_value_info("param_centre", TensorProto.DOUBLE,
                                      ["sets", n_signals])])
    out = next(n for n in g.node if list(n.output) == ["score"])
    out.output[0] = "score_mean"
    g.initializer.append(helper.make_tensor("nil_t", TensorProto.FLOAT, [], [0.0]))
    g.node.extend([
        helper.make_node("Gather", ["param_centre", "asset_index"], ["rows"], axis=0),
        helper.make_node("Cast", ["rows"], ["rows_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["rows_f", "axes1"], ["row_sum"], keepdims=0),
        helper.make_node("Mul", ["row_sum", "nil_t"], ["nil_row"]),
        helper.make_node("Add", ["score_mean", "nil_row"], ["score"])])
    onnx.checker.check_model(model)
    return model


def make_site_params(root: Path, template: Path, site_key: Path, *, name: str = "tpl-p1",
                     version: str = "1", asset: str = "p1",
                     params: dict[str, np.ndarray] | None = None,
                     ref: dict[str, Any] | None = None) -> Path:
    """Write a site parameters bundle for ``template`` signed with the site key
    ``site_key`` (private key file); ``ref`` overrides fields of its template reference."""
    out = root / name / version
    out.mkdir(parents=True, exist_ok=True)
    # the parameters make_template's commissioning section declares
    arrays = params if params is not None else {"centre": np.array([1.0, 2.0])}
    np.savez(out / "params.npz", **arrays)  # type: ignore[arg-type]
    tm = json.loads((template / "manifest.json").read_text())
    tref = {"name": tm["name"], "version": tm["version"],
            "model_sha256": sha256_file(template / "model.onnx"),
            "manifest_sha256": sha256_file(template / "manifest.json"),
            "key_id": _signer(template)} | (ref or {})
    # edge.models.sitekey.SiteParamsManifest, the one manifest of a parameter set
    manifest = {"schema_version": 1, "kind": "site_params", "name": name, "version": version,
                "asset": asset, "template": tref,
                "params_sha256": sha256_file(out / "params.npz"),
                "created": "2026-12-02T00:00:00Z", "evidence": {"rows": 400}, "self_test": []}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    sign_bundle(out, load_private_key(site_key), role="site")
    return out


def _signer(bundle: Path) -> str | None:
    sig = bundle / "SIGNATURE"
    return str(json.loads(sig.read_text())["key_id"]) if sig.exists() else None


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
