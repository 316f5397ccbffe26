"""Template bundles: one signed graph, per-asset parameters learned on site.

A template's ``model.onnx`` takes, besides ``window [B, S, W]``, an index
``asset_index`` int64 ``[B]`` and one tensor per parameter with a leading
*parameter-set* axis ``[P, ...]``: row ``b`` of the batch is scored with the
parameter set ``asset_index[b]``. The graph gathers the rows itself, so one call
scores windows of many assets, each against its own normal, and a parameter set
is passed once per call however many of its windows the batch holds.

The manifest's :class:`CommissioningSpec` says how the parameters are learned
(``rows`` readings per signal from the asset's first ones under the template, a
held-back tail to verify them) and what they look like (:class:`ParamSpec`: name,
dtype, shape). A ``params.npz`` holds exactly those arrays, one set, without the
leading axis (read with ``allow_pickle=False``: never code, only numbers).

>>> spec = [ParamSpec(name="centre", dtype="float64", shape=[3])]
>>> p = probe_params(spec)
>>> p["centre"].tolist()
[0.5, 0.75, 1.0]
>>> check_params(p, spec, "probe")
>>> try:
...     check_params({"centre": np.zeros(2)}, spec, "x.npz")
... except BundleError as exc:
...     print(exc)
x.npz: parameter 'centre' has shape [2] float64, the template wants [3] float64
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from edge.core.errors import BundleError
from edge.core.names import NAME_PATTERN
from edge.core.strict import Strict

INDEX_INPUT = "asset_index"
PARAMS_FILE = "params.npz"
MAX_PARAM_VALUES = 4_000_000  # 32 MB of float64 per asset: far beyond any real family


class ParamSpec(Strict):
    """One per-asset parameter tensor: graph input ``param_<name>``, shape ``[P, *shape]``."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    dtype: Literal["float32", "float64"]
    shape: list[Annotated[int, Field(ge=1, le=1_000_000)]] = Field(max_length=4)

    @property
    def input_name(self) -> str:
        return f"param_{self.name}"

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class PcaFitSpec(Strict):
    """The PCA T²/Q fit the learner repeats on each asset's commissioning windows."""

    variance: float = Field(gt=0, le=1, description="share of variance the PCA keeps")
    quantile: float = Field(ge=0.5, lt=1, description="T² and Q normalised at this quantile")


class CommissioningSpec(Strict):
    """How a template's per-asset parameters are learned and checked on site."""

    rows: int = Field(ge=10, le=10_000_000, description="readings per signal (rows) from "
                      "the asset's first one under the template that the fit uses")
    holdout_share: float = Field(
        0.25, gt=0, lt=1, description="verification: the fit is repeated on the first "
        "(1 - share) of the rows and the alert rule run on the held-back rest")
    tail_alarm_budget: float = Field(
        0.1, ge=0, le=1, description="verification fails when the alert would be active on "
        "more than this share of the held-back windows")
    on_verification_failure: Literal["refuse", "flag"] = Field(
        "refuse", description="refuse: the asset is insufficient_data and raises no model "
        "alert; flag: its parameters are installed and it scores, marked unverified with "
        "the reason (page, API, metrics, audit), so it is watched rather than silenced")
    min_window_share: float = Field(
        0.5, gt=0, le=1, description="fewer windows than this share of a gap-free "
        "commissioning period's is insufficient data (too many gaps)")
    family: Literal["pca"] = "pca"
    pca: PcaFitSpec
    params: list[ParamSpec] = Field(min_length=1, max_length=32)

    def windows_needed(self, window: int, hop: int) -> int:
        """Windows a gap-free commissioning period yields (the progress denominator)."""
        return max(1, (self.rows - window) // hop + 1)


def probe_params(specs: list[ParamSpec]) -> dict[str, np.ndarray]:
    """A fixed parameter set for the template's self-test (trainer and agent agree on it).

    Values run evenly over [0.5, 1], so a scale or divisor is never zero.
    """
    return {s.name: np.linspace(0.5, 1.0, s.size).reshape(s.shape).astype(s.dtype)
            for s in specs}


def check_params(params: Mapping[str, np.ndarray], specs: list[ParamSpec], where: str) -> None:
    """Names, dtypes, shapes and finiteness of one parameter set against the template."""
    want = {s.name: s for s in specs}
    extra, missing = sorted(set(params) - set(want)), sorted(set(want) - set(params))
    if extra or missing:
        raise BundleError(f"{where}: parameters {sorted(params)} do not match the template's "
                          f"{sorted(want)} (missing {missing}, unexpected {extra})")
    for name, s in want.items():
        a = params[name]
        if list(a.shape) != s.shape or a.dtype != np.dtype(s.dtype):
            raise BundleError(f"{where}: parameter {name!r} has shape {list(a.shape)} "
                              f"{a.dtype}, the template wants {s.shape} {s.dtype}")
        if not np.isfinite(a).all():
            raise BundleError(f"{where}: parameter {name!r} holds non-finite values")


def read_params(path: Path, specs: list[ParamSpec]) -> dict[str, np.ndarray]:
    """Load and check a ``params.npz``; BundleError names the file and the problem.

    Read only after its signature verified: the size bound is a guard against a
    learner's mistake, not against a hostile file.
    """
    try:
        with np.load(io.BytesIO(Path(path).read_bytes()), allow_pickle=False) as z:
            params = {k.removesuffix(".npy"): np.ascontiguousarray(z[k]) for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise BundleError(f"{path}: not a readable parameters file ({exc})") from exc
    if sum(a.size for a in params.values()) > MAX_PARAM_VALUES:
        raise BundleError(f"{path}: more than {MAX_PARAM_VALUES} parameter values")
    check_params(params, specs, str(path))
    return params


def write_params(path: Path, params: Mapping[str, np.ndarray]) -> None:
    """Uncompressed and with fixed member times, so equal parameters give equal bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name in sorted(params):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(params[name]),
                                      allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            z.writestr(info, member.getvalue())
    Path(path).write_bytes(buf.getvalue())


def stack_feeds(sets: list[Mapping[str, np.ndarray]], specs: list[ParamSpec]
                ) -> dict[str, np.ndarray]:
    """Graph feeds ``param_<name> [P, ...]`` from P parameter sets."""
    return {s.input_name: np.stack([p[s.name] for p in sets]) for s in specs}
