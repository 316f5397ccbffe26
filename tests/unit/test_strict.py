"""The one strict base: unknown keys refused, frozen, and its two variants."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edge.core.strict import Strict, StrictMutable, StrictTyped


class _Plain(Strict):
    n: int = 0


class _Typed(StrictTyped):
    n: int = 0


class _Mutable(StrictMutable):
    n: int = 0


def test_unknown_keys_are_refused_by_every_variant() -> None:
    for cls in (_Plain, _Typed, _Mutable):
        with pytest.raises(ValidationError, match="nn"):
            cls.model_validate({"nn": 1})


def test_strict_is_frozen_and_coerces() -> None:
    m = _Plain.model_validate({"n": "3"})
    assert m.n == 3
    with pytest.raises(ValidationError, match="frozen"):
        m.n = 4  # type: ignore[misc]


def test_typed_refuses_coercion() -> None:
    with pytest.raises(ValidationError, match="valid integer"):
        _Typed.model_validate({"n": "3"})


def test_mutable_is_assignable() -> None:
    m = _Mutable(n=1)
    m.n = 2
    assert m.n == 2


def test_the_schemas_share_the_one_base() -> None:
    from edge.core.config import AgentConfig
    from edge.egress.schema import DriftReport
    from edge.models.bundle import Manifest
    from fleet.config import FleetConfig
    from trainer.config import TrainingConfig

    for cls in (Manifest, AgentConfig, DriftReport, FleetConfig, TrainingConfig):
        assert issubclass(cls, Strict), cls
    assert issubclass(DriftReport, StrictTyped)
