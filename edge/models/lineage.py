"""What a bundle says about the bundles it depends on.

A site parameters bundle (``kind = "site_params"``) is only meaningful with the
template it was learned for: :class:`TemplateRef` names that template exactly
(name, version, the SHA-256 of its graph and manifest, and the key that signed it),
so a template replaced or edited on disk cannot silently pair with old parameters.
The manifest that carries it is :class:`edge.models.sitekey.SiteParamsManifest`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

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
