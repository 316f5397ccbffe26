"""A real PostgreSQL for the tests: Debian's binaries, run as the ``postgres`` user.

The cluster lives in a temp dir owned by ``postgres`` (pytest's own temp dirs
are root-only), listens on a free loopback port with its socket in that dir,
and is stopped and removed afterwards. Skipped, with the reason, only when the
binaries are absent.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass
class Postgres:
    port: int
    dir: Path

    def dsn(self, db: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={db}"

    def new_database(self) -> str:
        import psycopg

        name = "t" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.dsn(), autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)


def _as_postgres(args: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    prefix = [] if os.geteuid() != 0 else ["setpriv", "--reuid", "postgres", "--regid",
                                           "postgres", "--init-groups"]
    return subprocess.run([*prefix, *args], check=True, capture_output=True, **kw)  # type: ignore[call-overload, no-any-return]


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL binaries absent ({PG_BIN}; apt-get install -y postgresql)")
    with running_postgres() as pg:
        yield pg


def _wait_accepting(pg: Postgres, timeout: float) -> None:
    """The port opens before recovery ends ("the database system is starting up")."""
    import time

    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(pg.dsn(), connect_timeout=5).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextmanager
def running_postgres() -> Iterator[Postgres]:
    """A private cluster for as long as the block runs (also used by bench/)."""
    root = Path(tempfile.mkdtemp(prefix="forewarn-pg-"))
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    data = root / "data"
    _as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                  "--no-sync"])
    port = free_port()
    proc = subprocess.Popen(
        [*(["setpriv", "--reuid", "postgres", "--regid", "postgres", "--init-groups"]
           if os.geteuid() == 0 else []),
         str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port), "-k", str(root),
         "-h", "127.0.0.1", "-c", "fsync=on"],
        stdout=(root / "pg.log").open("ab"), stderr=subprocess.STDOUT)
    try:
        wait_port(port, 30)
        pg = Postgres(port, root)
        _wait_accepting(pg, 30)
        yield pg
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(root, ignore_errors=True)
