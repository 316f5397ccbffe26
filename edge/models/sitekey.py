"""Site parameters bundles and the limited rights of a site key.

A template bundle (``kind = "template"``: graph, feature pipeline, alert policy)
is signed centrally. Each asset's parameters for it are learned on site and
shipped as a *site parameters* bundle: ``manifest.json``
(:class:`SiteParamsManifest`), ``params.npz`` (the arrays the template's
:class:`~edge.models.template.CommissioningSpec` lists) and ``SIGNATURE``, no
graph of its own. It is signed like every bundle (:func:`edge.models.signing.sign_bundle`,
format 2), by the appliance's **site key** or by a central key. The site key is
trusted for nothing else:

* a site key's signature on a full or template bundle is refused
  (:func:`edge.models.signing.check_rights`);
* a site parameters bundle is accepted only with its template: the manifest's
  :class:`~edge.models.lineage.TemplateRef` must name a template bundle that is
  present (the one in use, installed in the registry, or given), whose
  ``manifest.json`` and ``model.onnx`` have the referenced SHA-256, which is
  ``kind = "template"`` and which verifies under a **central** key (the referenced
  one, when it names one); its arrays must be the template's parameters and its
  self-test windows must score as the manifest says through the template's graph.

So a stolen site key can change what an asset's normal looks like for a template
the centre signed, and nothing more: never the graph, the features or the policy.

Two stores hold these bundles, both verifying with :func:`load_site_params`: the
registry (:class:`edge.models.registry.Registry`, a bundle of its own name), and
commissioning's per-asset store beside the template
(:class:`edge.models.sitestore.SiteParamsRegistry`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import Field, ValidationError

from edge.core.errors import BundleError, SignatureError
from edge.core.names import NAME_PATTERN
from edge.core.strict import Strict
from edge.models.bundle import Bundle, SelfTestCase, load_bundle
from edge.models.infer import Scorer
from edge.models.lineage import TemplateRef
from edge.models.signing import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    KeyRing,
    Role,
    Signer,
    check_rights,
    sha256_file,
    sign_bundle,
    verify_signature,
)
from edge.models.template import PARAMS_FILE, read_params, write_params

_Name = Annotated[str, Field(pattern=NAME_PATTERN)]

# Finds a template bundle directory from its reference (None: not present).
TemplateFinder = Callable[[TemplateRef], Path | None]


class SiteParamsManifest(Strict):
    """``manifest.json`` of a site parameters bundle: what, for which template, from what."""

    schema_version: Literal[1] = 1
    kind: Literal["site_params"] = "site_params"
    name: _Name = Field(description="the parameter set's name (the commissioning learner "
                        "writes its template's name)")
    version: _Name = Field(description="this parameter set's version")
    asset: _Name
    template: TemplateRef = Field(description="the template these parameters were learned for")
    params_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created: str = ""
    evidence: dict[str, float | str] = Field(
        default_factory=dict, description="what the learner saw: rows, windows, period, "
        "verification on the held-back tail")
    self_test: list[SelfTestCase] = Field(default_factory=list, max_length=64)

    @property
    def ident(self) -> str:
        return f"{self.name}/{self.version}"


@dataclass(frozen=True)
class SiteParams:
    """A verified site parameters bundle and the verified template it belongs to."""

    path: Path
    manifest: SiteParamsManifest
    params: dict[str, np.ndarray]
    params_sha256: str
    signed_by: str | None
    template: Bundle

    @property
    def ident(self) -> str:
        return self.manifest.ident

    @property
    def asset(self) -> str:
        return self.manifest.asset

    @property
    def params_path(self) -> Path:
        return self.path / PARAMS_FILE


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


def read_site_params_manifest(path: Path) -> SiteParamsManifest:
    """A parameters manifest, validated but not verified (see :func:`load_site_params`)."""
    p = path / MANIFEST_FILE
    try:
        return SiteParamsManifest.model_validate_json(p.read_bytes())
    except (OSError, ValidationError) as exc:
        detail = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or '(root)'}: {e['msg']}"
                           for e in exc.errors()[:5]) if isinstance(exc, ValidationError) \
            else str(exc)
        raise BundleError(f"{p}: invalid site parameters manifest: {detail}") from exc


def load_site_params(path: Path, keys: KeyRing, template: Bundle | TemplateFinder, *,
                     scorer: Scorer | None = None, allow_unsigned: bool = False) -> SiteParams:
    """Verify a site parameters bundle and its template; BundleError says which and why.

    ``template`` is the template in use (already verified by its holder, checked
    again here against the reference), or a finder for the one the reference
    names (loaded and verified here). ``scorer`` (of that template) runs the
    self-test; one is built when none is given.

    Order: files, signature (any trusted key: a central key may sign parameters
    too), manifest, ``params_sha256``, the template, the arrays against its
    parameter list, the self-test. Every refusal names the bundle, the signing key
    and the reason.
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
    m = read_site_params_manifest(path)
    check_rights(f"{path}: {m.ident}", m.kind, signer)
    who = f"{path}: site parameters {m.ident} (signed by key " \
          f"{signer.key_id if signer else 'nobody'})"
    actual = sha256_file(path / PARAMS_FILE)
    if actual != m.params_sha256:
        raise BundleError(f"{who}: {PARAMS_FILE} sha256 {actual[:12]}… does not match the "
                          f"manifest's params_sha256 {m.params_sha256[:12]}…")
    if isinstance(template, Bundle):
        check_template(who, m.template, template, keys, in_use=True)
        tpl = template
    else:
        tpl = _verified_template(who, m.template, keys, template, allow_unsigned)
    spec = tpl.manifest.commissioning
    if spec is None:  # a template without one does not validate; kept for the type
        raise BundleError(f"{who}: refused, {tpl.ident} declares no parameters")
    params = read_params(path / PARAMS_FILE, spec.params)
    if m.self_test:
        _self_test(path, m.self_test, params, scorer or Scorer(tpl))
    return SiteParams(path=path, manifest=m, params=params, params_sha256=actual,
                      signed_by=signer.key_id if signer else None, template=tpl)


def _self_test(path: Path, cases: list[SelfTestCase], params: dict[str, np.ndarray],
               s: Scorer) -> None:
    x = np.asarray([c.window for c in cases], dtype=np.float32)
    if x.shape[1:] != s.shape:
        raise BundleError(f"{path}/{MANIFEST_FILE}: self_test windows have shape "
                          f"{list(x.shape[1:])}, want {list(s.shape)}")
    got, _ = s.run(x, s.feeds([params], np.zeros(len(x), dtype=np.int64)))
    for i, (case, g) in enumerate(zip(cases, got.tolist(), strict=True)):
        if not abs(g - case.expected) <= case.tolerance * max(1.0, abs(case.expected)):
            raise BundleError(f"{path}: self-test case {i} gave {g:.6g} with these "
                              f"parameters, the manifest expects {case.expected:.6g}")


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


def check_template(who: str, ref: TemplateRef, template: Bundle, keys: KeyRing, *,
                   in_use: bool = False) -> None:
    """``template`` (loaded by :func:`load_bundle`) is the one ``ref`` names, a template,
    and signed by a central key; else BundleError starting with ``who``.

    ``in_use``: the caller holds the template it scores with (the agent, the
    learner), and the error says so.
    """
    if template.manifest.kind != "template":
        raise BundleError(f"{who}: refused, {template.ident} is kind "
                          f"{template.manifest.kind!r}, not a template")
    diff = [k for k, have in (("name", template.manifest.name),
                              ("version", template.manifest.version))
            if getattr(ref, k) != have]
    if diff:
        raise BundleError(f"{who}: refused, the parameters were learned for template "
                          f"{ref.ident}, not for {template.ident}{' in use' if in_use else ''}"
                          f" (differs in {', '.join(diff)})")
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


def write_site_params(out: Path, manifest: Mapping[str, object],
                      params: Mapping[str, np.ndarray], private: Ed25519PrivateKey, *,
                      role: Role = "site") -> Path:
    """Write and sign ``<out>/<asset>/<version>/`` (a learner's output, before install).

    ``params_sha256`` is filled in here; ``role`` is the one the verifying
    appliance gives ``private`` (``site`` unless it is a central key).
    """
    folder = Path(out) / str(manifest["asset"]) / str(manifest["version"])
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_params(tmp / PARAMS_FILE, params)
    m = SiteParamsManifest.model_validate({**manifest,
                                           "params_sha256": sha256_file(tmp / PARAMS_FILE)})
    (tmp / MANIFEST_FILE).write_text(json.dumps(m.model_dump(mode="json"), indent=1) + "\n")
    sign_bundle(tmp, private, role=role)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder
