"""Faults of the database itself, injected with triggers: a write it refuses as a failing disk
or a lost connection would, and a COMMIT that fails."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text

from aggregator_service.storage import Database

_NAME = "fedtune_test_fault"
# PostgreSQL: the trigger function, raising what a failing disk raises (58030: io_error)
_PG_IO_ERROR = (
    f"CREATE FUNCTION {_NAME}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "RAISE EXCEPTION 'injected I/O error' USING ERRCODE = '58030'; END $$"
)


def _pg_drop(table: str) -> list[str]:
    return [f"DROP TRIGGER {_NAME} ON {table}", f"DROP FUNCTION {_NAME}()"]


@contextmanager
def refusing_writes(db: Database, table: str, column: str) -> Iterator[None]:
    """While open, every statement that sets `column` of `table` to a value fails with an
    `OperationalError` (which the API answers 503)."""
    if db.is_sqlite:
        create = [
            f"CREATE TRIGGER {_NAME} BEFORE UPDATE OF {column} ON {table} "
            f"WHEN NEW.{column} IS NOT NULL BEGIN INSERT INTO {_NAME}_missing VALUES (1); END"
        ]
        drop = [f"DROP TRIGGER {_NAME}"]
    else:
        create = [
            _PG_IO_ERROR,
            f"CREATE TRIGGER {_NAME} BEFORE UPDATE OF {column} ON {table} FOR EACH ROW "
            f"WHEN (NEW.{column} IS NOT NULL) EXECUTE FUNCTION {_NAME}()",
        ]
        drop = _pg_drop(table)
    with _installed(db, create, drop):
        yield


@contextmanager
def failing_commits(db: Database, table: str) -> Iterator[None]:
    """While open, every transaction that inserts into `table` fails at its COMMIT, after all
    its statements ran (a deferred constraint): the service cannot tell it from a COMMIT that
    was applied but whose answer was lost."""
    if db.is_sqlite:
        create = [
            f"CREATE TABLE {_NAME}_parent (id INTEGER PRIMARY KEY)",
            f"CREATE TABLE {_NAME}_child (parent INTEGER REFERENCES {_NAME}_parent(id) "
            "DEFERRABLE INITIALLY DEFERRED)",
            f"CREATE TRIGGER {_NAME} AFTER INSERT ON {table} "
            f"BEGIN INSERT INTO {_NAME}_child VALUES (-1); END",
        ]
        drop = [f"DROP TRIGGER {_NAME}", f"DROP TABLE {_NAME}_child", f"DROP TABLE {_NAME}_parent"]
    else:
        create = [
            _PG_IO_ERROR,
            f"CREATE CONSTRAINT TRIGGER {_NAME} AFTER INSERT ON {table} "
            f"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {_NAME}()",
        ]
        drop = _pg_drop(table)
    with _installed(db, create, drop):
        yield


@contextmanager
def _installed(db: Database, create: list[str], drop: list[str]) -> Iterator[None]:
    with db.write() as conn:
        for statement in create:
            conn.execute(text(statement))
    try:
        yield
    finally:
        with db.write() as conn:
            for statement in drop:
                conn.execute(text(statement))
