"""Faults of what the service depends on (the database, the disk), told apart from bugs.

A database outage or a full disk is not the caller's error and not a bug: the API answers it
as a fault the caller can wait out (with a time to retry after), counts it, and logs it once
when the state changes, failing or recovered, instead of a traceback per request: an outage
of a minute under a thousand clients would otherwise write tens of thousands of lines.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import threading
from typing import Literal

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

__all__ = ["FaultKind", "Faults", "classify"]

log = logging.getLogger("fedtune.server")

FaultKind = Literal["database_unavailable", "insufficient_storage"]

_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def classify(exc: BaseException) -> FaultKind | None:
    """The fault `exc` stands for, or None when it is not one (a bug: let it propagate)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL:
            return "insufficient_storage"
        if _sqlite_full(current) or _sqlite_full(getattr(current, "orig", None)):
            return "insufficient_storage"
        if isinstance(current, OperationalError | InterfaceError | PoolTimeout):
            return "database_unavailable"
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return "database_unavailable"
        if type(current).__module__.startswith("psycopg") and type(current).__name__ in (
            "OperationalError",
            "InterfaceError",
        ):
            return "database_unavailable"
        current = current.__cause__ or current.__context__
    return None


def _sqlite_full(exc: object) -> bool:
    """SQLite's SQLITE_FULL ("database or disk is full"): the disk, not the database."""
    if not isinstance(exc, sqlite3.Error):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "disk is full" in str(exc)


class Faults:
    """The current state of each fault kind; `failed`/`ok` log only when it changes."""

    def __init__(self) -> None:
        self._failing: dict[FaultKind, str] = {}
        self._lock = threading.Lock()

    def failed(self, kind: FaultKind, exc: BaseException) -> None:
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        with self._lock:
            changed = kind not in self._failing
            self._failing[kind] = reason
        if changed:
            log.error("%s: %s (logged once until it recovers)", kind.replace("_", " "), reason)

    def ok(self, kind: FaultKind) -> None:
        with self._lock:
            was = self._failing.pop(kind, None)
        if was is not None:
            log.warning("%s: recovered", kind.replace("_", " "))

    def failing(self, kind: FaultKind) -> bool:
        return kind in self._failing
