"""Site parameters bundles: one asset's learned parameters for one template.

A directory ``manifest.json`` (:class:`SiteParamsManifest`), ``params.npz`` (the
arrays the template's :class:`~edge.models.template.CommissioningSpec` lists) and
``SIGNATURE`` over ``"forewarn-site-params-v1\\n" + "manifest=<sha256>\\nparams=<sha256>\\n"``
(its own domain, so it can never pass for a model bundle's signature), made with a
site key (or a central one). Loading checks, in order: the signature against the
site and central keys, the manifest, ``params_sha256``, the template reference
(name, version, graph and manifest SHA-256, signing key) against the template in
use, the arrays against the template's parameter list, then the manifest's
self-test windows through the template with these parameters.

Registry layout, beside the template's versions (``_sites`` is not a valid
version name, so it can never collide with one)::

    <models>/<template>/_sites/<asset>/<version>/   manifest.json, params.npz, SIGNATURE,
                                                    INSTALLED.json (read-only)
    <models>/<template>/_sites/<asset>/ACTIVE       the parameters the agent uses
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import Field, ValidationError

from edge.core.audit import AuditLog
from edge.core.errors import BundleError, SignatureError, StorageError
from edge.core.names import NAME_PATTERN, is_safe_name
from edge.core.strict import Strict
from edge.models.bundle import Bundle, SelfTestCase
from edge.models.infer import Scorer
from edge.models.lineage import TemplateRef
from edge.models.signing import SIGNATURE_FILE, key_id, load_trusted_keys, sha256_file
from edge.models.template import PARAMS_FILE, read_params

SITES_DIR = "_sites"
FILES = ("manifest.json", PARAMS_FILE, SIGNATURE_FILE)
INFO_FILE = "INSTALLED.json"
_DOMAIN = b"forewarn-site-params-v1\n"
_Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class SiteParamsManifest(Strict):
    schema_version: Literal[1] = 1
    kind: Literal["site_params"] = "site_params"
    name: _Name = Field(description="the template's name")
    version: _Name = Field(description="this parameter set's version")
    asset: _Name
    template: TemplateRef
    params_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created: str = ""
    evidence: dict[str, float | str] = Field(
        default_factory=dict, description="what the learner saw: rows, windows, period, "
        "verification on the held-back tail")
    self_test: list[SelfTestCase] = Field(default_factory=list, max_length=64)


@dataclass(frozen=True)
class SiteParams:
    path: Path
    manifest: SiteParamsManifest
    params: dict[str, np.ndarray]
    signed_by: str

    @property
    def asset(self) -> str:
        return self.manifest.asset


def template_ref(template: Bundle) -> TemplateRef:
    """The reference a parameter set for ``template`` must carry."""
    m = template.manifest
    return TemplateRef(name=m.name, version=m.version, model_sha256=m.model_sha256,
                       manifest_sha256=sha256_file(template.path / "manifest.json"),
                       key_id=template.signed_by)


def _message(folder: Path) -> bytes:
    return _DOMAIN + (f"manifest={sha256_file(folder / 'manifest.json')}\n"
                      f"params={sha256_file(folder / PARAMS_FILE)}\n").encode()


def sign_site_params(folder: Path, private: Ed25519PrivateKey) -> str:
    kid = key_id(private.public_key())
    doc = {"alg": "ed25519", "key_id": kid, "role": "site_params",
           "signature": base64.b64encode(private.sign(_message(folder))).decode()}
    (folder / SIGNATURE_FILE).write_text(json.dumps(doc, indent=1) + "\n")
    return kid


def verify_site_signature(folder: Path, keys: list[Path]) -> str:
    """The signing key's id, or SignatureError naming the folder, the key and the reason."""
    sig_path = folder / SIGNATURE_FILE
    try:
        doc = json.loads(sig_path.read_text())
        kid, sig = str(doc["key_id"]), base64.b64decode(doc["signature"], validate=True)
        if doc.get("alg") != "ed25519":
            raise ValueError(f"alg={doc.get('alg')!r}")
    except FileNotFoundError as exc:
        raise SignatureError(f"{sig_path}: site parameters are unsigned") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"{sig_path}: malformed signature file ({exc})") from exc
    trusted = load_trusted_keys(keys)
    key = trusted.get(kid)
    if key is None:
        raise SignatureError(f"{sig_path}: signed by key {kid}, which is neither a site key "
                             f"nor a central key here ({', '.join(sorted(trusted)) or 'none'})")
    try:
        key.verify(sig, _message(folder))
    except InvalidSignature as exc:
        raise SignatureError(f"{folder}: signature does not match manifest.json/params.npz "
                             "(tampered?)") from exc
    return kid


def load_site_params(folder: Path, template: Bundle, keys: list[Path],
                     scorer: Scorer | None = None) -> SiteParams:
    """Verify one parameter set against ``template`` (see the module docstring)."""
    folder = Path(folder)
    spec = template.manifest.commissioning
    if spec is None:
        raise BundleError(f"{folder}: {template.ident} is not a template; it takes no site "
                          "parameters")
    signed_by = verify_site_signature(folder, keys)
    try:
        m = SiteParamsManifest.model_validate_json((folder / "manifest.json").read_bytes())
    except (OSError, ValidationError) as exc:
        raise BundleError(f"{folder}/manifest.json: invalid site parameters manifest "
                          f"({str(exc)[:300]})") from exc
    actual = sha256_file(folder / PARAMS_FILE)
    if actual != m.params_sha256:
        raise BundleError(f"{folder}/{PARAMS_FILE}: sha256 {actual[:12]}… does not match "
                          f"the manifest's params_sha256 {m.params_sha256[:12]}…")
    want = template_ref(template)
    if m.template != want:
        diff = [k for k in ("name", "version", "model_sha256", "manifest_sha256", "key_id")
                if getattr(m.template, k) != getattr(want, k)]
        raise BundleError(f"{folder}: parameters of asset {m.asset} were learned for template "
                          f"{m.template.ident}, not for {want.ident} in use (differs in "
                          f"{', '.join(diff)})")
    params = read_params(folder / PARAMS_FILE, spec.params)
    if m.self_test:
        s = scorer or Scorer(template)
        x = np.asarray([c.window for c in m.self_test], dtype=np.float32)
        if x.shape[1:] != s.shape:
            raise BundleError(f"{folder}/manifest.json: self_test windows have shape "
                              f"{list(x.shape[1:])}, want {list(s.shape)}")
        got, _ = s.run(x, s.feeds([params], np.zeros(len(x), dtype=np.int64)))
        for i, (case, g) in enumerate(zip(m.self_test, got.tolist(), strict=True)):
            if not abs(g - case.expected) <= case.tolerance * max(1.0, abs(case.expected)):
                raise BundleError(f"{folder}: self-test case {i} gave {g:.6g} with these "
                                  f"parameters, the manifest expects {case.expected:.6g}")
    return SiteParams(folder, m, params, signed_by)


class SiteParamsRegistry:
    """The installed parameter sets of one registry root (``<state_dir>/models``)."""

    def __init__(self, root: Path, keys: list[Path], audit: AuditLog | None = None) -> None:
        self.root = Path(root)
        self.keys = list(keys)
        self.audit = audit or AuditLog(None)

    def _dir(self, template: str) -> Path:
        if not is_safe_name(template):
            raise BundleError(f"template name {template!r} is not a valid name")
        return self.root / template / SITES_DIR

    def install(self, src: Path, template: Bundle, actor: str = "system",
                scorer: Scorer | None = None) -> SiteParams:
        """Verify ``src`` against ``template``, add it and make it the asset's ACTIVE set."""
        src = Path(src)
        try:
            with self._locked():
                sp = self._install(src, template, actor, scorer)
        except OSError as exc:
            err = StorageError(f"install site parameters {src}: {exc}")
            self.audit.record(actor, "model.site_params.install", source=str(src),
                              result="failed", error=str(err))
            raise err from exc
        except BundleError as exc:
            self.audit.record(actor, "model.site_params.install", source=str(src),
                              template=template.ident, result="refused", error=str(exc))
            raise
        m = sp.manifest
        self.audit.record(actor, "model.site_params.install", source=str(src),
                          template=template.ident, asset=m.asset, version=m.version,
                          signed_by=sp.signed_by, params_sha256=m.params_sha256, result="ok")
        return sp

    def _install(self, src: Path, template: Bundle, actor: str,
                 scorer: Scorer | None) -> SiteParams:
        base = self._dir(template.manifest.name)
        staging = base / ".staging"
        shutil.rmtree(staging, ignore_errors=True)  # a crash's leftovers; we hold the lock
        staging.mkdir(parents=True)
        try:
            stage = Path(tempfile.mkdtemp(dir=staging))
            for f in FILES:
                p = src / f
                if p.is_symlink() or not p.is_file():
                    raise BundleError(f"install {src}: {f} is missing or not a plain file")
                shutil.copyfile(p, stage / f)
            try:
                sp = load_site_params(stage, template, self.keys, scorer)
            except BundleError as exc:
                raise type(exc)(f"install {src}: {str(exc).replace(str(stage), str(src))}") \
                    from exc
            m = sp.manifest
            dest = base / m.asset / m.version
            if not dest.exists():
                info = {"installed": time.time(), "installed_by": actor, "source": str(src),
                        "signed_by": sp.signed_by, "params_sha256": m.params_sha256}
                (stage / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
                for member in stage.iterdir():
                    member.chmod(0o444)
                    _fsync(member)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.rename(stage, dest)
                dest.chmod(0o555)
                _fsync(dest.parent)
            elif sha256_file(dest / "manifest.json") != sha256_file(stage / "manifest.json"):
                raise BundleError(f"install {src}: {m.asset}/{m.version} is already installed "
                                  "with a different manifest")
            _write_pointer(dest.parent / "ACTIVE", m.version)
            return SiteParams(dest, m, sp.params, sp.signed_by)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def pointers(self, template: str) -> dict[str, str]:
        """Asset -> ACTIVE version, cheap enough to read on every poll."""
        base = self._dir(template)
        out: dict[str, str] = {}
        if not base.is_dir():
            return out
        for d in sorted(base.iterdir()):
            if not is_safe_name(d.name):
                continue
            try:
                v = (d / "ACTIVE").read_text().strip()
            except FileNotFoundError:
                continue
            if is_safe_name(v):
                out[d.name] = v
        return out

    def load(self, template: Bundle, asset: str, version: str,
             scorer: Scorer | None = None) -> SiteParams:
        if not (is_safe_name(asset) and is_safe_name(version)):
            raise BundleError(f"site parameters {asset!r}/{version!r}: not valid names")
        return load_site_params(self._dir(template.manifest.name) / asset / version, template,
                                self.keys, scorer)

    def remove(self, template: str, asset: str, actor: str = "system",
               reason: str = "") -> bool:
        """Clear an asset's ACTIVE set (it learns again); the files stay for the record."""
        with self._locked():
            p = self._dir(template) / asset / "ACTIVE"
            had = p.exists()
            p.unlink(missing_ok=True)
        self.audit.record(actor, "model.site_params.remove", template=template, asset=asset,
                          reason=reason, result="ok" if had else "none active")
        return had

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # The registry's own lock file: model and parameter installs never interleave.
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def write_site_params(out: Path, manifest: dict[str, Any], params: dict[str, np.ndarray],
                      private: Ed25519PrivateKey) -> Path:
    """Write and sign ``<out>/<asset>/<version>/`` (the learner's output, before install)."""
    from edge.models.template import write_params

    folder = Path(out) / str(manifest["asset"]) / str(manifest["version"])
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_params(tmp / PARAMS_FILE, params)
    m = SiteParamsManifest.model_validate({**manifest,
                                           "params_sha256": sha256_file(tmp / PARAMS_FILE)})
    (tmp / "manifest.json").write_text(json.dumps(m.model_dump(mode="json"), indent=1) + "\n")
    sign_site_params(tmp, private)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def _write_pointer(target: Path, version: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".ACTIVE.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(version + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(target.parent)


def _fsync(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
