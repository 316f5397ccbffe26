"""The bundle registry in the agent's state directory.

Layout under ``root`` (``<state_dir>/models``)::

    <name>/<version>/       manifest.json, model.onnx or params.npz, SIGNATURE,
                            INSTALLED.json (read-only)
    <name>/ACTIVE           the version that scores
    <name>/PREVIOUS         the version a rollback returns to
    <name>/CANDIDATE        optional: the version in shadow or canary

Pointer files are replaced atomically (temporary file, fsync, rename). An install
is staged in a temporary directory and verified there — signature, manifest,
graph inputs/outputs and self-test — before one ``rename`` makes it visible, so
a refused or interrupted install leaves nothing behind and the active version
untouched. Only the signed files are kept. Mutations take an ``flock`` on
``root/.lock`` (the agent and the CLI may act at once) and go to the audit log.

A site parameters bundle (``params.npz``, signed by a site key) installs and
loads only with its centrally signed template installed here
(:func:`edge.models.sitekey.load_site_params`, the one check commissioning's
per-asset store also uses); :meth:`Registry.load_params` returns it.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge.core.audit import AuditLog
from edge.core.durable import fsync_path, registry_lock, seal_into, write_pointer
from edge.core.errors import BundleError, StorageError
from edge.core.names import NAME_PATTERN, is_safe_name
from edge.models.archive import BUNDLE_FILES, unpack_archive
from edge.models.bundle import Bundle, load_bundle, read_manifest
from edge.models.infer import Scorer
from edge.models.signing import PAYLOAD_FILES, KeyRing, sha256_file
from edge.models.sitekey import (
    SiteParams,
    bundle_kind,
    load_site_params,
    read_site_params_manifest,
    registry_finder,
)
from edge.models.template import PARAMS_FILE

INFO_FILE = "INSTALLED.json"
POINTERS = ("ACTIVE", "PREVIOUS", "CANDIDATE")


@dataclass(frozen=True)
class InstalledBundle:
    name: str
    version: str
    path: Path
    active: bool = False
    previous: bool = False
    candidate: bool = False
    installed: float = 0.0  # epoch s
    installed_by: str = ""
    signed_by: str | None = None
    model_sha256: str = ""
    created: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    status: str = "installed"  # or "already installed" for an idempotent re-install
    kind: str = "full"  # or "template", "site_params"
    template: str | None = None  # a site_params bundle's template, name/version
    params_sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


@dataclass(frozen=True)
class Pointers:
    active: str | None
    previous: str | None
    candidate: str | None


def _safe(kind: str, value: str) -> str:
    if not is_safe_name(value):  # fullmatch: "$" alone admits a trailing newline
        raise BundleError(f"{kind} {value!r} is not a valid bundle {kind} ({NAME_PATTERN})")
    return value


def _version_key(v: str) -> tuple[Any, ...]:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[._-]", v))


class Registry:
    def __init__(self, root: Path, trusted_keys: list[Path], allow_unsigned: bool = False,
                 audit: AuditLog | None = None, *, intra_op_threads: int = 1,
                 max_bundle_bytes: int = 512 * 2**20,
                 site_keys: list[Path] | None = None) -> None:
        self.root = Path(root)
        self.trusted_keys = list(trusted_keys)
        self.site_keys = list(site_keys or [])
        self.allow_unsigned = allow_unsigned
        self.audit = audit or AuditLog(None)
        self.intra_op_threads = intra_op_threads
        self.max_bundle_bytes = max_bundle_bytes
        self.root.mkdir(parents=True, exist_ok=True)

    # -- install ----------------------------------------------------------------
    def install(self, src: Path, actor: str = "system") -> InstalledBundle:
        """Verify a bundle directory or .tar.gz and add it; BundleError names the failed step."""
        src = Path(src)
        try:
            with self._locked():
                entry = self._install(src, actor)
        except OSError as exc:
            err = StorageError(f"install {src}: {exc}")
            self.audit.record(actor, "model.install", source=str(src), result="failed",
                              error=str(err))
            raise err from exc
        except BundleError as exc:
            self.audit.record(actor, "model.install", source=str(src), result="refused",
                              error=str(exc))
            raise
        self.audit.record(actor, "model.install", source=str(src), name=entry.name,
                          version=entry.version, signed_by=entry.signed_by,
                          model_sha256=entry.model_sha256, result=entry.status,
                          active=entry.active, kind=entry.kind, template=entry.template,
                          params_sha256=entry.params_sha256 or None)
        return entry

    def _install(self, src: Path, actor: str) -> InstalledBundle:
        staging = self.root / ".staging"
        shutil.rmtree(staging, ignore_errors=True)  # leftovers of a crash; we hold the lock
        staging.mkdir()
        stage = Path(tempfile.mkdtemp(dir=staging))
        try:
            display = self._stage(src, stage)
            verified = self._verify(stage, display)
            if isinstance(verified, SiteParams):
                name, version = verified.manifest.name, verified.manifest.version
                extra = {"kind": "site_params", "template": verified.template.ident,
                         "params_sha256": verified.params_sha256}
            else:
                name, version = verified.manifest.name, verified.manifest.version
                extra = {"kind": verified.manifest.kind,
                         "model_sha256": verified.manifest.model_sha256}
            dest = self.root / name / version
            if dest.exists():
                return self._same_or_refuse(stage, dest, display)
            info = {"installed": time.time(), "installed_by": actor, "source": str(src),
                    "signed_by": verified.signed_by, **extra,
                    "manifest_sha256": sha256_file(stage / "manifest.json")}
            seal_into(stage, dest, INFO_FILE, info)
            if self.pointers(name).active is None:
                self._write_pointer(name, "ACTIVE", version)
            return self._entry(name, version)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _stage(self, src: Path, stage: Path) -> str:
        """Copy the signed files of ``src`` into ``stage``; returns how to name src in errors."""
        if src.is_dir():
            for name in BUNDLE_FILES:
                p = src / name
                if p.is_symlink():
                    raise BundleError(f"install {src}: {p} is a symlink; bundles hold plain files")
                if p.is_file():
                    if p.stat().st_size > self.max_bundle_bytes:
                        raise BundleError(f"install {src}: {p} is larger than "
                                          f"{self.max_bundle_bytes} bytes")
                    shutil.copyfile(p, stage / name)
            return str(src)
        if src.is_file():
            try:
                prefix = unpack_archive(src, stage, self.max_bundle_bytes)
            except BundleError as exc:
                raise BundleError(f"install {src}: unpack: {exc}") from exc
            return f"{src}:{prefix or '.'}"
        raise BundleError(f"install {src}: not found (want a bundle directory or a .tar.gz)")

    def _verify(self, stage: Path, display: str) -> Bundle | SiteParams:
        try:
            if bundle_kind(stage) == "site_params":
                sp = load_site_params(stage, self._keys(), registry_finder(self.root),
                                      allow_unsigned=self.allow_unsigned)
                if sp.manifest.name == sp.template.manifest.name:
                    # its versions would sit among the template's, and ACTIVE could name one
                    raise BundleError(f"{stage}: site parameters {sp.ident} are named like "
                                      f"their template; commissioning's parameter sets "
                                      "install with forewarn commission, beside the template")
                return sp
            bundle = load_bundle(stage, self._keys(), allow_unsigned=self.allow_unsigned)
        except BundleError as exc:
            raise type(exc)(f"install {display}: signature/manifest check: "
                              f"{str(exc).replace(str(stage), display)}") from exc
        try:
            Scorer(bundle, intra_op_threads=self.intra_op_threads)  # I/O check + self-test
        except BundleError as exc:
            raise type(exc)(f"install {display}: graph/self-test check: "
                              f"{str(exc).replace(str(stage), display)}") from exc
        return bundle

    def _same_or_refuse(self, stage: Path, dest: Path, display: str) -> InstalledBundle:
        for f in ("manifest.json", *PAYLOAD_FILES):
            if (stage / f).exists() != (dest / f).exists() or (
                    (stage / f).exists() and sha256_file(stage / f) != sha256_file(dest / f)):
                raise BundleError(
                    f"install {display}: {dest.parent.name}/{dest.name} is already installed "
                    f"with a different {f}; give the new bundle a new version")
        e = self._entry(dest.parent.name, dest.name)
        return InstalledBundle(**{**asdict(e), "status": "already installed"})

    # -- pointers -----------------------------------------------------------------
    def promote(self, name: str, version: str, actor: str = "system") -> Pointers:
        """Make ``version`` ACTIVE (the old one becomes PREVIOUS); re-verifies it first."""
        with self._refusal(actor, "model.promote", name=name, version=version), self._locked():
            self._reverify(name, version)  # a version edited on disk must not become active
            before = self.pointers(name)
            if before.active != version:
                if before.active is not None:
                    self._write_pointer(name, "PREVIOUS", before.active)
                self._write_pointer(name, "ACTIVE", version)
            if before.candidate == version:
                self._write_pointer(name, "CANDIDATE", None)
            after = self.pointers(name)
        self.audit.record(actor, "model.promote", name=name, version=version,
                          previous=after.previous,
                          result="already active" if before.active == version else "ok")
        return after

    def rollback(self, name: str, actor: str = "system", reason: str = "") -> Pointers:
        """Swap ACTIVE and PREVIOUS (a second rollback rolls forward again)."""
        with self._refusal(actor, "model.rollback", name=name, reason=reason), self._locked():
            before = self.pointers(name)
            if before.previous is None or before.active is None:
                raise BundleError(f"rollback {name}: no previous version to return to "
                                  f"(installed: {', '.join(self._versions(name)) or 'none'})")
            self._reverify(name, before.previous)
            self._write_pointer(name, "ACTIVE", before.previous)
            self._write_pointer(name, "PREVIOUS", before.active)
            after = self.pointers(name)
        self.audit.record(actor, "model.rollback", name=name, version=after.active,
                          rolled_back=before.active, reason=reason, result="ok")
        return after

    def set_candidate(self, name: str, version: str | None, actor: str = "system",
                      reason: str = "") -> Pointers:
        """Name the shadow/canary candidate; None clears it (a canary rollback)."""
        with (self._refusal(actor, "model.candidate", name=name, version=version, reason=reason),
              self._locked()):
            if version is not None:
                self._reverify(name, version)
            elif not (self.root / _safe("name", name)).is_dir():
                raise BundleError(f"model {name!r} is not installed (installed: "
                                  f"{', '.join(self.names()) or 'none'})")
            before = self.pointers(name)
            self._write_pointer(name, "CANDIDATE", version)
            after = self.pointers(name)
        self.audit.record(actor, "model.candidate", name=name, version=version,
                          replaced=before.candidate, reason=reason, result="ok")
        return after

    def pointers(self, name: str) -> Pointers:
        d = self.root / _safe("name", name)
        vals = []
        for p in POINTERS:
            try:
                v = (d / p).read_text().strip()
            except FileNotFoundError:
                v = ""
            vals.append(_safe("version", v) if v else None)
        return Pointers(*vals)

    def active_path(self, name: str) -> Path:
        v = self.pointers(name).active
        if v is None:
            raise BundleError(f"{self.root / name}: no active version of model {name!r}")
        return self.root / name / v

    def load(self, name: str, version: str | None = None) -> Bundle:
        """Re-verify an installed version (default: the active one) and load it."""
        path = self._installed(name, version)
        if bundle_kind(path) == "site_params":
            raise BundleError(f"{path}: {name} is a site parameters bundle, not a model; "
                              "read it with load_params")
        return load_bundle(path, self._keys(), allow_unsigned=self.allow_unsigned)

    def load_params(self, name: str, version: str | None = None) -> SiteParams:
        """Re-verify installed site parameters (default: the active version) and their
        template, which must still be installed here, unchanged and centrally signed."""
        path = self._installed(name, version)
        return load_site_params(path, self._keys(), registry_finder(self.root),
                                allow_unsigned=self.allow_unsigned)

    def _reverify(self, name: str, version: str) -> None:
        path = self._installed(name, version)
        if bundle_kind(path) == "site_params":
            self.load_params(name, version)
        else:
            self.load(name, version)

    def _installed(self, name: str, version: str | None) -> Path:
        path = (self.active_path(name) if version is None
                else self.root / _safe("name", name) / _safe("version", version))
        if not (path / "manifest.json").is_file():
            raise BundleError(f"{path}: {name}/{version} is not installed "
                              f"(installed: {', '.join(self._versions(name)) or 'none'})")
        return path

    def _keys(self) -> KeyRing:
        return KeyRing.load(self.trusted_keys, self.site_keys)

    # -- listing --------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and is_safe_name(p.name))

    def _versions(self, name: str) -> list[str]:
        d = self.root / name
        if not d.is_dir():
            return []
        vs = [p.name for p in d.iterdir() if p.is_dir() and is_safe_name(p.name)
              and (p / "manifest.json").is_file()]
        return sorted(vs, key=_version_key)

    def _entry(self, name: str, version: str) -> InstalledBundle:
        path = self.root / name / version
        ptr = self.pointers(name)
        try:
            info = json.loads((path / INFO_FILE).read_text())
        except (OSError, ValueError):
            info = {}
        common = dict(name=name, version=version, path=path, active=ptr.active == version,
                      previous=ptr.previous == version, candidate=ptr.candidate == version,
                      installed=float(info.get("installed", 0.0)),
                      installed_by=str(info.get("installed_by", "")),
                      signed_by=info.get("signed_by"))
        if bundle_kind(path) == "site_params":  # INSTALLED.json is unsigned: read the manifest
            sm = read_site_params_manifest(path)
            return InstalledBundle(**common, kind="site_params", template=sm.template.ident,
                                   params_sha256=sha256_file(path / PARAMS_FILE))
        m = read_manifest(path / "manifest.json")
        return InstalledBundle(**common, model_sha256=m.model_sha256, created=m.created,
                               metrics=dict(m.metrics), kind=m.kind)

    # -- plumbing ---------------------------------------------------------------------
    def _write_pointer(self, name: str, pointer: str, version: str | None) -> None:
        d = self.root / name
        if version is None:
            (d / pointer).unlink(missing_ok=True)
            fsync_path(d)
        else:
            write_pointer(d / pointer, version)

    def list(self) -> list[InstalledBundle]:  # last: the name shadows list in the class body
        return [self._entry(n, v) for n in self.names() for v in self._versions(n)]

    @contextmanager
    def _refusal(self, actor: str, action: str, **details: Any) -> Iterator[None]:
        """Refused operations are audited too: someone tried, and why it failed matters."""
        try:
            yield
        except BundleError as exc:
            self.audit.record(actor, action, **details, result="refused", error=str(exc))
            raise

    def _locked(self) -> AbstractContextManager[None]:
        return registry_lock(self.root)
