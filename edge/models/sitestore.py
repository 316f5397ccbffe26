"""Commissioning's store of site parameters: one ACTIVE set per asset, beside its template.

The bundles are :mod:`edge.models.sitekey`'s (manifest, ``params.npz``, a format 2
``SIGNATURE`` by the site key or a central key) and every install and load
verifies them with :func:`~edge.models.sitekey.load_site_params` against the
template in use, under the same key roles as the registry (``bundle.trusted_keys``
central, ``bundle.site_keys`` site). What this store adds is the layout the agent
follows cheaply, one pointer per asset, beside the template's versions (``_sites``
is not a valid version name, so it can never collide with one)::

    <models>/<template>/_sites/<asset>/<version>/   manifest.json, params.npz, SIGNATURE,
                                                    INSTALLED.json (read-only)
    <models>/<template>/_sites/<asset>/ACTIVE       the parameters the agent uses

Installs and removals are audited, refusals too (``model.site_params.install``,
``model.site_params.remove``), and take the registry's own lock.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path

from edge.core.audit import AuditLog
from edge.core.durable import registry_lock, seal_into, write_pointer
from edge.core.errors import BundleError, StorageError
from edge.core.names import is_safe_name
from edge.models.bundle import Bundle
from edge.models.infer import Scorer
from edge.models.signing import MANIFEST_FILE, SIGNATURE_FILE, KeyRing, sha256_file
from edge.models.sitekey import SiteParams, load_site_params
from edge.models.template import PARAMS_FILE

SITES_DIR = "_sites"
FILES = (MANIFEST_FILE, PARAMS_FILE, SIGNATURE_FILE)
INFO_FILE = "INSTALLED.json"


class SiteParamsRegistry:
    """The installed parameter sets of one registry root (``<state_dir>/models``)."""

    def __init__(self, root: Path, trusted_keys: list[Path], audit: AuditLog | None = None,
                 *, site_keys: list[Path] | None = None) -> None:
        self.root = Path(root)
        self.trusted_keys = list(trusted_keys)
        self.site_keys = list(site_keys or [])
        self.audit = audit or AuditLog(None)

    def keys(self) -> KeyRing:
        """Read at every verification, as the registry does: a removed .pub counts at once."""
        return KeyRing.load(self.trusted_keys, self.site_keys)

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
                sp = load_site_params(stage, self.keys(), template, scorer=scorer)
            except BundleError as exc:
                raise type(exc)(f"install {src}: {str(exc).replace(str(stage), str(src))}") \
                    from exc
            m = sp.manifest
            dest = base / m.asset / m.version
            if not dest.exists():
                info = {"installed": time.time(), "installed_by": actor, "source": str(src),
                        "signed_by": sp.signed_by, "params_sha256": sp.params_sha256}
                seal_into(stage, dest, INFO_FILE, info)
            elif sha256_file(dest / MANIFEST_FILE) != sha256_file(stage / MANIFEST_FILE):
                raise BundleError(f"install {src}: {m.asset}/{m.version} is already installed "
                                  "with a different manifest")
            write_pointer(dest.parent / "ACTIVE", m.version)
            return replace(sp, path=dest)
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
        return load_site_params(self._dir(template.manifest.name) / asset / version,
                                self.keys(), template, scorer=scorer)

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

    def _locked(self) -> AbstractContextManager[None]:
        return registry_lock(self.root)
