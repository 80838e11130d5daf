"""Engine set-up: SQLite in WAL mode by default, any SQLAlchemy URL (PostgreSQL) otherwise.

Writes go through `write()`, reads through `read()`. On SQLite a write
transaction starts with `BEGIN IMMEDIATE`, so it takes the write lock up front
and waits (busy timeout) instead of failing when several processes share the
file; reads never block writers in WAL mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from aggregator_service.storage.tables import metadata

__all__ = ["Database"]

_BUSY_TIMEOUT_S = 30


class Database:
    """A pair of engines over one database: `read()` and `write()` connections."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = make_url(url).get_backend_name() == "sqlite"
        if self.is_sqlite:
            self._reader = _sqlite_engine(url, begin="BEGIN")
            self._writer = _sqlite_engine(url, begin="BEGIN IMMEDIATE")
        else:
            self._reader = self._writer = create_engine(url, pool_pre_ping=True)

    def create_schema(self) -> None:
        """Create missing tables (serialised, so concurrent starters do not collide)."""
        with self._writer.begin() as conn:
            metadata.create_all(conn, checkfirst=True)

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
        if self._writer is not self._reader:
            self._writer.dispose()


def _sqlite_engine(url: str, begin: str) -> Engine:
    engine = create_engine(
        url, connect_args={"timeout": _BUSY_TIMEOUT_S, "check_same_thread": False}
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
