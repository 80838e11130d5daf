"""A private PostgreSQL cluster in a temporary directory, for tests that stop and start it.

Uses the installed PostgreSQL's `initdb` and `pg_ctl` (found with `pg_config --bindir`, else
in the versioned directory Debian's packages install). PostgreSQL refuses to run as root:
then the cluster runs as the `postgres` system user, in a directory that user owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import URL, create_engine, text

from lab.local_federation import free_port

__all__ = [
    "PG_ENV",
    "ClusterUnavailable",
    "PrivateCluster",
    "fresh_database",
    "private_cluster",
]

# A PostgreSQL server whose role may create databases; the PostgreSQL tests skip without it.
PG_ENV = "FEDTUNE_TEST_POSTGRES_URL"


class ClusterUnavailable(Exception):
    """No PostgreSQL cluster can be started here; the message says why."""


@dataclass
class PrivateCluster:
    bindir: Path
    root: Path  # owned by the user the cluster runs as
    port: int
    run_as: list[str]  # the command prefix that runs a tool as that user

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        cmd = [*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = (self.root / "postgres.log").read_text(errors="replace")[-2000:]
            raise ClusterUnavailable(f"pg_ctl {args[-1]} failed: {done.stderr.strip()}\n{log}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-l", str(self.root / "postgres.log"), "-o", options, "-w", "start")

    def stop(self) -> None:
        """A fast shutdown: open connections are cut, as in an outage."""
        self._ctl("-m", "fast", "-w", "stop")


def _bindir() -> Path:
    candidates = []
    if pg_config := shutil.which("pg_config"):
        done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        candidates.append(done.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    raise ClusterUnavailable("no PostgreSQL initdb found (pg_config --bindir, Debian's directory)")


def _run_as() -> tuple[list[str], int | None]:
    """The command prefix running a tool as a user PostgreSQL accepts, and that user's uid."""
    if os.geteuid() != 0:
        return [], None
    try:
        uid = pwd.getpwnam("postgres").pw_uid
    except KeyError:
        raise ClusterUnavailable("running as root and there is no `postgres` user") from None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise ClusterUnavailable("running as root and `runuser` is missing")
    return [runuser, "-u", "postgres", "--"], uid


@contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    """A started cluster (trust authentication on 127.0.0.1), stopped and removed on exit.
    Raises `ClusterUnavailable` when none can be started."""
    bindir = _bindir()
    run_as, uid = _run_as()
    root = Path(tempfile.mkdtemp(prefix="fedtune-pg-"))
    try:
        if uid is not None:
            os.chown(root, uid, -1)
        init = [*run_as, str(bindir / "initdb"), "-D", str(root / "data"), "-U", "postgres"]
        done = subprocess.run(
            [*init, "--auth=trust", "-E", "UTF8", "--no-sync"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise ClusterUnavailable(f"initdb failed: {done.stderr.strip()[-2000:]}")
        cluster = PrivateCluster(bindir, root, free_port(), run_as)
        cluster.start()
        try:
            yield cluster
        finally:
            with contextlib.suppress(ClusterUnavailable):  # already stopped
                cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def fresh_database(server: URL) -> Iterator[str]:
    """A new, empty database on `server` (its URL), dropped on exit."""
    name = f"fedtune_test_{secrets.token_hex(6)}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
