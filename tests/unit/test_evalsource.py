"""What ``forewarn evaluate`` scores: the manifest's data set and subset unless told."""

from __future__ import annotations

from typing import Any

import pytest

from edge.core.errors import ForewarnError
from edge.models.bundle import Manifest
from trainer.evalsource import resolve


def manifest(**lineage: Any) -> Manifest:
    return Manifest.model_validate({
        "schema_version": 2, "name": "b", "version": "1", "signals": [{"name": "s2"}],
        "sample_period_s": 1, "window": 30, "hop": 1, "model_sha256": "0" * 64,
        "output": {"kind": "rul", "score_output": "score", "alert_when": "below"},
        "thresholds": {"warning": 30}, "lineage": lineage})


def test_the_manifest_decides_by_default() -> None:
    src = resolve(manifest(dataset="cmapss", subset="FD002"), None, None)
    assert (src.dataset, src.subset) == ("cmapss", "FD002")
    assert src.note == "C-MAPSS FD002 (from the manifest's lineage)"
    assert resolve(manifest(dataset="skab"), None, None).note == "dataset skab (from the " \
                                                                  "manifest)"


def test_another_subset_or_data_set_is_refused_naming_both_unless_forced() -> None:
    fd002 = manifest(dataset="cmapss", subset="FD002")
    with pytest.raises(ForewarnError, match=r"--subset FD001 but the bundle was trained on "
                                            r"C-MAPSS FD002.*--force-subset"):
        resolve(fd002, None, "FD001")
    assert resolve(fd002, None, "FD001", force_subset=True).subset == "FD001"
    with pytest.raises(ForewarnError, match=r"--dataset skab but the bundle was trained on "
                                            r"cmapss.*--force-subset"):
        resolve(fd002, "skab", None)
    forced = resolve(fd002, "skab", None, force_subset=True)
    assert forced.note == "dataset skab, forced (--force-subset) on a bundle trained on cmapss"


def test_a_data_set_evaluate_has_no_test_set_for_needs_dataset() -> None:
    table = manifest(dataset="table")
    with pytest.raises(ForewarnError, match=r"lineage\.dataset = 'table'.*give --dataset"):
        resolve(table, None, None)
    assert resolve(table, "skab", None).note == "dataset skab"  # told: no mismatch to refuse
