"""Train on the packaged C-MAPSS copy, export a signed bundle, and hold it to the
scikit-learn pipeline: same predictions, valid manifest, good signature, and a
byte-identical model.onnx when trained again."""

from __future__ import annotations

import argparse
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edge.bundle import load_bundle, read_manifest
from edge.errors import ConfigError, SignatureError
from edge.signing import generate_keypair, load_private_key, load_trusted_keys, verify_bundle
from trainer.cli import DEFAULT_CONFIG, register_train, train_from_config
from trainer.data import last_window, load_cmapss, unit_windows
from trainer.export import write_bundle
from trainer.features import reference_features
from trainer.models import load_config
from trainer.pipeline import train

# The shipped config with a small forest, so the file runs in seconds.
SMALL = {
    "n_estimators = 300": "n_estimators = 25",
    'name = "cmapss-fd001"': 'name = "cmapss-fd001-small"',
}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train")
    generate_keypair(root / "keys" / "signing.key", root / "keys" / "signing.pub")
    text = DEFAULT_CONFIG.read_text()
    for old, new in SMALL.items():
        assert old in text, f"{DEFAULT_CONFIG} no longer contains {old!r}"
        text = text.replace(old, new)
    (root / "small.toml").write_text(text)
    return {"root": root, "config": root / "small.toml", "key": root / "keys" / "signing.key",
            "pub": root / "keys" / "signing.pub"}


@pytest.fixture(scope="module")
def run_and_bundle(work: dict[str, Path]) -> tuple[object, Path]:
    cfg = load_config(work["config"])
    run = train(cfg, load_cmapss(cfg.data.subset), config_name="small.toml", version="r1")
    bundle = write_bundle(work["root"] / "out1", run.manifest_fields, run.model,
                          load_private_key(work["key"]))
    return run, bundle


def test_loader_shapes_and_targets() -> None:
    data = load_cmapss("FD001")
    assert (len(data.train), len(data.test), data.test_rul.shape) == (100, 100, (100,))
    assert data.train[0].sensors.shape[1] == 21 and data.train[0].cycles[0] == 1
    x, y, units = unit_windows(data.train[:2], ["s2", "s9"], 30, 1, 125.0)
    n0 = len(data.train[0]) - 29
    assert x.shape == (n0 + len(data.train[1]) - 29, 2, 30)
    assert y[n0 - 1] == 0.0 and y.max() == 125.0  # capped, and 0 at the last cycle
    last = data.train[0].signals(["s2", "s9"])[:, -30:]
    assert np.array_equal(x[n0 - 1], last.astype(np.float32))
    assert set(units.tolist()) == {data.train[0].unit, data.train[1].unit}


def test_packaged_copy_equals_shared_originals(shared_datasets: Path) -> None:
    packaged = load_cmapss("FD002")
    original = load_cmapss("FD002", shared_datasets / "cmapss")
    assert packaged.sha256 == original.sha256
    assert original.files["train"].suffix == ".txt"
    assert np.array_equal(packaged.test[-1].sensors, original.test[-1].sensors)
    # FD002 has test engines shorter than a window: they are padded, not dropped.
    short = min(packaged.test, key=len)
    assert len(short) < 30 and last_window(short.signals(["s2"]), 30).shape == (1, 30)


def test_bundle_loads_and_signature_verifies(run_and_bundle: tuple[object, Path],
                                             work: dict[str, Path]) -> None:
    _, bundle = run_and_bundle
    loaded = load_bundle(bundle, [work["pub"]])
    m = loaded.manifest
    assert loaded.ident == "cmapss-fd001-small/r1"
    assert verify_bundle(bundle, load_trusted_keys([work["pub"]])) == loaded.signed_by
    assert m.signal_names[:3] == ["s2", "s3", "s4"] and len(m.signals) == 14
    assert all(s.min is not None and s.max is not None and s.min < s.max for s in m.signals)
    assert (m.window, m.hop, m.sample_period_s, m.input_name) == (30, 1, 1.0, "window")
    assert m.output.kind == "rul" and m.output.alert_when == "below"
    assert len(m.output.feature_names) == 84
    assert set(m.reference.features) == set(m.output.feature_names)
    assert m.reference.score is not None and len(m.reference.score.edges) == 9
    assert abs(sum(m.reference.score.proportions) - 1.0) < 1e-9
    assert (m.thresholds.warning, m.thresholds.critical, m.thresholds.reset) == (30, 15, 40)
    for key in ("train_rmse", "validation_rmse", "test_rmse", "test_nasa_score"):
        assert np.isfinite(m.metrics[key])
    assert len(m.fingerprint) == 64 and len(m.self_test) == 4
    assert set(m.libraries) >= {"numpy", "scikit-learn", "skl2onnx", "onnx", "onnxruntime"}

    # Tampering with the manifest breaks the signature.
    manifest = bundle / "manifest.json"
    original = manifest.read_text()
    try:
        manifest.write_text(original.replace('"warning": 30.0', '"warning": 3.0'))
        with pytest.raises(SignatureError):
            load_bundle(bundle, [work["pub"]])
    finally:
        manifest.write_text(original)


def test_onnx_matches_sklearn_pipeline(run_and_bundle: tuple[object, Path]) -> None:
    run, bundle = run_and_bundle
    m = read_manifest(bundle / "manifest.json")
    data = load_cmapss("FD001")
    x, _, _ = unit_windows(data.test, m.signal_names, m.window, 1, 125.0)
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    score, dev = sess.run(["score", "deviations"], {"window": x})
    assert score.shape == (len(x),) and score.dtype == np.float32

    centre = list(m.lineage["feature_centre"].values())
    feats = reference_features(x, m.lineage["config"]["features"]["names"],
                               m.lineage["config"]["features"]["last_n"], centre)
    expected = run.estimator.predict(feats)  # type: ignore[attr-defined]
    np.testing.assert_allclose(score, expected, rtol=0, atol=1e-4)

    ref_mean = np.array([m.reference.features[n].mean for n in m.output.feature_names])
    ref_std = np.array([m.reference.features[n].std for n in m.output.feature_names])
    np.testing.assert_allclose(dev, (feats - ref_mean) / ref_std, rtol=1e-4, atol=1e-3)

    # The manifest's test RMSE is the official protocol: last window of each engine.
    last = np.stack([last_window(u.signals(m.signal_names), 30) for u in data.test])
    p = sess.run(["score"], {"window": last.astype(np.float32)})[0]
    rmse = float(np.sqrt(np.mean((p - data.test_rul) ** 2)))
    assert rmse == pytest.approx(m.metrics["test_rmse"], rel=1e-6)
    assert rmse < 25  # even 25 trees beat predicting the mean (~41 cycles)

    for case in m.self_test:
        win = np.asarray(case.window, dtype=np.float32)[None]
        got = sess.run(["score"], {"window": win})[0][0]
        assert abs(got - case.expected) <= case.tolerance


def test_cli_retrains_byte_identical(run_and_bundle: tuple[object, Path],
                                     work: dict[str, Path]) -> None:
    _, first = run_and_bundle
    parser = argparse.ArgumentParser(prog="forewarn")
    register_train(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([
        "train", "--config", str(work["config"]), "--out", str(work["root"] / "out2"),
        "--key", str(work["key"]), "--version", "r2",
    ])
    out = io.StringIO()
    with redirect_stdout(out):
        assert args.func(args) == 0
    second = work["root"] / "out2" / "cmapss-fd001-small" / "r2"
    assert str(second) in out.getvalue() and "test_rmse" in out.getvalue()
    assert (second / "model.onnx").read_bytes() == (first / "model.onnx").read_bytes()
    a = json.loads((first / "manifest.json").read_text())
    b = json.loads((second / "manifest.json").read_text())
    assert a["model_sha256"] == b["model_sha256"] and a["fingerprint"] == b["fingerprint"]
    assert a["metrics"] == b["metrics"]

    # The same version again is refused rather than silently replaced.
    with redirect_stdout(io.StringIO()):
        assert args.func(args) == 2


def test_train_from_config_fails_early_on_bad_input(work: dict[str, Path]) -> None:
    bad = work["root"] / "bad.toml"
    bad.write_text(work["config"].read_text().replace("[target]", "[target]\nrul_cop = 1"))
    with pytest.raises(ConfigError, match=r"target\.rul_cop"):
        train_from_config(bad, work["root"] / "out3", work["key"], progress=None)
    with pytest.raises(ConfigError, match="private key not found"):
        train_from_config(work["config"], work["root"] / "out3", work["root"] / "nope.key",
                          progress=None)


def test_default_config_is_the_good_one() -> None:
    cfg = load_config(DEFAULT_CONFIG)
    assert cfg.bundle.name == "cmapss-fd001" and cfg.data.subset == "FD001"
    assert cfg.model.params.n_estimators >= 300 and cfg.target.rul_cap == 125
    assert (cfg.window.length, cfg.window.hop) == (30, 1)
