"""Each kind of domain error answers with one status and its own code, detail and round."""

from __future__ import annotations

import pytest

from aggregator_service.api.errors import status_of
from aggregator_service.services.errors import (
    Conflict,
    DomainError,
    Forbidden,
    Invalid,
    Malformed,
    NotFound,
    TooLarge,
    Unauthorized,
)


@pytest.mark.parametrize(
    ("kind", "status", "default_error"),
    [
        (Malformed, 400, "validation_error"),
        (Unauthorized, 401, "unauthorized"),
        (Forbidden, 403, "forbidden"),
        (NotFound, 404, "not_found"),
        (Conflict, 409, "conflict"),
        (TooLarge, 413, "payload_too_large"),
        (Invalid, 422, "validation_error"),
    ],
)
def test_each_kind_has_its_status_and_default_code(kind: type[DomainError], status, default_error):
    error = kind("what to do")

    assert status_of(error) == status
    assert (error.error, error.detail, error.round) == (default_error, "what to do", None)


def test_an_explicit_code_replaces_the_default():
    assert Conflict("later", error="round_closed").error == "round_closed"
