"""Train on the packaged C-MAPSS copy, export a signed bundle, and hold it to the
scikit-learn pipeline: same predictions, valid manifest, good signature, and a
byte-identical model.onnx when trained again."""

from __future__ import annotations

import argparse
import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edge.core.errors import ConfigError, SignatureError
from edge.models.bundle import load_bundle, read_manifest
from edge.models.signing import generate_keypair, load_private_key, load_trusted_keys, verify_bundle
from trainer.cli import DEFAULT_CONFIG, register_train, train_from_config
from trainer.cmapss import PACKAGED_ROOT, load_cmapss
from trainer.config import load_config
from trainer.export import write_bundle
from trainer.features import reference_features
from trainer.pipeline import train
from trainer.sources import load_training_data
from trainer.windows import last_window, unit_windows

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
    run = train(cfg, load_training_data(cfg), config_name="small.toml", version="r1")
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
    # Schema 3 (2's ranges, and the deployed alert rule): the training range is what the
    # model has seen (C-MAPSS FD001's train file, rounded outwards); no [quality.ranges]
    # here, so no plausibility bound.
    assert m.schema_version == 3
    assert m.alert_policy is not None and m.alert_policy.direction == "below"
    assert m.alert_policy.rule() == {"k": 1, "n": 1, "clear_after": 3, "cooldown_s": 0.0}
    train = np.concatenate([u.signals(m.signal_names) for u in load_cmapss("FD001").train],
                           axis=1)
    for spec, lo, hi in zip(m.signals, train.min(axis=1), train.max(axis=1), strict=True):
        assert spec.train_min is not None and spec.train_max is not None
        assert spec.train_min <= lo < spec.train_min + 1e-4 + 1e-9
        assert spec.train_max - 1e-4 - 1e-9 < hi <= spec.train_max
        assert spec.plausible_min is None and spec.plausible_max is None
    assert (m.limits.margin, m.limits.clip) == (0.1, False)
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

    # Deviations are in units of the training windows' feature mean and std, and the
    # manifest's drift references describe those deviations (mean 0, std 1).
    x_train = unit_windows(data.train, m.signal_names, m.window, 1, 125.0)[0]
    f_train = reference_features(x_train, m.lineage["config"]["features"]["names"],
                                 m.lineage["config"]["features"]["last_n"], centre)
    ref_mean, ref_std = f_train.mean(axis=0), f_train.std(axis=0)
    np.testing.assert_allclose(dev, (feats - ref_mean) / ref_std, rtol=1e-3, atol=1e-3)
    for n in m.output.feature_names:
        assert abs(m.reference.features[n].mean) < 1e-3
        assert m.reference.features[n].std == pytest.approx(1.0, abs=1e-3)

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
        "--key", str(work["key"]), "--version", "r2", "--data", str(PACKAGED_ROOT),
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


def _variant(work: dict[str, Path], name: str, edits: dict[str, str]) -> Path:
    text = work["config"].read_text()
    for old, new in edits.items():
        assert old in text, old
        text = text.replace(old, new)
    path = work["root"] / name
    path.write_text(text)
    return path


def test_fingerprint_changes_when_and_only_when_data_or_config_change(
        work: dict[str, Path], tmp_path: Path) -> None:
    import gzip
    import shutil

    from trainer.cmapss import PACKAGED_ROOT
    from trainer.pipeline import fingerprint
    from trainer.sources import load_training_data

    def fp(config: Path, root: Path | None = None) -> str:
        cfg = load_config(config)
        return fingerprint(cfg, load_training_data(cfg, config.parent, root))

    base = fp(work["config"])
    assert fp(work["config"]) == base
    # Comments, key order and spelling out a default are not changes of the config.
    same = _variant(work, "same.toml", {"[window]": "# a comment\n[window]",
                                        "bins = 10": "bins = 10\n"})
    assert fp(same) == base
    assert fp(_variant(work, "more.toml", {"n_estimators = 25": "n_estimators = 26"})) != base
    # A plain-text copy of the packaged gzip files is the same data ...
    plain = tmp_path / "plain"
    plain.mkdir()
    for f in PACKAGED_ROOT.glob("*FD001.txt.gz"):
        (plain / f.name.removesuffix(".gz")).write_bytes(gzip.decompress(f.read_bytes()))
    assert fp(work["config"], plain) == base
    # ... and one changed reading is different data.
    edited = tmp_path / "edited"
    shutil.copytree(plain, edited)
    train = edited / "train_FD001.txt"
    lines = train.read_text().splitlines()
    lines[7] = lines[7].replace(lines[7].split()[6], "999.99", 1)
    train.write_text("\n".join(lines) + "\n")
    assert fp(work["config"], edited) != base


def test_classifier_family_outputs_failure_probability(work: dict[str, Path]) -> None:
    from trainer.sources import load_training_data

    config = _variant(work, "clf.toml", {
        'family = "gradient_boosting"': 'family = "gradient_boosting_classifier"',
        "[target]": "[target]\nhorizon = 30"})
    cfg = load_config(config)
    run = train(cfg, load_training_data(cfg), version="c1")
    bundle = write_bundle(work["root"] / "clf", run.manifest_fields, run.model,
                          load_private_key(work["key"]))
    m = load_bundle(bundle, [work["pub"]]).manifest
    assert (m.output.kind, m.output.alert_when) == ("probability", "above")
    assert 0 < m.thresholds.warning < 1 and "best F1" in m.thresholds.rationale
    assert m.metrics["validation_f1"] > 0.8 and 0 <= m.metrics["test_f1"] <= 1
    data = load_cmapss("FD001")
    x, _y, _ = unit_windows(data.test[:20], m.signal_names, m.window, 1, 125.0)
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    p = sess.run(["score"], {"window": x})[0]
    assert p.shape == (len(x),) and p.min() >= 0 and p.max() <= 1
    centre = list(m.lineage["feature_centre"].values())
    feats = reference_features(x, m.lineage["config"]["features"]["names"], 5, centre)
    expected = run.estimator.predict_proba(feats)[:, 1]  # type: ignore[attr-defined]
    np.testing.assert_allclose(p, expected, atol=1e-4)


def test_trains_from_a_long_csv_with_failure_times(work: dict[str, Path]) -> None:
    from trainer.sources import load_training_data

    data = load_cmapss("FD001")
    signals = ["s2", "s3", "s4", "s7", "s11", "s12"]
    rows, failures = ["ts,asset,signal,value"], {}
    for u in data.train[:12]:
        x = u.signals(signals)
        t0 = 1_700_000_000 + 100_000 * u.unit
        for i, s in enumerate(signals):
            rows += [f"{t0 + 60 * k},engine-{u.unit},{s},{x[i, k]:.2f}" for k in range(len(u))]
        failures[f"engine-{u.unit}"] = t0 + 60 * (len(u) - 1)
    (work["root"] / "engines.csv").write_text("\n".join(rows) + "\n")
    labels = "\n".join(f'"{a}" = {t}' for a, t in failures.items())
    config = _variant(work, "table.toml", {
        'dataset = "cmapss"': 'dataset = "table"\npath = "engines.csv"',
        'signals = ["s2", "s3", "s4", "s7", "s8", "s9", "s11", "s12", "s13", "s14", "s15", '
        '"s17", "s20", "s21"]': f"signals = {signals!r}".replace("'", '"'),
        "sample_period_s = 1.0": "sample_period_s = 60.0",
        "[thresholds]": f"[labels.failures]\n{labels}\n\n[thresholds]"})
    cfg = load_config(config)
    loaded = load_training_data(cfg, config.parent)
    assert len(loaded.train) == 12 and loaded.files[0]["name"] == "engines.csv"
    assert np.allclose(loaded.train[0].signals(signals), data.train[0].signals(signals))
    run = train(cfg, loaded, version="t1")
    f = run.manifest_fields
    assert f["sample_period_s"] == 60.0 and f["lineage"]["dataset"] == "table"
    assert f["lineage"]["data_quality"]["refused"] == {}
    assert f["metrics"]["validation_rmse"] < 40 and "test_rmse" not in f["metrics"]


def test_constant_sensor_is_refused_by_name_and_the_override_is_recorded(
        work: dict[str, Path]) -> None:
    from trainer.quality import DataQualityError

    with_s1 = {'signals = ["s2",': 'signals = ["s1", "s2",',
               "n_estimators = 25": "n_estimators = 3"}
    refused = _variant(work, "s1.toml", with_s1)
    with pytest.raises(DataQualityError, match=r"signal 's1': constant \(518\.67\)"):
        train_from_config(refused, work["root"] / "q", work["key"], progress=None)
    allowed = _variant(work, "s1ok.toml", {**with_s1, "[reference]":
                                           '[quality]\nallow = ["s1"]\n\n[reference]'})
    bundle = train_from_config(allowed, work["root"] / "q", work["key"], progress=None)
    quality = read_manifest(bundle / "manifest.json").lineage["data_quality"]
    assert quality["allowed_by_config"] == {"s1": "constant (518.67) in every asset"}
    assert quality["signals"]["s1"]["readings"] == 20631


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    from trainer.evaluate import register as register_evaluate
    from trainer.replay import register as register_replay

    parser = argparse.ArgumentParser(prog="forewarn")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in (register_train, register_evaluate, register_replay):
        register(sub)
    return parser, dict(sub.choices)


@pytest.mark.parametrize("command", ["train", "evaluate", "replay"])
def test_one_data_flag_with_the_old_spelling_hidden_and_deprecated(command: str) -> None:
    parser, commands = _parser()
    required = ["--key", "k.key"] if command == "train" else []
    err = io.StringIO()
    with redirect_stderr(err):
        new = parser.parse_args([command, *required, "--data", "/d/new"])
    assert new.data == Path("/d/new") and err.getvalue() == ""
    with redirect_stderr(err):
        old = parser.parse_args([command, *required, "--data-root", "/d/old"])
    assert old.data == Path("/d/old")
    assert "--data-root is deprecated; write --data" in err.getvalue()
    text = commands[command].format_help()
    assert "--data PATH" in text and "--data-root" not in text


def test_help_describes_every_dataset_kind_with_an_example() -> None:
    helps = {name: p.format_help() for name, p in _parser()[1].items()}
    for kind in ('dataset = "cmapss"', 'dataset = "skab"', 'dataset = "table"',
                 'dataset = "history"'):
        assert kind in helps["train"], kind
    ev = helps["evaluate"]
    assert "C-MAPSS" in ev and "forewarn evaluate --bundle models/cmapss-fd002" in ev
    assert "per-file refit" in ev and "--config trainer/configs/skab_pca.toml" in ev
    assert "deployable bundle as trained" in ev and "--force-subset" in ev
    assert "forewarn replay --subset FD004 --data" in helps["replay"]
    for text in helps.values():
        assert "--per-file" not in text
