"""What ``forewarn evaluate`` scores: the data set and subset the bundle's manifest
records, unless the command line says otherwise - and then only when told to.

An FD004 bundle scored on FD001 gives a number that looks like a test RMSE and is
none, so a subset (or data set) that differs from the manifest's is refused, naming
both, unless ``--force-subset`` asks for that cross-subset figure on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.core.errors import ForewarnError
from edge.models.bundle import Manifest

DATASETS = ("skab", "cmapss")
DEFAULT_SUBSET = "FD001"  # only for a RUL bundle whose manifest names no subset


@dataclass(frozen=True)
class Source:
    dataset: str
    subset: str | None  # C-MAPSS only
    note: str  # where the choice came from, printed with the figures


def resolve(manifest: Manifest | None, dataset: str | None, subset: str | None,
            *, force_subset: bool = False) -> Source:
    """The data set and subset to score, from the manifest's lineage by default."""
    lineage = manifest.lineage if manifest is not None else {}
    recorded_ds = lineage.get("dataset")
    recorded_sub = lineage.get("subset") if recorded_ds == "cmapss" else None
    if dataset is None:
        if recorded_ds in DATASETS:
            dataset = str(recorded_ds)
        elif manifest is None:
            raise ForewarnError("--dataset is needed without --bundle: one of "
                                + ", ".join(DATASETS))
        else:
            raise ForewarnError(f"the bundle's manifest records lineage.dataset = "
                                f"{recorded_ds!r}, which evaluate has no labelled test set "
                                f"for; give --dataset ({', '.join(DATASETS)})")
    elif recorded_ds in DATASETS and dataset != recorded_ds and not force_subset:
        raise ForewarnError(
            f"--dataset {dataset} but the bundle was trained on {recorded_ds} (manifest "
            f"lineage.dataset); its figures on {dataset} are no test figures of it. Drop "
            f"--dataset to score {recorded_ds}, or add --force-subset to score {dataset} "
            "anyway")
    if dataset != "cmapss":
        if subset is not None:
            raise ForewarnError(f"--subset {subset} applies to --dataset cmapss only")
        return Source(dataset, None, f"dataset {dataset}" + (
            " (from the manifest)" if recorded_ds == dataset else
            f", forced (--force-subset) on a bundle trained on {recorded_ds}"
            if recorded_ds in DATASETS else ""))
    if subset is None:
        if recorded_sub:
            return Source(dataset, str(recorded_sub),
                          f"C-MAPSS {recorded_sub} (from the manifest's lineage)")
        return Source(dataset, DEFAULT_SUBSET, f"C-MAPSS {DEFAULT_SUBSET} (the manifest names "
                                               "no subset; default)")
    if recorded_sub and subset != recorded_sub:
        if not force_subset:
            raise ForewarnError(
                f"--subset {subset} but the bundle was trained on C-MAPSS {recorded_sub} "
                f"(manifest lineage.subset); scoring it on {subset} is not its test RMSE. "
                f"Drop --subset to score {recorded_sub}, or add --force-subset to score "
                f"{subset} anyway")
        return Source(dataset, subset, f"C-MAPSS {subset}, forced (--force-subset) on a "
                                       f"bundle trained on {recorded_sub}")
    return Source(dataset, subset, f"C-MAPSS {subset}")
