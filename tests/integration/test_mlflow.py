"""`forewarn train --mlflow URI` against local MLflow tracking stores (a SQLite file,
and the plain directory store):
parameters, metrics, the quality report and the bundle are logged, and the bundle
is registered as a model version."""

from __future__ import annotations

import argparse
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import mlflow
import pytest

from edge.models.signing import generate_keypair
from trainer.cli import DEFAULT_CONFIG, register_train


@pytest.mark.parametrize("store", ["sqlite", "file"])
def test_train_logs_and_registers_the_bundle(tmp_path: Path, store: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # Artifacts of a database-backed store go to ./mlruns: keep them in tmp_path.
    monkeypatch.chdir(tmp_path)
    if store == "file":
        # MLflow 3 keeps the plain directory store only behind this opt-in.
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        uri = (tmp_path / "mlruns").as_uri()
    else:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    generate_keypair(tmp_path / "k.key", tmp_path / "k.pub")
    config = tmp_path / "tiny.toml"
    config.write_text(DEFAULT_CONFIG.read_text().replace("n_estimators = 300", "n_estimators = 5")
                      .replace('name = "cmapss-fd001"', 'name = "fd001-tiny"'))
    parser = argparse.ArgumentParser(prog="forewarn")
    register_train(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", "--config", str(config), "--out", str(tmp_path / "m"),
                              "--key", str(tmp_path / "k.key"), "--version", "v1",
                              "--mlflow", uri])
    with redirect_stdout(io.StringIO()):
        assert args.func(args) == 0
    bundle = tmp_path / "m" / "fd001-tiny" / "v1"
    manifest = json.loads((bundle / "manifest.json").read_text())

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    versions = client.search_model_versions("name='fd001-tiny'")
    assert len(versions) == 1
    mv = versions[0]
    assert mv.tags["forewarn.model_sha256"] == manifest["model_sha256"]
    run = client.get_run(mv.run_id)
    assert run.data.params["model.params.n_estimators"] == "5"
    assert run.data.params["data.subset"] == "FD001"
    assert run.data.metrics["test_rmse"] == pytest.approx(manifest["metrics"]["test_rmse"])
    assert run.data.tags["forewarn.fingerprint"] == manifest["fingerprint"]
    # The logged bundle is the written one, byte for byte, signature included.
    local = Path(client.download_artifacts(mv.run_id, "bundle", str(tmp_path / "dl")))
    for f in ("model.onnx", "manifest.json", "SIGNATURE"):
        assert (local / f).read_bytes() == (bundle / f).read_bytes()
    quality = json.loads(Path(client.download_artifacts(
        mv.run_id, "report/data_quality.json", str(tmp_path / "dl2"))).read_text())
    assert quality["refused"] == {} and "s2" in quality["signals"]

    # A second bundle of the same name becomes version 2.
    args2 = parser.parse_args(["train", "--config", str(config), "--out", str(tmp_path / "m"),
                               "--key", str(tmp_path / "k.key"), "--version", "v2",
                               "--mlflow", uri])
    with redirect_stdout(io.StringIO()):
        assert args2.func(args2) == 0
    assert sorted(int(v.version) for v in
                  client.search_model_versions("name='fd001-tiny'")) == [1, 2]
