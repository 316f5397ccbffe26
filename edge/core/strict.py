"""The one strict pydantic base of every config, manifest and report schema.

Unknown keys are refused (a typo in a TOML or JSON file is an error, never a
silently ignored setting) and parsed objects are frozen. Two variants keep the
semantics their users rely on:

* :class:`StrictTyped` also refuses type coercion (``"1"`` is not ``1``): data
  arriving from other sites (egress reports) must be exactly what the schema says.
* :class:`StrictMutable` stays assignable: the agent config resolves its
  relative paths in place after validation.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Unknown keys refused, frozen after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StrictTyped(Strict):
    """As :class:`Strict`, and no type coercion (``strict=True``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class StrictMutable(Strict):
    """As :class:`Strict`, but fields stay assignable."""

    model_config = ConfigDict(extra="forbid", frozen=False)
