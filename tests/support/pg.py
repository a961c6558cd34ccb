"""PostgreSQL for the tests: a database of their own on the machine's server
(127.0.0.1:5432, trust auth as user ``postgres``), created and dropped by the test, or a
private cluster (``initdb``/``pg_ctl`` on a free port) for tests that restart it."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from tests.support.processes import free_port

SERVER = os.environ.get("IMAGEGATE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432")


def _bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for path in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(path)
    raise FileNotFoundError(f"{name}: install Debian's postgresql (scripts/lib.sh does)")


@contextmanager
def own_database(server: str = SERVER) -> Iterator[str]:
    """A new, empty database on ``server``; its URL. Dropped afterwards."""
    name = "imagegate_test_" + secrets.token_hex(4)
    admin = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{server}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class PrivateCluster:
    """A PostgreSQL cluster of the test's own, which it may stop and start."""

    def __init__(self) -> None:
        self.port = free_port()
        # Its own folder in /tmp: as root, the server runs as user postgres, who cannot
        # enter pytest's private temporary folders.
        self.root = Path(tempfile.mkdtemp(prefix=f"imagegate-pg-{self.port}-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.sockets = self.root / "sockets"
        self.sockets.mkdir()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            for path in (self.root, self.sockets):
                shutil.chown(path, "postgres")
        subprocess.run(
            [*self._as, _bin("initdb"), "-D", str(self.data), "-U", "postgres",
             "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True,
        )  # fmt: skip

    @property
    def server(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self._as, _bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", *args],
            check=True, capture_output=True,
        )  # fmt: skip

    def start(self) -> PrivateCluster:
        opts = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-o", opts, "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "stop")

    def remove(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(self.root, ignore_errors=True)
