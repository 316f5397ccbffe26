"""C-MAPSS read through the one tabular source gives the arrays the dedicated reader
gave: every engine's cycles, settings and sensors, the test RUL, the file hashes, and
the same training data for the shipped configs.

The digests were taken from the dedicated reader (``load_cmapss`` of the former
``trainer.data``, compared array by array with the preset in the commit before it was
removed); numpy's own text reader is the second witness."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from trainer.cmapss import CMAPSS, PACKAGED_ROOT, load_cmapss

# sha256 over every engine's (unit, cycles, settings, sensors), train then test, and
# the test RUL, as the dedicated reader gave them.
OLD_READER = {
    "FD001": "88fea3f14b150176aeeef377f24102998c455e6e35d25925f29d92b667ce25ab",
    "FD002": "eccd21bcc216721600235233d5b1b6896476f7830c6cfe968d920654fa65da06",
}


def _digest(c: CMAPSS) -> str:
    h = hashlib.sha256()
    for part in (c.train, c.test):
        for u in part:
            for a in (np.asarray(u.unit), u.cycles, u.settings, u.sensors):
                h.update(np.ascontiguousarray(a).tobytes())
    h.update(c.test_rul.tobytes())
    return h.hexdigest()


def _loadtxt(path: Path) -> np.ndarray:
    return np.loadtxt(gzip.decompress(path.read_bytes()).decode().splitlines(), ndmin=2)


@pytest.mark.parametrize("subset", ["FD001", "FD002"])
def test_preset_arrays_are_the_dedicated_readers(subset: str) -> None:
    c = load_cmapss(subset)
    assert _digest(c) == OLD_READER[subset]
    # And against numpy's own text reader, row for row.
    for kind, units in (("train", c.train), ("test", c.test)):
        rows = _loadtxt(PACKAGED_ROOT / f"{kind}_{subset}.txt.gz")
        got = np.vstack([np.column_stack([np.full(len(u), u.unit), u.cycles, u.settings,
                                          u.sensors]) for u in units])
        assert np.array_equal(got, rows)
    assert np.array_equal(c.test_rul, _loadtxt(PACKAGED_ROOT / f"RUL_{subset}.txt.gz")[:, 0])
    for kind in ("train", "test", "RUL"):
        raw = gzip.decompress((PACKAGED_ROOT / f"{kind}_{subset}.txt.gz").read_bytes())
        assert c.sha256[kind] == hashlib.sha256(raw).hexdigest()


# sha256 over the training runs' and test engines' windows input ([signals, t] of
# cfg.inputs), the test RUL and the quality report's readings (signal, ts, value), as
# the dedicated reader's training data gave them for the shipped configs.
OLD_TRAINING_DATA = {
    "cmapss_fd001.toml": "4a6a7cfd8a6f578f9bc825c56ef3059defcaab7a10330600893df6a8d74ab694",
    "cmapss_fd002.toml": "ba09a21a4b9c9d05384bd41e248dcef46762bc752b775b727a708a200d87a762",
}


@pytest.mark.parametrize("config", sorted(OLD_TRAINING_DATA))
def test_training_data_through_the_table_path_is_unchanged(config: str) -> None:
    from trainer.config import load_config
    from trainer.sources import load_training_data

    cfg = load_config(PACKAGED_ROOT.parents[1] / "configs" / config)
    d = load_training_data(cfg)
    h = hashlib.sha256()
    for part in (d.train, d.test):
        for u in part:
            h.update(u.signals(cfg.inputs).tobytes())
    assert d.test_rul is not None and d.readings is not None
    h.update(d.test_rul.tobytes())
    r = d.readings
    for a in (r.signal.astype(str), r.ts, r.value):
        h.update(np.ascontiguousarray(a).tobytes())
    assert h.hexdigest() == OLD_TRAINING_DATA[config]
    subset = cfg.data.subset
    assert [f["name"] for f in d.files] == [f"RUL_{subset}.txt", f"test_{subset}.txt",
                                            f"train_{subset}.txt"]
    assert d.train[0].unit == "engine-001" and len(d.train) == len(d.test) + (subset == "FD002")
