"""Enrolment: the appliance public keys the fleet trusts, one ``<site_id>.pub`` per site.

``forewarn egress pubkey --config agent.toml`` on the appliance prints its key;
central IT saves it as ``<enrolment>/<site_id>.pub``. The directory is re-read
when it changes (mtime), so enrolling a site needs no restart.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.core.errors import ConfigError
from edge.models.signing import load_public_key

log = logging.getLogger(__name__)
SITE_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


def load_enrolment(directory: Path) -> dict[str, Ed25519PublicKey]:
    d = Path(directory)
    if not d.is_dir():
        raise ConfigError(f"{d}: enrolment directory does not exist")
    keys: dict[str, Ed25519PublicKey] = {}
    for f in sorted(d.glob("*.pub")):
        if not SITE_ID.match(f.stem):
            raise ConfigError(f"{f}: file name must be <site_id>.pub with an id of "
                              "letters, digits, '_' or '-'")
        keys[f.stem] = load_public_key(f)
    return keys


class Enrolment:
    """Site keys, reloaded when the directory's mtime changes (a bad file keeps the old set)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._mtime = self._stamp()
        self._keys = load_enrolment(self.directory)

    def _stamp(self) -> float:
        try:
            return self.directory.stat().st_mtime
        except OSError:
            return 0.0

    def keys(self) -> dict[str, Ed25519PublicKey]:
        with self._lock:
            stamp = self._stamp()
            if stamp != self._mtime:
                try:
                    self._keys = load_enrolment(self.directory)
                    log.info("enrolment reloaded: %d sites", len(self._keys))
                except ConfigError as exc:
                    log.error("enrolment not reloaded, keeping %d sites: %s",
                              len(self._keys), exc)
                self._mtime = stamp
            return self._keys
