"""Merge feature graph and regressor into one ``model.onnx``; write and sign bundles.

The merged graph takes the raw window ``window [batch, signals, window]`` and
returns ``score [batch]`` (the regressor's output, flattened) and
``deviations [batch, F]`` = (features - reference mean) / reference std, so the
agent can say which features moved without knowing how they are computed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.base import BaseEstimator, is_classifier

from edge.core.errors import BundleError
from edge.models.bundle import Histogram, Manifest, SelfTestCase
from edge.models.signing import sha256_file, sign_bundle
from trainer.features import INPUT_NAME, OPSET, OUTPUT_NAME

SCORE_OUTPUT = "score"
DEVIATIONS_OUTPUT = "deviations"
TARGET_OPSET = {"": OPSET, "ai.onnx.ml": 3}
_PREFIX = "reg_"


def std_floor(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Floor the reference std so a constant training feature cannot divide by ~0."""
    floored: np.ndarray = np.maximum(std, 1e-6 * np.maximum(1.0, np.abs(mean)))
    return floored


def _with_deviations(features: onnx.ModelProto, mean: np.ndarray, std: np.ndarray
                     ) -> onnx.ModelProto:
    """Copy of the feature graph that also outputs the deviations."""
    m = onnx.ModelProto()
    m.CopyFrom(features)
    g = m.graph
    g.initializer.extend([
        numpy_helper.from_array(mean.astype(np.float32), "ref_mean"),
        numpy_helper.from_array(std_floor(mean, std).astype(np.float32), "ref_std"),
    ])
    g.node.extend([
        helper.make_node("Sub", [OUTPUT_NAME, "ref_mean"], ["dev_centred"]),
        helper.make_node("Div", ["dev_centred", "ref_std"], [DEVIATIONS_OUTPUT]),
    ])
    n_feat = int(mean.shape[0])
    g.output.append(
        helper.make_tensor_value_info(DEVIATIONS_OUTPUT, TensorProto.FLOAT, ["batch", n_feat])
    )
    return m


def build_bundle_model(
    feature_model: onnx.ModelProto,
    estimator: BaseEstimator,
    ref_mean: np.ndarray,
    ref_std: np.ndarray,
) -> onnx.ModelProto:
    """One graph: raw window -> ``score [batch]`` and ``deviations [batch, F]``.

    A classifier's score is its probability of the positive class (label 1).
    """
    n_feat = int(ref_mean.shape[0])
    clf = is_classifier(estimator)
    reg = to_onnx(
        estimator,
        initial_types=[("features", FloatTensorType([None, n_feat]))],
        target_opset=TARGET_OPSET,
        options={type(estimator): {"zipmap": False}} if clf else None,
    )
    reg = compose.add_prefix(reg, _PREFIX)
    feats = _with_deviations(feature_model, ref_mean, ref_std)
    # merge_models refuses differing IR versions; the converter decides which.
    feats.ir_version = reg.ir_version
    reg_out = (f"{_PREFIX}probabilities" if clf else reg.graph.output[0].name)
    merged = compose.merge_models(
        feats, reg,
        io_map=[(OUTPUT_NAME, reg.graph.input[0].name)],
        outputs=[DEVIATIONS_OUTPUT, reg_out],
    )
    g = merged.graph
    if clf:
        # probabilities [batch, 2] -> column of class 1 -> [batch]
        g.initializer.append(numpy_helper.from_array(np.array(1, dtype=np.int64), "pos_class"))
        g.node.append(helper.make_node("Gather", [reg_out, "pos_class"], [SCORE_OUTPUT], axis=1))
    else:
        g.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64),
                                                     "score_shape"))
        g.node.append(helper.make_node("Reshape", [reg_out, "score_shape"], [SCORE_OUTPUT]))
    dev = next(o for o in g.output if o.name == DEVIATIONS_OUTPUT)
    keep = onnx.ValueInfoProto()
    keep.CopyFrom(dev)
    del g.output[:]
    g.output.extend([
        helper.make_tensor_value_info(SCORE_OUTPUT, TensorProto.FLOAT, ["batch"]),
        keep,
    ])
    g.name = "forewarn_bundle"
    merged.producer_name = "forewarn.trainer"
    merged.producer_version = ""
    onnx.checker.check_model(merged, full_check=True)
    if [i.name for i in g.input] != [INPUT_NAME]:
        raise BundleError(f"merged graph inputs {[i.name for i in g.input]} != [{INPUT_NAME!r}]")
    return merged


def histogram(values: np.ndarray, bins: int) -> Histogram:
    """Quantile reference: ``bins - 1`` inner edges; a value v falls in bin
    ``searchsorted(edges, v, side="right")`` (bin i holds edges[i-1] <= v < edges[i])."""
    v = np.asarray(values, np.float64)
    edges = np.quantile(v, np.arange(1, bins) / bins)
    counts = np.bincount(np.searchsorted(edges, v, side="right"), minlength=bins)
    return Histogram(
        edges=[float(e) for e in edges],
        proportions=[float(c) / v.size for c in counts],
        mean=float(v.mean()),
        std=float(v.std()),
    )


def signal_specs(names: list[str], units: dict[str, str], series: np.ndarray,
                 plausible: dict[str, tuple[float, float]]) -> list[dict[str, Any]]:
    """The manifest's signals: unit, training range and plausibility bound of each.

    ``series`` is ``[signals, samples]`` of the training data. ``plausible`` is the
    config's ``[quality.ranges]`` (physical limits; a signal absent there has
    none). The training range is the min/max of the values the agent would let
    through (finite and plausible: the quality report counts the others),
    rounded outwards to 4 decimals (readable, never narrower than the data).
    """
    out = []
    for i, name in enumerate(names):
        p_lo, p_hi = plausible.get(name, (None, None))
        v = series[i].astype(np.float64)
        ok = np.isfinite(v)
        if p_lo is not None and p_hi is not None:
            ok &= (v >= p_lo) & (v <= p_hi)
        v = v[ok]
        out.append({"name": name, "unit": units.get(name, ""),
                    "train_min": float(np.floor(v.min() * 1e4) / 1e4) if v.size else None,
                    "train_max": float(np.ceil(v.max() * 1e4) / 1e4) if v.size else None,
                    "plausible_min": p_lo, "plausible_max": p_hi})
    return out


def self_test_cases(windows: np.ndarray, scores: np.ndarray) -> list[SelfTestCase]:
    # 1e-3 rather than the schema's 1e-4: a different onnxruntime build may sum
    # hundreds of float32 tree leaves in another order (scores are ~0..125).
    return [
        SelfTestCase(window=w.astype(np.float64).tolist(), expected=float(s), tolerance=1e-3)
        for w, s in zip(windows, scores, strict=True)
    ]


def write_bundle(
    out_dir: Path,
    manifest_fields: dict[str, Any],
    model: onnx.ModelProto,
    private_key: Any,
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``<out>/<name>/<version>/`` with model.onnx, manifest.json and SIGNATURE.

    The bundle is assembled in a temporary sibling and renamed into place, so a
    crash never leaves a half-written bundle where the agent looks for one.
    """
    name, version = str(manifest_fields["name"]), str(manifest_fields["version"])
    final = Path(out_dir) / name / version
    if final.exists() and not overwrite:
        raise BundleError(f"{final}: already exists (choose another --version or --force)")
    tmp = final.with_name(f".{version}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (tmp / "model.onnx").write_bytes(model.SerializeToString())
    manifest = Manifest.model_validate(
        {**manifest_fields, "model_sha256": sha256_file(tmp / "model.onnx")}
    )
    doc = manifest.model_dump(mode="json")
    if manifest.kind == "full":
        # Left out at their defaults: agents from before templates refuse unknown keys.
        doc.pop("kind")
        doc.pop("commissioning")
    text = json.dumps(doc, indent=1, sort_keys=False)
    (tmp / "manifest.json").write_text(text + "\n")
    sign_bundle(tmp, private_key)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final
