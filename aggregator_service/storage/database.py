"""Engine set-up: SQLite in WAL mode by default, or PostgreSQL.

Writes go through `write()`, reads through `read()`. On SQLite a write
transaction starts with `BEGIN IMMEDIATE`, so it takes the write lock up front
and waits (busy timeout) instead of failing when several processes share the
file; reads never block writers in WAL mode.

On PostgreSQL writes run READ COMMITTED: every state transition is a
conditional UPDATE, and a concurrent one waits for the row lock and then
re-checks its WHERE against the committed row, so exactly one of several
processes sees rowcount 1 (a stricter level would abort the loser with a
serialisation error instead). Reads are READ ONLY at REPEATABLE READ: one
snapshot for the whole block, as a SQLite read transaction sees.

Round changes reach every replica through PostgreSQL's LISTEN/NOTIFY: `notify()` sends one
on the `fedtune_rounds` channel and `listen()` runs a thread on a connection of its own that
hands each payload to a callback, reconnecting after an outage. SQLite has no such channel:
one process's changes reach its own long-polls in memory, and other processes sharing the
file see them through a periodic re-check.

A SQLite file is created 0600 (SQLite gives its -wal and -shm files the same
mode) in a directory created 0700, whatever the umask.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from aggregator_service.storage.tables import metadata

__all__ = ["CHANNEL", "Database", "parse_database_url"]

log = logging.getLogger("fedtune.server")

CHANNEL = "fedtune_rounds"

_BUSY_TIMEOUT_S = 30
# Connections kept open per engine: requests run in up to 40 worker threads, and a connection
# opened and closed per request (the pool's overflow) costs more than the query. PostgreSQL's
# are fewer, as every replica's count against the server's max_connections (deploy/SCALING.md).
_SQLITE_POOL = {"pool_size": 40, "max_overflow": 20}
_POSTGRES_POOL = {"pool_size": 16, "max_overflow": 16}
_CONNECT_TIMEOUT_S = 10
# Held while creating the schema, so processes starting together on one database take turns.
_SCHEMA_LOCK_KEY = 0x66656474756E65  # "fedtune"
_DIR_MODE = 0o700
_FILE_MODE = 0o600


def parse_database_url(url: str) -> URL:
    """A SQLite or PostgreSQL URL; `postgresql://` means the psycopg (3) driver.

    Raises ValueError with a one-line reason for anything else.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(
            "database URL: expected e.g. postgresql://user:password@host/db or sqlite:///file.db"
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite":
        return parsed
    if backend not in ("postgresql", "postgres"):
        raise ValueError(f"database URL: unsupported backend {backend!r}; use postgresql or sqlite")
    if driver not in ("", "psycopg"):
        raise ValueError(
            f"database URL: driver {driver!r} is not supported; use postgresql:// (psycopg 3)"
        )
    return parsed.set(drivername="postgresql+psycopg")


class Database:
    """A pair of engines over one database: `read()` and `write()` connections."""

    def __init__(self, url: str) -> None:
        parsed = parse_database_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            _create_private_sqlite_file(parsed.database)
            self._reader = _sqlite_engine(parsed, begin="BEGIN")
            self._writer = _sqlite_engine(parsed, begin="BEGIN IMMEDIATE")
        else:
            self._reader = _postgres_engine(parsed, "REPEATABLE READ", readonly=True)
            self._writer = _postgres_engine(parsed, "READ COMMITTED", readonly=False)

    def create_schema(self) -> None:
        """Create missing tables (serialised, so concurrent starters do not collide).

        Raises ValueError naming the database when it cannot be reached.
        """
        try:
            with self._writer.begin() as conn:
                if not self.is_sqlite:
                    conn.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY}
                    )
                metadata.create_all(conn, checkfirst=True)
        except OperationalError as exc:
            where = self._writer.url.render_as_string(hide_password=True)
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise ValueError(f"cannot open the database {where}: {reason}") from None

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self._reader.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One transaction: committed when the block exits normally, rolled back otherwise."""
        with self._writer.begin() as conn:
            yield conn

    def ping(self) -> None:
        with self.read() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self._reader.dispose()
        self._writer.dispose()

    def notify(self, payload: str) -> None:
        """Tell every replica listening (PostgreSQL) that `payload`'s federation changed."""
        if self.is_sqlite:
            return
        with self.write() as conn:
            conn.execute(text("SELECT pg_notify(:channel, :payload)"), {
                "channel": CHANNEL, "payload": payload
            })  # fmt: skip

    def listen(
        self, on_notify: Callable[[str | None], None], on_state: Callable[[bool], None]
    ) -> Callable[[], None] | None:
        """Call `on_notify(payload)` for every notification, from a thread, until the returned
        function is called; None on SQLite. After each (re)connection `on_notify(None)` says
        "anything may have changed" (notifications sent while disconnected are lost), and
        `on_state(connected)` reports each change of the connection's state."""
        if self.is_sqlite:
            return None
        import psycopg

        url = self._writer.url.set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)
        stop = threading.Event()

        def run() -> None:
            delay = 0.5
            while not stop.is_set():
                try:
                    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
                        conn.execute(f"LISTEN {CHANNEL}")
                        on_state(True)
                        on_notify(None)
                        delay = 0.5
                        while not stop.is_set():
                            for n in conn.notifies(timeout=1.0):
                                on_notify(n.payload)
                except psycopg.Error:
                    on_state(False)
                    stop.wait(delay)
                    delay = min(delay * 2, 10.0)

        thread = threading.Thread(target=run, name="fedtune-listen", daemon=True)
        thread.start()

        def close() -> None:
            stop.set()
            thread.join(timeout=5)

        return close


def _postgres_engine(url: URL, isolation: str, readonly: bool) -> Engine:
    try:
        return create_engine(
            url,
            **_POSTGRES_POOL,
            pool_pre_ping=True,
            isolation_level=isolation,
            execution_options={"postgresql_readonly": readonly},
            connect_args={"connect_timeout": _CONNECT_TIMEOUT_S},
        )
    except ImportError:
        raise ValueError(
            "PostgreSQL needs the psycopg driver: pip install 'fedtune[postgres]'"
        ) from None


def _create_private_sqlite_file(database: str | None) -> None:
    """Create the database file 0600 (and a missing directory 0700) before SQLite opens it."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if not path.parent.exists():
        path.parent.mkdir(mode=_DIR_MODE, parents=True)
        path.parent.chmod(_DIR_MODE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), _FILE_MODE)
    try:
        os.fchmod(fd, _FILE_MODE)
    finally:
        os.close(fd)


def _sqlite_engine(url: URL, begin: str) -> Engine:
    engine = create_engine(
        url,
        **_SQLITE_POOL,
        connect_args={"timeout": _BUSY_TIMEOUT_S, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the driver so BEGIN is ours to choose.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_S * 1000}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)

    return engine
