"""`forewarn evaluate` on the real SKAB files and a trained SKAB bundle (needs the shared
data sets), and on C-MAPSS bundles trained here (the packaged FD001/FD002 copies)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.models.bundle import load_bundle
from edge.models.infer import Scorer
from tests.bundlefactory import train_fleet_bundle
from tests.conftest import TrainedBundle
from trainer.anomaly_pipeline import FEED_BLOCK, feed, window_set
from trainer.config import load_config
from trainer.evaluate import evaluate_skab, holdout_folds
from trainer.report import write_report
from trainer.skab import load_labelled

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "trainer" / "configs" / "skab_pca.toml"
FD002_CONFIG = REPO / "trainer" / "configs" / "cmapss_fd002.toml"


def test_per_file_protocol_beats_the_published_skab_leaderboard(
        shared_datasets: Path, tmp_path: Path) -> None:
    ev = evaluate_skab(shared_datasets / "skab", config=CONFIG, progress=None)
    m = ev.metrics
    # Published best: Conv-AE F1 0.78 / FAR 13.55 %, MSET 0.78 / FAR 39.73 %.
    assert m["f1"] >= 0.80 and m["far_pct"] <= 15.0, m
    assert m["tp"] + m["fp"] + m["fn"] + m["tn"] == sum(len(a.row_ts) for a in ev.assets)
    assert m["anomalies_alerted"] >= 0.8 * m["anomalies"]
    report = tmp_path / "r.html"
    ev.command = "forewarn evaluate --dataset skab --config skab_pca.toml"
    write_report(ev, report)
    text = report.read_text()
    assert "SKAB outlier-detection protocol" in text and text.count("<svg") >= len(ev.assets)
    # Each figure names the protocol that produced it: these are no deployable bundle's.
    refit = "per-file refit: a model fit on each file&#x27;s first 400 rows"
    assert f"<td>f1</td><td>{m['f1']:.6g}</td><td>{refit}" in text
    assert "http" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_trained_bundle_is_signed_loads_in_the_agent_and_replays_identically(
        shared_datasets: Path, tmp_path: Path) -> None:
    path, pub = train_fleet_bundle(CONFIG, tmp_path, shared_datasets / "skab")
    bundle = load_bundle(path, [pub])
    m = bundle.manifest
    assert m.output.kind == "anomaly" and m.output.alert_when == "above"
    assert m.thresholds.false_alarm_rate is not None and "alarm" in m.thresholds.rationale
    assert set(m.reference.features) == set(m.output.feature_names)
    Scorer(bundle)  # refuses the bundle unless its self-test windows give their outputs
    # Same windows through the agent's WindowSet as add_point one by one: same scores.
    f = load_labelled(shared_datasets / "skab", ("valve1",))[0]
    cfg = load_config(CONFIG)
    x = f.select(m.signal_names)[:, :300]
    ts, wins = feed(window_set(m.signal_names, 1.0, m.window, m.hop, 3), "a", f.ts[:300], x)
    ws = window_set(m.signal_names, 1.0, m.window, m.hop, 3)
    for j in range(300):
        for si, s in enumerate(m.signal_names):
            ws.add_point("a", s, float(f.ts[j]), float(x[si, j]))
    # One lateness bound past the last row closes every slot up to it, none after.
    ws.add_point("a", m.signal_names[0], float(round(f.ts[299])) + FEED_BLOCK + 1, 0.0)
    slow = ws.drain()
    assert [w.end_ts for w in slow] == ts.tolist()
    np.testing.assert_array_equal(np.stack([w.values for w in slow]), wins)
    assert cfg.bundle.name == m.name
    ev = evaluate_skab(shared_datasets / "skab", bundle=bundle, progress=None)
    assert 0.0 < ev.metrics["f1"] <= 1.0
    assert ev.protocol_of("f1") == f"the deployable bundle {bundle.ident} as trained"


def test_cli_writes_report(shared_datasets: Path, tmp_path: Path) -> None:
    out = tmp_path / "skab.html"
    res = subprocess.run(
        [sys.executable, "-m", "edge.cli", "evaluate", "--dataset", "skab", "--data",
         str(shared_datasets / "skab"), "--config", str(CONFIG), "--report", str(out)],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "f1" in res.stdout and out.stat().st_size > 10_000


def test_holdout_tunes_on_one_half_and_counts_the_other(shared_datasets: Path) -> None:
    ev = evaluate_skab(shared_datasets / "skab", config=CONFIG, holdout="group", progress=None)
    m = ev.metrics
    names = [a.asset.replace("-", "/", 1) for a in ev.assets]
    fold_a, fold_b = holdout_folds(names, "group")
    # Every file is counted exactly once, with the level tuned on the other fold.
    assert m["tp"] + m["fp"] + m["fn"] + m["tn"] == sum(len(a.row_ts) for a in ev.assets)
    for i, test in ((1, fold_b), (2, fold_a)):
        assert m[f"fold{i}_tune_files"] == len(fold_a if i == 1 else fold_b)
        assert {ev.assets[j].threshold for j in test} == {m[f"fold{i}_level"]}
        assert 0.0 <= m[f"fold{i}_test_f1"] <= 1.0 and m[f"fold{i}_level"] > 0
    assert "Held-out protocol" in ev.protocol and len(ev.notes) == 2
    assert 0.0 < m["insample_f1"] <= 1.0 and "f1" in m
    assert ev.protocol_of("f1").endswith("tuned on the other half (held out)")
    assert ev.protocol_of("insample_f1").endswith("of the config (in-sample)")


def test_cmapss_reports_raw_capped_truth_and_the_floor(cmapss_bundle: TrainedBundle,
                                                       tmp_path: Path) -> None:
    from trainer.cmapss import load_cmapss
    from trainer.evaluate import evaluate_cmapss

    bundle = load_bundle(cmapss_bundle.path, [cmapss_bundle.public_key])
    ev = evaluate_cmapss(bundle, "FD001", None, progress=None)
    m, trained = ev.metrics, bundle.manifest.metrics
    # The replay's last windows are the trainer's last windows (no held slot after them).
    for k in ("test_rmse", "test_rmse_capped", "test_nasa_score", "test_nasa_score_capped"):
        assert abs(m[k] - trained[k]) <= 1e-4 * trained[k], k
    truth = load_cmapss("FD001").test_rul
    assert m["rul_cap"] == 125.0
    assert abs(m["floor_rmse_uncapped"]
               - float(np.sqrt(np.mean(np.clip(truth - 125.0, 0, None) ** 2)))) < 1e-9
    assert m["test_rmse"] > m["floor_rmse_uncapped"] > 0
    assert ev.readings > 100_000 and ev.seconds > 0 and ev.cpu_seconds > 0
    report = tmp_path / "c.html"
    write_report(ev, report)
    text = report.read_text()
    assert "R_max = 125" in text and "Floor against uncapped truth" in text
    assert f"Figures from: the deployable bundle {bundle.ident} as trained, on the C-MAPSS " \
           "FD001 official test set" in text
    assert m["test_engines"] == 100 and m["test_engines_unscored"] == 0
    assert "readings/s wall" in text


@pytest.fixture(scope="module")
def fd002_bundle(tmp_path_factory: pytest.TempPathFactory) -> TrainedBundle:
    """A small FD002 bundle (20 trees): FD002's test set holds engines shorter than the
    30-cycle window, which training pads and evaluate must score too."""
    from edge.models.signing import generate_keypair
    from trainer.cli import train_from_config

    root = tmp_path_factory.mktemp("fd002eval")
    generate_keypair(root / "k.key", root / "k.pub")
    text = FD002_CONFIG.read_text()
    assert "n_estimators = " in text
    (root / "small.toml").write_text(text.replace("n_estimators = ", "n_estimators = 20 #"))
    path = train_from_config(root / "small.toml", root / "models", root / "k.key",
                             version="e1", progress=None)
    return TrainedBundle(path, root / "k.pub")


def _evaluate(bundle: TrainedBundle, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge.cli", "evaluate", "--bundle",
                           str(bundle.path), "--key", str(bundle.public_key), *extra],
                          capture_output=True, text=True, timeout=300, check=False)


def _printed(stdout: str) -> dict[str, float]:
    return {ln.split()[0]: float(ln.split()[1]) for ln in stdout.splitlines()
            if ln.startswith("  ") and len(ln.split()) == 2}


def test_evaluate_scores_the_manifests_subset_every_engine_the_trainers_number(
        fd002_bundle: TrainedBundle) -> None:
    from trainer.cmapss import load_cmapss

    manifest = load_bundle(fd002_bundle.path, [fd002_bundle.public_key]).manifest
    assert manifest.lineage["subset"] == "FD002"
    run = _evaluate(fd002_bundle)  # no --dataset, no --subset: the manifest's
    assert run.returncode == 0, run.stderr
    assert "data: C-MAPSS FD002 (from the manifest's lineage)" in run.stdout
    assert f"figures from: the deployable bundle {manifest.name}/e1 as trained" in run.stdout
    got, test = _printed(run.stdout), load_cmapss("FD002").test
    short = sum(1 for u in test if len(u) < manifest.window)
    assert short > 0  # the case this guards: engines shorter than a window
    assert got["test_engines"] == len(test) == manifest.metrics["test_units"]
    assert got["test_engines_unscored"] == 0 and got["test_engines_padded"] == short
    for k in ("test_rmse", "test_rmse_capped", "test_nasa_score", "test_nasa_score_capped"):
        # The same number, to the six digits printed.
        assert f"{got[k]:.6g}" == f"{manifest.metrics[k]:.6g}", (k, got[k], manifest.metrics[k])


def test_another_subset_is_refused_naming_both_unless_forced(
        fd002_bundle: TrainedBundle) -> None:
    refused = _evaluate(fd002_bundle, "--subset", "FD001")
    assert refused.returncode == 2 and "test_rmse" not in refused.stdout
    assert "--subset FD001" in refused.stderr and "trained on C-MAPSS FD002" in refused.stderr
    assert "--force-subset" in refused.stderr
    forced = _evaluate(fd002_bundle, "--subset", "FD001", "--force-subset")
    assert forced.returncode == 0, forced.stderr
    assert "C-MAPSS FD001, forced (--force-subset) on a bundle trained on FD002" in forced.stdout
    assert _printed(forced.stdout)["test_engines"] == 100  # FD001's test set
