"""C-MAPSS FD002 (six flight conditions): per-regime standardisation runs inside the
bundle's graph, driven by the operating settings carried in the window, and agrees
with an independent numpy pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edge.models.bundle import load_bundle
from edge.models.signing import generate_keypair, load_private_key
from trainer.cmapss import load_cmapss
from trainer.config import load_config
from trainer.export import write_bundle
from trainer.features import reference_features
from trainer.pipeline import TrainingRun, train
from trainer.regimes import RegimeNorm, fit_regimes, normalise
from trainer.sources import load_training_data
from trainer.windows import last_window, unit_windows

CONFIG = Path(__file__).resolve().parents[2] / "trainer" / "configs" / "cmapss_fd002.toml"


@pytest.fixture(scope="module")
def fd002(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainingRun, Path, Path, Path]:
    root = tmp_path_factory.mktemp("fd002")
    generate_keypair(root / "k.key", root / "k.pub")
    text = CONFIG.read_text()
    assert "n_estimators = " in text
    small = root / "small.toml"
    small.write_text(text.replace("n_estimators = ", "n_estimators = 20 #"))
    cfg = load_config(small)
    run = train(cfg, load_training_data(cfg), config_name="small.toml", version="s1")
    bundle = write_bundle(root / "out", run.manifest_fields, run.model,
                          load_private_key(root / "k.key"))
    return run, bundle, root / "k.pub", small


def _regime(cfg_path: Path) -> RegimeNorm:
    cfg = load_config(cfg_path)
    series = np.concatenate([u.signals(cfg.inputs) for u in load_cmapss("FD002").train], axis=1)
    n = len(cfg.data.signals)
    return fit_regimes(cfg.data.signals, cfg.regimes.settings, series[:n], series[n:],
                       cfg.regimes.decimals, cfg.regimes.min_share)


def test_manifest_carries_settings_and_six_regimes(fd002: tuple) -> None:  # type: ignore[type-arg]
    _, bundle, pub, _ = fd002
    m = load_bundle(bundle, [pub]).manifest
    assert m.signal_names[-3:] == ["op1", "op2", "op3"] and len(m.signals) == 17
    assert len(m.output.feature_names) == 14 * 6  # features of the sensors only
    reg = m.lineage["regimes"]
    assert reg["regimes"] == 6 and reg["settings"] == ["op1", "op2", "op3"]
    # The six FD002 set points (altitude kft, Mach, throttle resolver angle).
    got = sorted((round(a), round(b, 2), round(c)) for a, b, c in reg["centroids"])
    assert got == [(0, 0.0, 100), (10, 0.25, 100), (20, 0.7, 100), (25, 0.62, 60),
                   (35, 0.84, 100), (42, 0.84, 100)]
    assert m.lineage["data_quality"]["refused"] == {}
    assert m.metrics["test_rmse_capped"] < 25  # 20 trees; the full config reaches ~14


def test_graph_equals_numpy_regime_pipeline(fd002: tuple) -> None:  # type: ignore[type-arg]
    run, bundle, pub, cfg_path = fd002
    m = load_bundle(bundle, [pub]).manifest
    data = load_cmapss("FD002")
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    # Short engines are padded like the official protocol's last window.
    x = np.stack([last_window(u.signals(m.signal_names), m.window) for u in data.test])
    x = x.astype(np.float32)
    score = sess.run(["score"], {"window": x})[0]
    names = m.lineage["config"]["features"]["names"]
    feats = reference_features(normalise(_regime(cfg_path), x), names, 5)
    expected = run.estimator.predict(feats.astype(np.float32))  # type: ignore[attr-defined]
    np.testing.assert_allclose(score, expected, atol=1e-3)
    rmse = float(np.sqrt(np.mean((score - np.minimum(data.test_rul, 125)) ** 2)))
    assert rmse == pytest.approx(m.metrics["test_rmse_capped"], rel=1e-5)


def test_settings_drive_the_normalisation(fd002: tuple) -> None:  # type: ignore[type-arg]
    _, bundle, pub, _ = fd002
    m = load_bundle(bundle, [pub]).manifest
    data = load_cmapss("FD002")
    x = unit_windows(data.train[:1], m.signal_names, m.window, 10, 125.0)[0]
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    dev = sess.run(["deviations"], {"window": x})[0]
    # The same sensor readings labelled with a different (wrong) flight condition
    # are far from anything seen in training: the lookup really uses the settings.
    wrong = x.copy()
    wrong[:, -3:, :] = np.array([42.0, 0.84, 100.0], dtype=np.float32)[None, :, None]
    wrong[:, -3:, :] = np.where(x[:, -3:, :1] > 41, np.array([0.0, 0.0, 100.0],
                                dtype=np.float32)[None, :, None], wrong[:, -3:, :])
    dev_wrong = sess.run(["deviations"], {"window": wrong})[0]
    mean_cols = [i for i, n in enumerate(m.output.feature_names) if n.endswith(":mean")]
    assert np.abs(dev[:, mean_cols]).mean() < 3
    assert np.abs(dev_wrong[:, mean_cols]).mean() > 3 * np.abs(dev[:, mean_cols]).mean()


def test_retraining_gives_the_same_graph_bytes(fd002: tuple) -> None:  # type: ignore[type-arg]
    run, _, _, cfg_path = fd002
    cfg = load_config(cfg_path)
    again = train(cfg, load_training_data(cfg), config_name="small.toml", version="s1")
    assert again.model.SerializeToString() == run.model.SerializeToString()
    assert again.manifest_fields["fingerprint"] == run.manifest_fields["fingerprint"]
