"""IsolationForest anomaly family rebuilt as one ``TreeEnsemble`` node.

skl2onnx converts an IsolationForest into thousands of nodes (per tree a
TreeEnsembleRegressor for the leaf index, gathers for path lengths, ...), ~1 ms
per call in onnxruntime, slower than scikit-learn itself. The score only needs, per tree, the path
length of the leaf a row lands in, which is a constant per leaf. So:

1. robust scaling as the PCA family (:func:`trainer.anomaly.robust_scale`),
   computed in float64 and cast to float32 exactly as scikit-learn casts its
   input before the trees compare against it;
2. one ``ai.onnx.ml.TreeEnsemble`` (opset 5) with every tree, leaf weight
   ``depth(leaf) + c(n_samples(leaf))`` and aggregate SUM, evaluated in float64
   on the float32-rounded features with scikit-learn's own float64 thresholds, so
   every split goes the same way as in scikit-learn;
3. ``score = 2 ** (-(sum / n_trees) / c(max_samples))``: scikit-learn's anomaly
   score (``-score_samples``), higher = more anomalous, 0.5 = the paper's
   "no clear anomaly" level.

Trees fit on a feature subset (``max_features < 1``) index that subset; the
node's feature id is mapped back to the full feature vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.ensemble import IsolationForest

from trainer.anomaly import merge_anomaly_head, robust_scale
from trainer.export import SCORE_OUTPUT
from trainer.features import OPSET, OUTPUT_NAME

ML_OPSET = 5  # TreeEnsemble (one operator for all trees, float64 thresholds)
MEAN_PATH_OUTPUT = "mean_path"
_PREFIX = "iso_"
_BRANCH_LEQ = 0  # TreeEnsemble nodes_modes: x <= split goes to the true branch


@dataclass(frozen=True)
class IsoForestModel:
    centre: np.ndarray  # [F] median of the training features
    scale: np.ndarray  # [F] robust scale
    forest: IsolationForest  # fit on (features - centre) / scale

    @property
    def n_trees(self) -> int:
        return len(self.forest.estimators_)

    def scaled(self, features: np.ndarray) -> np.ndarray:
        # Div, not Mul by the inverse: the graph does the same IEEE operation.
        out: np.ndarray = (np.asarray(features, np.float64) - self.centre) / self.scale
        return out

    def score(self, features: np.ndarray) -> np.ndarray:
        """scikit-learn's anomaly score ``-score_samples`` (the reference for the graph)."""
        out: np.ndarray = -self.forest.score_samples(self.scaled(features))
        return out


def average_path_length(n: np.ndarray) -> np.ndarray:
    """``c(n)``: mean path length of an unsuccessful BST search among ``n`` points
    (scikit-learn's ``_average_path_length``; 0 for n <= 1, 1 for n == 2)."""
    n = np.asarray(n, np.float64)
    big = np.maximum(n, 3.0)
    c = 2.0 * (np.log(big - 1.0) + np.euler_gamma) - 2.0 * (big - 1.0) / big
    return np.where(n <= 1, 0.0, np.where(n == 2, 1.0, c))


def fit_isoforest(features: np.ndarray, *, n_estimators: int = 100,
                  max_samples: int | float | str = "auto", max_features: float = 1.0,
                  seed: int = 0) -> IsoForestModel:
    """Fit on healthy rows ``[n, F]`` after robust scaling; ``seed`` fixes the trees."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 3:
        raise ValueError(f"fit_isoforest: need at least 3 feature rows [n, F], got {f.shape}")
    if isinstance(max_samples, int) and max_samples < 2:
        raise ValueError(f"fit_isoforest: max_samples={max_samples} must be >= 2")
    centre, scale = robust_scale(f)
    forest = IsolationForest(n_estimators=n_estimators, max_samples=max_samples,
                             max_features=max_features, random_state=seed, n_jobs=1)
    forest.fit((f - centre) / scale)
    # contamination/offset_ is never used: the threshold is calibrated by the pipeline.
    return IsoForestModel(centre=centre, scale=scale, forest=forest)


def _tree_feature_map(forest: IsolationForest, n_features: int) -> list[np.ndarray]:
    # Mirrors scikit-learn: columns are indexed per tree only when fewer than all
    # features are drawn (BaseBagging's requires_feature_indexing); otherwise the
    # tree saw X as it is, whatever estimators_features_ holds.
    n_drawn = len(forest.estimators_features_[0])
    if n_drawn == n_features:
        return [np.arange(n_features)] * len(forest.estimators_)
    return [np.asarray(f) for f in forest.estimators_features_]


def tree_ensemble_node(forest: IsolationForest, n_features: int, inp: str,
                       out: str) -> onnx.NodeProto:
    """All trees as one TreeEnsemble: ``inp [batch, F]`` float64 -> ``out [batch, 1]``
    = Σ over trees of ``depth(leaf) + c(n_samples(leaf))``."""
    feat_ids: list[int] = []
    splits: list[float] = []
    t_ids: list[int] = []
    t_leaf: list[int] = []
    f_ids: list[int] = []
    f_leaf: list[int] = []
    roots: list[int] = []
    weights: list[float] = []
    for est, fmap in zip(forest.estimators_, _tree_feature_map(forest, n_features),
                         strict=True):
        tr = est.tree_
        left, right = tr.children_left, tr.children_right
        depth = np.zeros(tr.node_count, np.int64)
        for n in range(tr.node_count):  # children always come after their parent
            if left[n] >= 0:
                depth[left[n]] = depth[right[n]] = depth[n] + 1
        leaf_value = depth + average_path_length(tr.n_node_samples)
        inner = left >= 0
        node_ix = np.cumsum(inner) - 1 + len(feat_ids)  # global index of each inner node
        leaf_ix = np.cumsum(~inner) - 1 + len(weights)  # global index of each leaf
        if not inner.any():
            # A tree that is one leaf (constant sample): a node whose branches meet.
            roots.append(len(feat_ids))
            feat_ids.append(0)
            splits.append(0.0)
            t_ids.append(int(leaf_ix[0]))
            f_ids.append(int(leaf_ix[0]))
            t_leaf.append(1)
            f_leaf.append(1)
            weights.append(float(leaf_value[0]))
            continue
        roots.append(int(node_ix[0]))
        for i in np.flatnonzero(inner):
            feat_ids.append(int(fmap[tr.feature[i]]))
            splits.append(float(tr.threshold[i]))
            for child, ids, is_leaf in ((left[i], t_ids, t_leaf), (right[i], f_ids, f_leaf)):
                leaf = not inner[child]
                ids.append(int(leaf_ix[child] if leaf else node_ix[child]))
                is_leaf.append(int(leaf))
        weights.extend(float(v) for v in leaf_value[~inner])
    return helper.make_node(
        "TreeEnsemble", [inp], [out], domain="ai.onnx.ml",
        aggregate_function=1,  # SUM
        n_targets=1, post_transform=0, tree_roots=roots,
        nodes_featureids=feat_ids,
        nodes_splits=numpy_helper.from_array(np.asarray(splits, np.float64), "splits"),
        nodes_modes=numpy_helper.from_array(np.full(len(splits), _BRANCH_LEQ, np.uint8),
                                            "modes"),
        nodes_truenodeids=t_ids, nodes_trueleafs=t_leaf,
        nodes_falsenodeids=f_ids, nodes_falseleafs=f_leaf,
        leaf_targetids=[0] * len(weights),
        leaf_weights=numpy_helper.from_array(np.asarray(weights, np.float64), "leaf_weights"),
    )


def isoforest_graph(model: IsoForestModel) -> onnx.ModelProto:
    """``features [batch, F]`` -> ``score [batch]`` and ``mean_path [batch]`` (mean path
    length over the trees; lower = isolated sooner)."""
    n_feat = int(model.centre.shape[0])
    n_trees = model.n_trees
    c_max = float(average_path_length(np.array([model.forest.max_samples_]))[0])
    if c_max <= 0:
        raise ValueError(f"isoforest_graph: max_samples={model.forest.max_samples_} leaves "
                         "no path-length normaliser (need >= 2)")

    def const(name: str, v: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.ascontiguousarray(v), name)

    inits = [
        const("centre", model.centre.astype(np.float64)),
        const("scale", model.scale.astype(np.float64)),
        const("inv_trees", np.array(1.0 / n_trees, np.float64)),
        const("neg_inv_c", np.array(-1.0 / c_max, np.float64)),
        const("two", np.array(2.0, np.float64)),
        const("flat", np.array([-1], np.int64)),
    ]
    nodes = [
        helper.make_node("Cast", [OUTPUT_NAME], ["f64"], to=TensorProto.DOUBLE),
        helper.make_node("Sub", ["f64", "centre"], ["fc"]),
        helper.make_node("Div", ["fc", "scale"], ["z64"]),
        # scikit-learn compares float32 inputs with float64 thresholds: round the same way.
        helper.make_node("Cast", ["z64"], ["z32"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["z32"], ["z"], to=TensorProto.DOUBLE),
        tree_ensemble_node(model.forest, n_feat, "z", "path_sum"),
        helper.make_node("Reshape", ["path_sum", "flat"], ["path_sum_flat"]),
        helper.make_node("Mul", ["path_sum_flat", "inv_trees"], ["mean_path64"]),
        helper.make_node("Mul", ["mean_path64", "neg_inv_c"], ["expo"]),
        helper.make_node("Pow", ["two", "expo"], ["score64"]),
        helper.make_node("Cast", ["score64"], [SCORE_OUTPUT], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["mean_path64"], [MEAN_PATH_OUTPUT], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes, "forewarn_isoforest",
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", n_feat])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch"])
         for n in (SCORE_OUTPUT, MEAN_PATH_OUTPUT)],
        initializer=inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
                          producer_name="forewarn.trainer")
    onnx.checker.check_model(m, full_check=True)
    return m


def build_isoforest_model(feature_model: onnx.ModelProto, model: IsoForestModel,
                          ref_mean: np.ndarray, ref_std: np.ndarray) -> onnx.ModelProto:
    """One graph: raw window -> ``score``, ``mean_path`` [batch] and ``deviations``."""
    return merge_anomaly_head(feature_model, isoforest_graph(model), _PREFIX,
                              [SCORE_OUTPUT, MEAN_PATH_OUTPUT], ref_mean, ref_std)
