"""What a bundle says about the bundles it depends on.

A site parameters bundle (``kind = "site_params"``) is only meaningful with the
template it was learned for: :class:`TemplateRef` names that template exactly
(name, version, the SHA-256 of its graph and manifest, and the key that signed it),
so a template replaced or edited on disk cannot silently pair with old parameters.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge.core.names import NAME_PATTERN
from edge.core.strict import Strict

BundleKind = Literal["full", "template", "site_params"]
_SHA = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class TemplateRef(Strict):
    """The exact template bundle a set of site parameters belongs to."""

    name: Annotated[str, Field(pattern=NAME_PATTERN, description="template bundle name")]
    version: Annotated[str, Field(pattern=NAME_PATTERN, description="template version")]
    model_sha256: _SHA = Field(description="SHA-256 of the template's model.onnx")
    manifest_sha256: _SHA = Field(description="SHA-256 of the template's manifest.json")
    key_id: str | None = Field(None, max_length=64,
                               description="key id of the key that signed the template")

    @property
    def ident(self) -> str:
        return f"{self.name}/{self.version}"


class SiteParamsHead(BaseModel):
    """What trust needs from a site parameters manifest: kind, identity, template.

    The rest of that manifest (what was learned, for which asset, how it was
    verified) belongs to commissioning; extra keys are therefore left to its own
    schema here. The template reference is read from ``template`` or, as the
    contract allows, from ``lineage.template``.

    >>> ref = {"name": "pump", "version": "3", "model_sha256": "a" * 64,
    ...        "manifest_sha256": "b" * 64, "key_id": "0123456789abcdef"}
    >>> SiteParamsHead.model_validate({"kind": "site_params", "name": "pump-p1",
    ...     "version": "1", "lineage": {"template": ref}}).template.ident
    'pump/3'
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: Literal["site_params"]
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    version: Annotated[str, Field(pattern=NAME_PATTERN)]
    template: TemplateRef = Field(description="the template these parameters were learned for")

    @model_validator(mode="before")
    @classmethod
    def _from_lineage(cls, data: Any) -> Any:
        if isinstance(data, dict) and "template" not in data:
            lineage = data.get("lineage")
            if isinstance(lineage, dict) and "template" in lineage:
                return {**data, "template": lineage["template"]}
        return data

    @property
    def ident(self) -> str:
        return f"{self.name}/{self.version}"
