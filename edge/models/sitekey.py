"""Site parameters bundles and the limited rights of a site key.

A template bundle (``kind = "template"``: graph, feature pipeline, alert policy)
is signed centrally. Each asset's parameters for it are learned on site and
shipped as a *site parameters* bundle: ``manifest.json`` + ``params.npz`` +
``SIGNATURE``, no graph of its own, signed by the appliance's **site key**. That
key is trusted for nothing else:

* a site key's signature on a full or template bundle is refused
  (:func:`edge.models.signing.check_rights`);
* a site parameters bundle is accepted only with its template: the manifest's
  :class:`~edge.models.lineage.TemplateRef` must name a template bundle that is
  present (installed in the registry, or given), whose ``manifest.json`` and
  ``model.onnx`` have the referenced SHA-256, which is ``kind = "template"`` and
  which verifies under a **central** key (the referenced one, when it names one).

So a stolen site key can change what an asset's normal looks like for a template
the centre signed, and nothing more: never the graph, the features or the policy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge.core.errors import BundleError, SignatureError
from edge.models.bundle import Bundle, load_bundle
from edge.models.lineage import SiteParamsHead, TemplateRef
from edge.models.signing import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    KeyRing,
    Signer,
    sha256_file,
    verify_signature,
)

PARAMS_FILE = "params.npz"
SITE_KEY_STEM = "site"  # <state_dir>/keys/site.key and site.pub

# Finds a template bundle directory from its reference (None: not present).
TemplateFinder = Callable[[TemplateRef], Path | None]


@dataclass(frozen=True)
class SiteParams:
    """A verified site parameters bundle and the verified template it belongs to."""

    path: Path
    head: SiteParamsHead
    manifest: dict[str, Any]  # the whole manifest, for commissioning's own schema
    params_path: Path
    params_sha256: str
    signed_by: str | None
    template: Bundle

    @property
    def ident(self) -> str:
        return self.head.ident


def bundle_kind(path: Path) -> str:
    """The ``kind`` a bundle directory's manifest declares ("full" when it says none)."""
    try:
        raw = json.loads((path / MANIFEST_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path / MANIFEST_FILE}: cannot read manifest ({exc})") from exc
    kind = raw.get("kind", "full") if isinstance(raw, dict) else "full"
    return str(kind)


def template_ref(template: Bundle) -> TemplateRef:
    """The reference a learner writes into the parameters it learned for ``template``."""
    if template.manifest.kind != "template":
        raise BundleError(f"{template.path}: {template.ident} is kind "
                          f"{template.manifest.kind!r}, not a template")
    return TemplateRef(name=template.manifest.name, version=template.manifest.version,
                       model_sha256=template.manifest.model_sha256,
                       manifest_sha256=sha256_file(template.path / MANIFEST_FILE),
                       key_id=template.signed_by)


def registry_finder(root: Path) -> TemplateFinder:
    """Templates installed in a registry: ``<root>/<name>/<version>``."""

    def find(ref: TemplateRef) -> Path | None:
        p = root / ref.name / ref.version
        return p if (p / MANIFEST_FILE).is_file() else None

    return find


def load_site_params(path: Path, keys: KeyRing, find_template: TemplateFinder, *,
                     allow_unsigned: bool = False) -> SiteParams:
    """Verify a site parameters bundle and its template; BundleError says which and why.

    Order: files, signature (any trusted key: a central key may sign parameters
    too), manifest head, then the template it names. Every refusal names the
    bundle, the signing key and the reason.
    """
    path = Path(path)
    for f in (MANIFEST_FILE, PARAMS_FILE):
        p = path / f
        if not p.is_file() or p.is_symlink():
            raise BundleError(f"{p}: missing (a site parameters bundle holds manifest.json "
                              f"and {PARAMS_FILE})")
    if (path / "model.onnx").exists():
        raise BundleError(f"{path}: a site parameters bundle carries no model.onnx; its "
                          "graph is the template's")
    signer: Signer | None = None
    if not (allow_unsigned and not (path / SIGNATURE_FILE).exists()):
        signer = verify_signature(path, keys)
    head = read_site_params_head(path)
    who = f"{path}: site parameters {head.ident} (signed by key " \
          f"{signer.key_id if signer else 'nobody'})"
    template = _verified_template(who, head.template, keys, find_template, allow_unsigned)
    return SiteParams(path=path, head=head, manifest=json.loads((path / MANIFEST_FILE)
                                                                 .read_text()),
                      params_path=path / PARAMS_FILE,
                      params_sha256=sha256_file(path / PARAMS_FILE),
                      signed_by=signer.key_id if signer else None, template=template)


def read_site_params_head(path: Path) -> SiteParamsHead:
    """The trust-relevant head of a parameters manifest (not verified: see load_site_params)."""
    p = path / MANIFEST_FILE
    try:
        return SiteParamsHead.model_validate_json(p.read_bytes())
    except (OSError, ValidationError) as exc:
        detail = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or '(root)'}: {e['msg']}"
                           for e in exc.errors()[:5]) if isinstance(exc, ValidationError) \
            else str(exc)
        raise BundleError(f"{p}: invalid site parameters manifest: {detail}") from exc


def _verified_template(who: str, ref: TemplateRef, keys: KeyRing, find: TemplateFinder,
                       allow_unsigned: bool) -> Bundle:
    where = find(ref)
    if where is None:
        raise BundleError(f"{who}: refused, its template {ref.ident} is not present "
                          "(install the centrally signed template first)")
    try:
        # load_bundle refuses a template signed by a site key (check_rights).
        template = load_bundle(where, keys, allow_unsigned=allow_unsigned)
    except SignatureError as exc:
        raise SignatureError(f"{who}: refused, template {ref.ident} is not signed by a "
                             f"central key: {exc}") from exc
    except BundleError as exc:
        raise BundleError(f"{who}: refused, template {ref.ident}: {exc}") from exc
    check_template(who, ref, template, keys)
    return template


def check_template(who: str, ref: TemplateRef, template: Bundle, keys: KeyRing) -> None:
    """``template`` (loaded by :func:`load_bundle`) is the one ``ref`` names, a template,
    and signed by a central key; else BundleError starting with ``who``.

    Also for a caller that holds the template in use already (the agent).
    """
    if template.manifest.kind != "template":
        raise BundleError(f"{who}: refused, {template.ident} is kind "
                          f"{template.manifest.kind!r}, not a template")
    if (template.manifest.name, template.manifest.version) != (ref.name, ref.version):
        raise BundleError(f"{who}: refused, the parameters were learned for template "
                          f"{ref.ident}, not {template.ident}")
    actual = {MANIFEST_FILE: sha256_file(template.path / MANIFEST_FILE),
              "model.onnx": template.manifest.model_sha256}
    for f, want in ((MANIFEST_FILE, ref.manifest_sha256), ("model.onnx", ref.model_sha256)):
        if actual[f] != want:
            raise BundleError(f"{who}: refused, template {ref.ident} has {f} sha256 "
                              f"{actual[f][:12]}…, the parameters were learned for {want[:12]}…")
    signer = template.signed_by
    if signer is not None and keys.role(signer) != "central":
        raise SignatureError(f"{who}: refused, template {ref.ident} is not signed by a "
                             f"central key (signed by {signer}; {keys.describe()})")
    if ref.key_id is not None and signer is not None and signer != ref.key_id:
        raise SignatureError(f"{who}: refused, template {ref.ident} is signed by key "
                             f"{signer}, the parameters name key {ref.key_id}")
