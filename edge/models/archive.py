"""Bundle archives: the .tar.gz a rollout ships, unpacked without trusting it.

A bundle is a few plain files (:data:`BUNDLE_FILES`); an archive holding anything
else that could escape the staging directory is refused whole.
"""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from edge.core.errors import BundleError
from edge.models.signing import MANIFEST_FILE, PAYLOAD_FILES, SIGNATURE_FILE

if TYPE_CHECKING:
    import tarfile

BUNDLE_FILES = (MANIFEST_FILE, *PAYLOAD_FILES, SIGNATURE_FILE)
MAX_MEMBERS = 64


def unpack_archive(archive: Path, stage: Path, max_bytes: int) -> str:
    """Extract the bundle files of a tar(.gz) into ``stage``; returns the bundle's folder in it.

    Every member is checked before anything is written, and the archive is refused
    whole when one member is absolute, climbs out with '..', is a link or a device,
    or the sizes exceed ``max_bytes``: a bundle is a few plain files, nothing else.
    Checking while iterating stops a decompression bomb at the first oversize member.
    """
    # Imported here: the running agent imports this module (the registry) but opens an
    # archive only at an install; tarfile and its compressors are ~1 MB of RSS.
    import tarfile

    try:
        tf = tarfile.open(archive, "r:*")  # noqa: SIM115 - the with below closes it
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"not a readable tar archive ({exc})") from exc
    with tf:
        members, total = [], 0
        try:
            for m in tf:
                what = _bad_member(m)
                if what:
                    raise BundleError(f"member {m.name!r} {what}; refusing the whole archive")
                total += m.size
                if total > max_bytes:
                    raise BundleError(f"member {m.name!r} takes the archive past {max_bytes} "
                                      "bytes unpacked; refusing it")
                members.append(m)
                if len(members) > MAX_MEMBERS:
                    raise BundleError(f"more than {MAX_MEMBERS} members; a bundle is a few files")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BundleError(f"corrupt archive ({exc})") from exc
        manifests = [PurePosixPath(m.name) for m in members
                     if m.isfile() and PurePosixPath(m.name).name == "manifest.json"]
        if len(manifests) != 1:
            raise BundleError(f"want exactly one manifest.json, found {len(manifests)}")
        prefix = manifests[0].parent
        for m in members:
            p = PurePosixPath(m.name)
            if m.isfile() and p.parent == prefix and p.name in BUNDLE_FILES:
                data = tf.extractfile(m)
                assert data is not None  # regular file
                try:
                    with open(stage / p.name, "xb") as out:
                        shutil.copyfileobj(data, out)
                except FileExistsError as exc:
                    raise BundleError(f"member {m.name!r} appears twice") from exc
    return "" if str(prefix) == "." else str(prefix)


def _bad_member(m: tarfile.TarInfo) -> str:
    p = PurePosixPath(m.name)
    if p.is_absolute() or ".." in p.parts:
        return "is an absolute path or contains '..' (path traversal)"
    if m.issym() or m.islnk():
        return f"is a link (to {m.linkname!r})"
    if not (m.isfile() or m.isdir()):
        return "is a device, fifo or other special file"
    return ""
