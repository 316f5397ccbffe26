"""Template variant of the PCA T²/Q family: the graph takes each asset's parameters.

The fit is :func:`trainer.anomaly.fit_pca` on the feature graph's output, exactly
as the full family does it; only where the numbers live changes. The full
bundle bakes ``centre``, ``1/scale`` and the projection ``[P/√(2λT²_q) | (I-PPᵀ)/√(2Q_q)]``
into the graph as constants; the template takes them as inputs with a leading
parameter-set axis and gathers each row's set by ``asset_index`` (see
:mod:`edge.models.template`). The T² block is padded with zero columns to ``F``,
so one shape fits any number of kept components (a zero column adds exactly 0 to
T²). Deviations use the asset's own feature mean and std, as a bundle fit on that
asset's data would.

Same arithmetic, same order: a parameter set learned from an asset's
commissioning windows scores its windows as the per-file bundle fit on the same
windows does (``tests/unit/test_template.py`` holds them equal).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, utils

from edge.core.errors import ConfigError
from edge.models.template import (
    INDEX_INPUT,
    CommissioningSpec,
    ParamSpec,
    PcaFitSpec,
    probe_params,
    stack_feeds,
)
from trainer.anomaly import T2_OUTPUT, PcaModel, fit_pca, score_nodes
from trainer.export import DEVIATIONS_OUTPUT, SCORE_OUTPUT, self_test_cases, std_floor
from trainer.families.pca import PcaSection
from trainer.features import INPUT_NAME, OPSET, OUTPUT_NAME, session

if TYPE_CHECKING:
    from trainer.config import TrainingConfig

SPE_OUTPUT = "spe"


def param_specs(n_feat: int) -> list[ParamSpec]:
    f = n_feat
    return [ParamSpec(name="centre", dtype="float64", shape=[f]),
            ParamSpec(name="inv_scale", dtype="float64", shape=[f]),
            ParamSpec(name="proj", dtype="float64", shape=[f, 2 * f]),
            ParamSpec(name="ref_mean", dtype="float32", shape=[f]),
            ParamSpec(name="ref_std", dtype="float32", shape=[f])]


def pack_params(pca: PcaModel, ref_mean: np.ndarray, ref_std: np.ndarray
                ) -> dict[str, np.ndarray]:
    """One asset's parameter set (the ``params.npz`` arrays) from its fit."""
    n_feat, k = pca.components.shape
    p = pca.components
    proj = np.zeros((n_feat, 2 * n_feat))
    proj[:, :k] = p / np.sqrt(2.0 * pca.variances * pca.t2_ref)[None, :]
    proj[:, n_feat:] = (np.eye(n_feat) - p @ p.T) / np.sqrt(2.0 * pca.spe_ref)
    return {"centre": pca.centre.astype(np.float64),
            "inv_scale": (1.0 / pca.scale).astype(np.float64),
            "proj": np.ascontiguousarray(proj),
            "ref_mean": ref_mean.astype(np.float32),
            "ref_std": std_floor(ref_mean, ref_std).astype(np.float32)}


def fit_params(features: np.ndarray, variance: float, quantile: float
               ) -> tuple[dict[str, np.ndarray], PcaModel]:
    """The full family's fit (reference mean/std and PCA) on one asset's feature rows."""
    f = np.asarray(features, np.float32)
    ref_mean = f.mean(axis=0, dtype=np.float64)
    ref_std = f.std(axis=0, dtype=np.float64)
    pca = fit_pca(f, variance=variance, quantile=quantile)
    return pack_params(pca, ref_mean, ref_std), pca


def template_graph(feature_model: onnx.ModelProto, n_feat: int) -> onnx.ModelProto:
    """Feature graph + per-asset deviations + PCA head with gathered parameters."""
    m = onnx.ModelProto()
    m.CopyFrom(feature_model)
    g = m.graph
    specs = param_specs(n_feat)
    g.input.append(helper.make_tensor_value_info(INDEX_INPUT, TensorProto.INT64, ["batch"]))
    for s in specs:
        elem = TensorProto.DOUBLE if s.dtype == "float64" else TensorProto.FLOAT
        g.input.append(helper.make_tensor_value_info(s.input_name, elem, ["sets", *s.shape]))
    g.initializer.extend([
        numpy_helper.from_array(np.array([n_feat, n_feat], dtype=np.int64), "tpl_split"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "tpl_axis1"),
    ])

    def gather(name: str) -> onnx.NodeProto:
        return helper.make_node("Gather", [f"param_{name}", INDEX_INPUT], [f"row_{name}"],
                                axis=0)

    g.node.extend([
        *(gather(s.name) for s in specs),
        # Deviations as _with_deviations computes them, against the asset's own reference.
        helper.make_node("Sub", [OUTPUT_NAME, "row_ref_mean"], ["dev_centred"]),
        helper.make_node("Div", ["dev_centred", "row_ref_std"], [DEVIATIONS_OUTPUT]),
        # The head of trainer.anomaly.pca_graph, its constants now per row.
        helper.make_node("Cast", [OUTPUT_NAME], ["f64"], to=TensorProto.DOUBLE),
        helper.make_node("Sub", ["f64", "row_centre"], ["fc"]),
        helper.make_node("Mul", ["fc", "row_inv_scale"], ["z"]),
        helper.make_node("Unsqueeze", ["z", "tpl_axis1"], ["z3"]),
        helper.make_node("MatMul", ["z3", "row_proj"], ["zp3"]),
        helper.make_node("Squeeze", ["zp3", "tpl_axis1"], ["zp"]),
        *score_nodes("tpl_split", "tpl_axis1"),
    ])
    del g.output[:]
    # Typed, so the learner can cut the feature subgraph out (feature_model_of).
    g.value_info.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT,
                                                      ["batch", n_feat]))
    g.output.extend([
        *(helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch"])
          for n in (SCORE_OUTPUT, T2_OUTPUT, SPE_OUTPUT)),
        helper.make_tensor_value_info(DEVIATIONS_OUTPUT, TensorProto.FLOAT, ["batch", n_feat]),
    ])
    g.name = "forewarn_anomaly_template"
    m.opset_import[0].version = OPSET
    onnx.checker.check_model(m, full_check=True)
    return m


def feature_model_of(template: onnx.ModelProto | bytes) -> onnx.ModelProto:
    """The template's own feature subgraph (``window`` -> ``features``), for the learner.

    Cut out of the signed graph rather than rebuilt from the config, so training on
    site and serving cannot compute features differently.
    """
    m = template if isinstance(template, onnx.ModelProto) else onnx.load_from_string(template)
    return utils.Extractor(m).extract_model([INPUT_NAME], [OUTPUT_NAME])


def run_template(sess: Any, windows: np.ndarray, params: dict[str, np.ndarray], *,
                 batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Scores and deviations of ``windows`` under one parameter set."""
    x = np.ascontiguousarray(windows, dtype=np.float32)
    specs = param_specs(int(params["centre"].shape[0]))
    feeds = stack_feeds([params], specs)
    scores, devs = [], []
    for i in range(0, len(x), batch):
        part = x[i:i + batch]
        s, d = sess.run([SCORE_OUTPUT, DEVIATIONS_OUTPUT],
                        {INPUT_NAME: part, INDEX_INPUT: np.zeros(len(part), np.int64),
                         **feeds})
        scores.append(s)
        devs.append(d)
    if not scores:
        return np.empty(0), np.empty((0, specs[0].shape[0]), np.float32)
    return np.concatenate(scores).astype(np.float64), np.concatenate(devs)


def as_template(cfg: TrainingConfig, feature_model: onnx.ModelProto, f_train: np.ndarray,
                self_test_windows: np.ndarray, fields: dict[str, Any]
                ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Turn the manifest ``fields`` of a PCA fit into a template's; returns the graph and
    the parameter set of this fit (its test metrics are scored with it).

    The template's self-test runs the fixed probe parameters
    (:func:`edge.models.template.probe_params`), which the agent can build without any
    site's data; each site's parameters bring their own self-test.
    """
    c, mc = cfg.commissioning, cfg.model
    if c is None or not isinstance(mc, PcaSection):  # the config refuses both
        raise ConfigError(f"commissioning → model.family {mc.family!r} → templates exist "
                          "for the pca family only")
    n_feat = int(f_train.shape[1])
    params, _ = fit_params(f_train, mc.variance, mc.quantile)
    model = template_graph(feature_model, n_feat)
    specs = param_specs(n_feat)
    probe = run_template(session(model), self_test_windows, probe_params(specs))[0]
    fields["kind"] = "template"
    fields["commissioning"] = CommissioningSpec(
        rows=c.rows, holdout_share=c.holdout_share, tail_alarm_budget=c.tail_alarm_budget,
        on_verification_failure=c.on_verification_failure,
        min_window_share=c.min_window_share,
        pca=PcaFitSpec(variance=mc.variance, quantile=mc.quantile), params=specs,
    ).model_dump(mode="json")
    fields["self_test"] = self_test_cases(self_test_windows, probe)
    fields["description"] = (fields.get("description") or "") + (
        " Template: each asset's parameters are learned on site from its first "
        f"{c.rows} rows.")
    return model, params
