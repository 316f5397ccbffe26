"""Unsupervised anomaly family: PCA with Hotelling T² and Q (SPE) as plain ONNX nodes.

Fit on healthy feature rows (as computed by the ONNX feature graph):

1. robust scaling: ``z = (f - median) / s`` with ``s = max(IQR / 1.349, std)``.
   The IQR alone is zero for quantised signals (SKAB's pressure and flow sit on a
   few levels), which would turn one level step into a 10⁸-sigma "anomaly"; the
   std floor keeps those finite while the median keeps the centre robust;
2. PCA on ``z`` keeping components up to ``variance`` of the variance;
3. ``T² = Σ (z·pᵢ)² / λᵢ`` inside the model plane, ``Q = ‖z (I - P Pᵀ)‖²`` outside;
4. each statistic is divided by its ``quantile`` on the training rows, and
   ``score = (T²/T²_q + Q/Q_q) / 2``: a score of 1 is the training rows' q-quantile,
   so a threshold in these units transfers between models fit on different data.

Why PCA and not IsolationForest by default: the whole model is one MatMul
against a constant ``[F, k + F]`` matrix plus a square and two ReduceSums. The
IsolationForest family exists too (``model.family = "isoforest"``,
:mod:`trainer.isoforest`): skl2onnx's converter gives 2,710 nodes and ~1 ms per
call (it made the agent fall behind at 1k msg/s), so the forest is
rebuilt as one TreeEnsemble node whose leaves hold the path lengths, with
scores equal to scikit-learn's. On SKAB's per-file protocol it detects worse
than PCA (F1 0.50 vs 0.80 at the same ~14.5 % FAR; best F1 0.72 only at 75 %
FAR). A likely reason: axis-parallel splits barely see a broken correlation
between signals (tests/unit/test_isoforest.py's synthetic fault), which Q measures
directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

from trainer.export import DEVIATIONS_OUTPUT, SCORE_OUTPUT, _with_deviations
from trainer.features import INPUT_NAME, OPSET, OUTPUT_NAME

T2_OUTPUT = "t2"
SPE_OUTPUT = "spe"
_PREFIX = "pca_"


@dataclass(frozen=True)
class PcaModel:
    centre: np.ndarray  # [F] median of the training features (plus the PCA mean)
    scale: np.ndarray  # [F] robust scale
    components: np.ndarray  # [F, k]
    variances: np.ndarray  # [k] eigenvalues of the kept components
    t2_ref: float  # T² at `quantile` on the training rows
    spe_ref: float  # Q at `quantile` on the training rows
    quantile: float

    @property
    def n_components(self) -> int:
        return int(self.components.shape[1])

    def statistics(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unnormalised ``(T², Q)`` of feature rows, float64 (the numpy reference)."""
        z = (np.asarray(features, np.float64) - self.centre) / self.scale
        t = z @ self.components
        t2 = np.sum(t * t / self.variances, axis=1)
        r = z - t @ self.components.T
        return t2, np.sum(r * r, axis=1)

    def score(self, features: np.ndarray) -> np.ndarray:
        t2, spe = self.statistics(features)
        return 0.5 * (t2 / self.t2_ref + spe / self.spe_ref)


def robust_scale(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, np.float64)
    med = np.median(f, axis=0)
    q75, q25 = np.percentile(f, [75, 25], axis=0)
    s = np.maximum((q75 - q25) / 1.349, f.std(axis=0))
    # A feature constant in training still needs a finite unit.
    return med, np.maximum(s, 1e-6 * np.maximum(1.0, np.abs(med)))


def fit_pca(features: np.ndarray, *, variance: float = 0.9, quantile: float = 0.99,
            max_components: int | None = None) -> PcaModel:
    """Fit on healthy rows ``[n, F]``; ``variance`` in (0, 1] picks the component count."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 3:
        raise ValueError(f"fit_pca: need at least 3 feature rows [n, F], got shape {f.shape}")
    if not 0 < variance <= 1:
        raise ValueError(f"fit_pca: variance={variance} must be in (0, 1]")
    if not 0.5 <= quantile < 1:
        raise ValueError(f"fit_pca: quantile={quantile} must be in [0.5, 1)")
    med, scale = robust_scale(f)
    z = (f - med) / scale
    mu = z.mean(axis=0)
    _, sv, vt = np.linalg.svd(z - mu, full_matrices=False)
    var = sv**2 / max(1, f.shape[0] - 1)
    frac = np.cumsum(var) / max(var.sum(), 1e-300)
    k = int(np.searchsorted(frac, variance - 1e-12) + 1)
    k = max(1, min(k, max_components or k, int(np.count_nonzero(var > 1e-12 * var[0])) or 1))
    # Sign convention so that the same data always gives the same matrix.
    comps = vt[:k].T * np.where(vt[:k].T[np.abs(vt[:k].T).argmax(axis=0), range(k)] < 0, -1, 1)
    model = PcaModel(centre=med + mu * scale, scale=scale, components=comps,
                     variances=np.maximum(var[:k], 1e-12), t2_ref=1.0, spe_ref=1.0,
                     quantile=quantile)
    t2, spe = model.statistics(f)
    return PcaModel(centre=model.centre, scale=scale, components=comps,
                    variances=model.variances,
                    t2_ref=max(float(np.quantile(t2, quantile)), 1e-12),
                    spe_ref=max(float(np.quantile(spe, quantile)), 1e-12),
                    quantile=quantile)


def score_nodes(split: str, axis1: str) -> list[onnx.NodeProto]:
    """The T²/Q head after the projection ``zp``: the score and its two parts.

    Shared by the full bundle's graph and the template's (whose constants come per
    row), so the two can never compute the score differently.
    """
    return [
        helper.make_node("Mul", ["zp", "zp"], ["zp2"]),
        helper.make_node("Split", ["zp2", split], ["t2_parts", "spe_parts"], axis=1),
        helper.make_node("ReduceSum", ["t2_parts", axis1], ["t2_half"], keepdims=0),
        helper.make_node("ReduceSum", ["spe_parts", axis1], ["spe_half"], keepdims=0),
        helper.make_node("Add", ["t2_half", "spe_half"], ["score64"]),
        helper.make_node("Cast", ["score64"], [SCORE_OUTPUT], to=TensorProto.FLOAT),
        # Each half carries a factor 1/2; the separate outputs are T²/T²_q and Q/Q_q.
        helper.make_node("Add", ["t2_half", "t2_half"], ["t2_64"]),
        helper.make_node("Add", ["spe_half", "spe_half"], ["spe_64"]),
        helper.make_node("Cast", ["t2_64"], [T2_OUTPUT], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["spe_64"], [SPE_OUTPUT], to=TensorProto.FLOAT),
    ]


def pca_graph(model: PcaModel) -> onnx.ModelProto:
    """``features [batch, F]`` -> ``score [batch]``, ``t2``, ``spe`` (normalised), float64 inside.

    T² and Q share one MatMul: ``z @ [P / sqrt(2 λ T²_q) | (I - P Pᵀ) / sqrt(2 Q_q)]``;
    the sum of squares of the first k columns is ``T² / (2 T²_q)``, of the rest
    ``Q / (2 Q_q)``, because ``I - P Pᵀ`` is a symmetric projection.
    """
    n_feat, k = model.components.shape
    p = model.components
    a = p / np.sqrt(2.0 * model.variances * model.t2_ref)[None, :]
    b = (np.eye(n_feat) - p @ p.T) / np.sqrt(2.0 * model.spe_ref)
    mat = np.concatenate([a, b], axis=1)

    def const(name: str, v: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.ascontiguousarray(v), name)

    inits = [
        const("centre", model.centre.astype(np.float64)),
        const("inv_scale", (1.0 / model.scale).astype(np.float64)),
        const("proj", mat.astype(np.float64)),
        const("split", np.array([k, n_feat], dtype=np.int64)),
        const("axis1", np.array([1], dtype=np.int64)),
    ]
    nodes = [
        helper.make_node("Cast", [OUTPUT_NAME], ["f64"], to=TensorProto.DOUBLE),
        helper.make_node("Sub", ["f64", "centre"], ["fc"]),
        helper.make_node("Mul", ["fc", "inv_scale"], ["z"]),
        helper.make_node("MatMul", ["z", "proj"], ["zp"]),
        *score_nodes("split", "axis1"),
    ]
    vec = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch"])
           for n in (SCORE_OUTPUT, T2_OUTPUT, SPE_OUTPUT)]
    graph = helper.make_graph(
        nodes, "forewarn_pca",
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", n_feat])],
        vec, initializer=inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                          producer_name="forewarn.trainer")
    onnx.checker.check_model(m, full_check=True)
    return m


def merge_anomaly_head(feature_model: onnx.ModelProto, head: onnx.ModelProto, prefix: str,
                       outputs: list[str], ref_mean: np.ndarray, ref_std: np.ndarray
                       ) -> onnx.ModelProto:
    """Feature graph (plus ``deviations``) followed by an anomaly head on ``features``.

    ``outputs`` are the head's [batch] float outputs, ``score`` first; the merged
    graph exposes them unprefixed, then ``deviations``.
    """
    feats = _with_deviations(feature_model, ref_mean, ref_std)
    head = compose.add_prefix(head, prefix)
    feats.ir_version = head.ir_version
    outs = [prefix + n for n in outputs]
    merged = compose.merge_models(
        feats, head, io_map=[(OUTPUT_NAME, prefix + OUTPUT_NAME)],
        outputs=[*outs, DEVIATIONS_OUTPUT],
    )
    g = merged.graph
    # Public output names without the prefix: Identity nodes, then swap the outputs.
    dev = onnx.ValueInfoProto()
    dev.CopyFrom(next(o for o in g.output if o.name == DEVIATIONS_OUTPUT))
    del g.output[:]
    for n in outputs:
        g.node.append(helper.make_node("Identity", [prefix + n], [n]))
        g.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch"]))
    g.output.append(dev)
    g.name = "forewarn_anomaly_bundle"
    merged.producer_name = "forewarn.trainer"
    merged.producer_version = ""
    onnx.checker.check_model(merged, full_check=True)
    if [i.name for i in g.input] != [INPUT_NAME]:
        raise ValueError(f"merged graph inputs {[i.name for i in g.input]} != [{INPUT_NAME!r}]")
    return merged


def build_anomaly_model(feature_model: onnx.ModelProto, model: PcaModel,
                        ref_mean: np.ndarray, ref_std: np.ndarray) -> onnx.ModelProto:
    """One graph: raw window -> ``score``, ``t2``, ``spe`` [batch] and ``deviations``."""
    return merge_anomaly_head(feature_model, pca_graph(model), _PREFIX,
                              [SCORE_OUTPUT, T2_OUTPUT, SPE_OUTPUT], ref_mean, ref_std)
