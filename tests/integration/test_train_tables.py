"""Training every family from a plant's own table: the committed example CSV through
the real CLI (train, bundle verify, model install), Parquet with one asset and many,
each label kind, and the agent's exported history round-tripping into training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edge.core.errors import ConfigError
from edge.models.bundle import load_bundle
from edge.models.signing import generate_keypair
from trainer.cli import DEFAULT_CONFIG
from trainer.cmapss import load_cmapss
from trainer.examples import make_plant_table
from trainer.families import family_of

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "trainer" / "examples" / "plant_pca.toml"
SIGNALS = ["s2", "s3", "s4", "s7", "s11", "s12"]


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "edge.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("keys")
    generate_keypair(root / "signing.key", root / "signing.pub")
    return root / "signing.key", root / "signing.pub"


def test_committed_example_is_what_the_script_writes(tmp_path: Path) -> None:
    make_plant_table.main([str(tmp_path / "plant.csv")])
    committed = REPO / "trainer" / "examples" / "plant.csv"
    assert (tmp_path / "plant.csv").read_bytes() == committed.read_bytes()


def test_example_csv_to_an_installed_bundle(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    key, pub = keys
    r = _cli("train", "--config", EXAMPLE, "--out", tmp_path / "models", "--key", key)
    assert r.returncode == 0, r.stderr
    bundle = Path(r.stdout.splitlines()[0])
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["lineage"]["dataset"] == "table" and m["lineage"]["files"][0]["name"] == "plant.csv"
    assert [(s["name"], s["unit"]) for s in m["signals"]] == [
        ("bearing_temp_C", "degC"), ("flow_l_min", "l/min"), ("vibration_mm_s", "mm/s")]
    # The labelled fault rows of pump-2 lie in the test range only: most of its windows
    # alarm, the healthy test windows do not.
    assert m["metrics"]["test_anomalous_windows"] == 120
    assert m["metrics"]["test_window_recall"] > 0.5
    assert m["metrics"]["test_window_false_alarm_rate"] < 0.02
    # what the agent shows beside the crew's live precision (GET /api/precision)
    assert m["metrics"]["test_window_precision"] > 0.9
    r = _cli("bundle", "verify", bundle, "--key", pub)
    assert r.returncode == 0, r.stderr
    (tmp_path / "state").mkdir()
    r = _cli("model", "install", bundle, "--state-dir", tmp_path / "state", "--key", pub)
    assert r.returncode == 0 and "plant-pca/" in r.stdout, r.stderr


def _anomaly_config(tmp: Path, table: str, family: str = "pca") -> Path:
    model = 'family = "isoforest"\nn_estimators = 20' if family == "isoforest" else \
        'family = "pca"'
    p = tmp / f"{family}.toml"
    p.write_text(f"""
[bundle]
name = "t-{family}"
[data]
dataset = "table"
signals = ["a", "b"]
[data.table]
{table}
[window]
length = 8
[model]
{model}
""")
    return p


def _healthy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = np.cumsum(rng.normal(0, 0.1, n))
    return a, 2 * a + rng.normal(0, 0.05, n)


@pytest.mark.parametrize("family", ["pca", "isoforest"])
def test_parquet_one_asset_row_index(tmp_path: Path, keys: tuple[Path, Path],
                                     family: str) -> None:
    from trainer.anomaly_pipeline import train_from_config

    a, b = _healthy(600, 1)
    pq.write_table(pa.table({"a": a, "b": b}), tmp_path / "one.parquet")
    cfg = _anomaly_config(tmp_path, 'path = "one.parquet"\ntimestamp = ""', family)
    assert family_of(cfg).task == "anomaly"
    bundle = train_from_config(cfg, tmp_path / "models", keys[0], None)
    m = load_bundle(bundle, trusted_keys=[keys[1]]).manifest
    assert m.lineage["model_family"] == family
    assert m.metrics["train_windows"] == int((600 - 8 + 1) * 0.75)


def test_many_assets_long_form_csv(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    from trainer.anomaly_pipeline import train_from_config

    lines = ["ts,asset,signal,value"]
    for k, asset in enumerate(("m1", "m2", "m3")):
        a, b = _healthy(300, k)
        lines += [f"{1e9 + i},{asset},{s},{v:.4f}" for i in range(300)
                  for s, v in (("a", a[i]), ("b", b[i]))]
    (tmp_path / "long.csv").write_text("\n".join(lines) + "\n")
    bundle = train_from_config(_anomaly_config(tmp_path, 'path = "long.csv"'),
                               tmp_path / "models", keys[0], None)
    m = load_bundle(bundle, trusted_keys=[keys[1]]).manifest
    # each asset is windowed on its own: three runs, none crossing into another
    assert m.metrics["train_windows"] == 3 * int((300 - 8 + 1) * 0.75)


def test_exported_history_round_trips_into_training(tmp_path: Path,
                                                    keys: tuple[Path, Path]) -> None:
    from edge.history.export import export
    from edge.history.parquet import ParquetStore
    from trainer.anomaly_pipeline import train_from_config

    store = ParquetStore(tmp_path / "history")
    base = 1_780_000_000.0
    for k, asset in enumerate(("press-1", "press-2")):
        a, b = _healthy(400, 10 + k)
        ts = base + np.arange(400.0)
        store.append(asset, "a", ts, a)
        store.append(asset, "b", ts, b)
    store.append("press-1", "a", [base + 5], [float(_healthy(400, 10)[0][5])])  # redelivery
    store.close()
    n = export(tmp_path / "history", tmp_path / "export.parquet", base, base + 1e6)
    assert n == 1600
    bundle = train_from_config(_anomaly_config(tmp_path, 'path = "export.parquet"'),
                               tmp_path / "models", keys[0], None)
    m = load_bundle(bundle, trusted_keys=[keys[1]]).manifest
    assert m.lineage["files"][0]["name"] == "export.parquet"
    assert m.metrics["train_windows"] == 2 * int((400 - 8 + 1) * 0.75)


def _engines_table(tmp: Path, kind: str) -> Path:
    units = load_cmapss("FD001").train[:12]
    cols: dict[str, list[object]] = {"engine": [], **{s: [] for s in SIGNALS}, "life": []}
    for u in units:
        x = u.signals(SIGNALS)
        n = len(u)
        cols["engine"] += [f"engine-{u.unit}"] * n
        for i, s in enumerate(SIGNALS):
            cols[s] += x[i].tolist()
        cols["life"] += (list(range(n - 1, -1, -1)) if kind == "rul"
                         else [0] * (n - 1) + [1])
    path = tmp / f"engines-{kind}.parquet"
    pq.write_table(pa.table(cols), path)
    return path


@pytest.mark.parametrize("kind", ["rul", "run_to_failure"])
def test_rul_family_learns_from_a_label_column(tmp_path: Path, kind: str) -> None:
    from trainer.config import load_config
    from trainer.pipeline import train
    from trainer.sources import load_training_data

    path = _engines_table(tmp_path, kind)
    text = DEFAULT_CONFIG.read_text()
    edits = {
        'dataset = "cmapss"': 'dataset = "table"',
        "n_estimators = 300": "n_estimators = 25",
        'signals = ["s2", "s3", "s4", "s7", "s8", "s9", "s11", "s12", "s13", "s14", "s15", '
        '"s17", "s20", "s21"]': f"signals = {SIGNALS!r}".replace("'", '"'),
        "[window]": f'[data.table]\npath = "{path.name}"\ntimestamp = ""\n'
                    f'asset_column = "engine"\nlabel_column = "life"\n'
                    f'label_kind = "{kind}"\n\n[window]',
    }
    for old, new in edits.items():
        assert old in text, old
        text = text.replace(old, new)
    (tmp_path / "t.toml").write_text(text)
    cfg = load_config(tmp_path / "t.toml")
    data = load_training_data(cfg, tmp_path)
    ref = load_cmapss("FD001").train[0].signals(SIGNALS)
    first = next(u for u in data.train if u.unit == "engine-1")
    assert len(data.train) == 12 and np.allclose(first.signals(SIGNALS), ref)
    run = train(cfg, data, version="t")
    assert run.manifest_fields["metrics"]["validation_rmse"] < 40


def test_label_errors_say_what_to_write(tmp_path: Path) -> None:
    from trainer.config import load_config
    from trainer.sources import failure_times
    from trainer.tabular import TableSpec, read_source

    p = tmp_path / "bad.toml"
    p.write_text('[bundle]\nname = "x"\n[data]\ndataset = "table"\nsignals = ["a"]\n'
                 '[model]\nfamily = "pca"\n')
    with pytest.raises(ConfigError, match=r'needs \[data.table\] with path = "<file>"'):
        load_config(p)
    p.write_text('[bundle]\nname = "x"\n[data]\ndataset = "table"\nsignals = ["a"]\n')
    with pytest.raises(ConfigError, match=r"dataset='table' needs data\.path"):
        load_config(p)  # no [model] family: gradient_boosting
    (tmp_path / "r.csv").write_text("ts,asset,a,f\n0,e1,1,0\n1,e1,2,1\n2,e1,3,0\n")
    spec = TableSpec(label_column="f", label_kind="run_to_failure")
    t = read_source(spec, tmp_path / "r.csv", ["a"], 1.0)
    with pytest.raises(ConfigError, match=r"r\.csv: line 4, column f: asset e1 has rows "
                                          r"after its failure row"):
        failure_times(t, spec, 1.0)
    p.write_text('[bundle]\nname = "x"\n[model]\nfamily = "svm"\n')
    with pytest.raises(ConfigError, match=r"model\.family → 'svm' → expected one of "
                                          r"gradient_boosting, gradient_boosting_classifier, "
                                          r"pca, isoforest"):
        family_of(p)


def test_train_help_describes_every_dataset_kind() -> None:
    r = _cli("train", "--help")
    assert r.returncode == 0
    for text in ('dataset = "cmapss"', 'dataset = "skab"', 'dataset = "table"',
                 "forewarn export", 'dataset = "history"', "[data.table]", "label_kind",
                 "timestamp_format", "docs/train-your-own-data.md"):
        assert text in r.stdout, text


def test_every_shipped_config_loads_through_the_registry() -> None:
    from trainer.families import families, load_config

    seen: set[str] = set()
    for path in [*sorted((REPO / "trainer" / "configs").glob("*.toml")), EXAMPLE]:
        family, cfg = load_config(path)
        assert isinstance(cfg.model, family.section), path
        assert cfg.model.family == family.name
        seen.add(family.name)
    assert seen == {"gradient_boosting", "pca", "isoforest"}
    assert set(families()) == seen | {"gradient_boosting_classifier"}


def test_old_dataset_keys_say_what_to_write(tmp_path: Path) -> None:
    from trainer.families import load_config

    p = tmp_path / "c.toml"
    p.write_text('[bundle]\nname = "x"\n[data]\ndataset = "history"\nsignals = ["a"]\n'
                 '[model]\nfamily = "pca"\n')
    with pytest.raises(ConfigError, match=r'forewarn export --since \.\.\. --out h\.parquet'):
        load_config(p)
    p.write_text('[bundle]\nname = "x"\n[data]\ndataset = "skab"\n')
    with pytest.raises(ConfigError, match=r'family = "pca" or "isoforest" trains on it'):
        load_config(p)
