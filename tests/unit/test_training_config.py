"""The one training config: shared sections once, [model] a union of the registry's
sections, the family's own sections refused elsewhere, fingerprints kept."""

from __future__ import annotations

import hashlib
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edge.core.errors import ConfigError
from trainer.config import ModelSection, TrainingConfig, load_config, validate
from trainer.families import families

REPO = Path(__file__).resolve().parents[2]
PCA = {"bundle": {"name": "x"}, "data": {"signals": ["a"]}, "model": {"family": "pca"}}
GB = {"bundle": {"name": "x"}}


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text('[bundle]\nname = "x"\n' + text)
    return p


def test_the_model_union_is_the_registrys_sections() -> None:
    union = typing.get_args(typing.get_args(ModelSection)[0])
    assert set(union) == {f.section for f in families().values()}


def test_each_pipeline_has_its_defaults_in_the_shared_sections() -> None:
    pca, gb = TrainingConfig.model_validate(PCA), TrainingConfig.model_validate(GB)
    assert (pca.window.length, pca.alerts.k, pca.alerts.n, pca.alerts.clear_after) == \
        (10, 3, 5, 5)
    assert (pca.data.dataset, pca.data.validation_fraction) == ("skab", 0.25)
    assert (gb.window.length, gb.alerts.k, gb.alerts.n, gb.alerts.clear_after) == (30, 1, 1, 3)
    assert (gb.data.dataset, gb.data.validation_fraction) == ("cmapss", 0.2)
    assert gb.model.family == "gradient_boosting"  # no [model]: the default family
    # A value given wins over the pipeline's default.
    assert TrainingConfig.model_validate({**PCA, "window": {"length": 24}}).window.length == 24


@pytest.mark.parametrize(("text", "match"), [
    ('[model]\nfamily = "pca"\n[data]\nsignals = ["a"]\n[target]\nrul_cap = 99\n',
     r"c\.toml: invalid training config: target → model\.family 'pca' → \[target\] is for "
     r"gradient_boosting and gradient_boosting_classifier only"),
    ("[calibration]\nthreshold = 2.0\n",
     r"c\.toml: .*calibration → model\.family 'gradient_boosting' → \[calibration\] is "
     r"for pca and isoforest only"),
    ('[model]\nfamily = "isoforest"\n[data]\nsignals = ["a"]\n[commissioning]\nrows = 400\n',
     r"commissioning → model\.family 'isoforest' → \[commissioning\] is for pca only"),
    ("[data]\ntrain_rows = 300\n",
     r"data\.train_rows → 300 → read by the anomaly families only, not 'gradient_boosting'"),
    ('[model]\nfamily = "pca"\n[data]\nsignals = ["a"]\nsubset = "FD002"\n',
     r"data\.subset → 'FD002' → read by the supervised families only, not 'pca'"),
    ('[model]\nfamily = "pca"\n[data]\nsignals = ["a"]\n[features]\ncentre = false\n',
     r"features\.centre → False → read by the supervised families only"),
    ('[model]\nfamily = "pca"\n',
     r"data\.signals → missing → an anomaly family has no default signals"),
    ('[model]\nfamily = "pca"\n[data]\nsignals = ["a"]\nvalidation_fraction = 0.0\n',
     r"data\.validation_fraction → 0\.0 → an anomaly family calibrates on a held-out"),
    ('[model]\nfamily = "pca"\n[data]\nsignals = ["a"]\n[window]\nlength = 4\n',
     r"features\.last_n → 5 → exceeds window\.length 4"),
    ('[model]\nfamily = "pca"\n[data]\nsignals = ["a"]\n[quality]\nranges = {b = [0, 1]}\n',
     r"quality\.ranges → \['b'\] → not in data\.signals"),
    ('[data]\nsignals = ["s2", "s99"]\n', r"data\.signals → 's99' → "),
])
def test_a_refused_part_names_file_section_and_value(tmp_path: Path, text: str,
                                                     match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, text))


def test_model_validate_refuses_with_the_same_text() -> None:
    with pytest.raises(ValidationError, match=r"target → model\.family 'pca'"):
        TrainingConfig.model_validate({**PCA, "target": {"rul_cap": 10}})
    with pytest.raises(ConfigError, match=r"lineage: model\.family → 'svm' → expected one of"):
        validate({**GB, "model": {"family": "svm"}}, "lineage")


# sha256 of each canonical JSON as the per-pipeline config trees wrote it (fingerprints
# and lineage.config of bundles trained before the one schema).
LEGACY: list[tuple[Any, str]] = [
    (PCA, "5008a069756167bddd900292b8674a5077a2fc22562c1eb8312f91ab514a153d"),
    (GB, "1fb384acfbda8e272fffe48b1fc6c04d177813a20b348ae63ba40f52eb01be32"),
    ({**PCA, "quality": {"max_missing": 0.2}, "alerts": {"cooldown_s": 5}},
     "4bcb3dca84f6889856dab4863753184ed24165586b6067147482df8f90621571"),
    # Changed on purpose once since: [commissioning] on_verification_failure = "flag".
    ("skab_pca_template.toml", "a2c316575359be274401ab8944d4526c8d6994d37e9c3865eb95d91bc6898d59"),
    ("cmapss_fd002.toml", "99454be57fa6721f68952a75dc12914968de1c34eb233beba75704564c262a8b"),
]


@pytest.mark.parametrize(("config", "sha"), LEGACY)
def test_canonical_json_is_what_each_pipeline_wrote(config: Any, sha: str) -> None:
    cfg = load_config(REPO / "trainer" / "configs" / config) if isinstance(config, str) \
        else TrainingConfig.model_validate(config)
    assert hashlib.sha256(cfg.canonical_json().encode()).hexdigest() == sha
    # What a bundle records validates again as the same config (refit, commission).
    again = TrainingConfig.model_validate_json(cfg.canonical_json())
    assert again == cfg


def test_each_pipeline_refuses_the_other_familys_config(tmp_path: Path) -> None:
    from trainer import anomaly_pipeline, pipeline

    key = tmp_path / "none.pem"  # never read: the config is refused first
    gb = REPO / "trainer" / "configs" / "cmapss_fd001.toml"
    pca = REPO / "trainer" / "configs" / "skab_pca.toml"
    with pytest.raises(ConfigError, match=r"cmapss_fd001\.toml: model\.family → "
                                          r"'gradient_boosting' → the anomaly pipeline"):
        anomaly_pipeline.train_from_config(gb, tmp_path, key, None)
    with pytest.raises(ConfigError, match=r"skab_pca\.toml: model\.family → 'pca' → the "
                                          r"supervised pipeline fits gradient_boosting"):
        pipeline.train_from_config(pca, tmp_path, key, progress=None)
