"""Which exceptions are faults of what the service depends on, and how often they are logged."""

from __future__ import annotations

import errno
import logging
import sqlite3

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from aggregator_service.services.faults import Faults, classify


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "insufficient_storage"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "insufficient_storage"),
        (
            OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full")),
            "insufficient_storage",
        ),
        (
            OperationalError("SELECT 1", {}, Exception("connection refused")),
            "database_unavailable",
        ),
        (OSError(errno.ENOENT, "No such file"), None),
        (IntegrityError("INSERT", {}, Exception("duplicate key")), None),
        (ValueError("a bug"), None),
    ],
)
def test_classify_tells_faults_from_bugs(exc: BaseException, kind: str | None) -> None:
    assert classify(exc) == kind


def test_a_fault_wrapped_in_another_error_is_still_a_fault() -> None:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("commit failed") from inner
    except RuntimeError as outer:
        assert classify(outer) == "insufficient_storage"


def test_faults_are_logged_once_per_change_of_state(caplog: pytest.LogCaptureFixture) -> None:
    faults = Faults()
    outage = OperationalError("SELECT 1", {}, Exception("connection refused"))
    with caplog.at_level(logging.INFO, logger="fedtune.server"):
        for _ in range(100):
            faults.failed("database_unavailable", outage)
        assert faults.failing("database_unavailable")
        for _ in range(100):
            faults.ok("database_unavailable")
        faults.failed("database_unavailable", outage)

    lines = [r.getMessage() for r in caplog.records]
    assert sum("database unavailable" in x and "logged once" in x for x in lines) == 2
    assert sum(x == "database unavailable: recovered" for x in lines) == 1
