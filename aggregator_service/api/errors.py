"""The API's one translation of refusals into HTTP: each domain error's status and `ErrorBody`.

FastAPI's own errors (validation, unknown routes) answer in the same shape.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from aggregator_service.services.context import Core
from aggregator_service.services.errors import (
    Busy,
    Conflict,
    DomainError,
    Forbidden,
    Invalid,
    Malformed,
    NotFound,
    TimedOut,
    TooLarge,
    Unauthorized,
)
from aggregator_service.services.faults import FaultKind, classify
from shared.api import ErrorBody
from shared.validation import format_validation_error

__all__ = [
    "RejectNul",
    "close_on_refusal",
    "error_response",
    "error_responses",
    "fault_response",
    "install_error_handlers",
    "status_of",
]

log = logging.getLogger("fedtune.server")

_DESCRIPTIONS = {
    400: "Malformed request body (e.g. not a safetensors file).",
    401: "Missing, wrong or revoked token.",
    403: "Authenticated, but not allowed here.",
    404: "No such resource.",
    409: "Conflicts with the current state; `round` holds the current round when relevant.",
    408: "The body arrived too slowly (idle too long, or below the server's rate floor).",
    413: "Body larger than the server accepts.",
    422: "Invalid input; `detail` names the field and what is wrong.",
    429: "This API key already runs as many such requests as the server allows; retry after "
    "`Retry-After` seconds.",
    503: "The database is unavailable for now; retry after `Retry-After` seconds.",
    507: "The server's disk is full for now; retry after `Retry-After` seconds.",
}

# A fault is the service's dependency failing, not the request: it answers with a status the
# caller waits out, and is logged once per change of state (services/faults.py).
_FAULT_STATUS: dict[FaultKind, tuple[int, int, str]] = {
    "database_unavailable": (503, 5, "the database is unavailable; retry shortly"),
    "insufficient_storage": (507, 30, "the server's disk is full; retry later"),
}


def fault_response(core: Core, exc: BaseException) -> JSONResponse | None:
    """The answer to `exc` when it is a fault (counted, logged once per state change)."""
    kind = classify(exc)
    if kind is None:
        return None
    core.metrics.faults.labels(kind).inc()
    core.faults.failed(kind, exc)
    status, retry_after, detail = _FAULT_STATUS[kind]
    return error_response(
        status, ErrorBody(error=kind, detail=detail), {"Retry-After": str(retry_after)}
    )


# The most specific class in an error's MRO decides (Malformed is an Invalid that answers 400).
_STATUS: dict[type[DomainError], int] = {
    Malformed: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    TimedOut: 408,
    TooLarge: 413,
    Invalid: 422,
    Busy: 429,
    DomainError: 400,
}


def status_of(exc: DomainError) -> int:
    """The HTTP status a domain error answers with."""
    return next(_STATUS[cls] for cls in type(exc).__mro__ if cls in _STATUS)


def _body_of(exc: DomainError) -> ErrorBody:
    return ErrorBody(error=exc.error, detail=exc.detail, round=exc.round)


def close_on_refusal(request: Request) -> None:
    """Mark a request whose body may be refused before it is all read: the refusal then
    closes the connection, so the server does not go on reading (and discarding) what the
    client still sends."""
    request.state.close_on_refusal = True


def _headers_of(request: Request, exc: DomainError) -> dict[str, str]:
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, Busy) else {}
    if getattr(request.state, "close_on_refusal", False):
        headers["Connection"] = "close"
    return headers


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries declaring ErrorBody for the given statuses."""
    return {s: {"model": ErrorBody, "description": _DESCRIPTIONS[s]} for s in statuses}


_BEARER_CHALLENGE = 'Bearer realm="fedtune"'


def error_response(
    status: int, body: ErrorBody, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """An `ErrorBody` as the JSON response every refusal of the API answers with.

    A 401 names the scheme to authenticate with (`WWW-Authenticate: Bearer`, RFC 6750).
    """
    if status == 401:
        headers = {"WWW-Authenticate": _BEARER_CHALLENGE, **(headers or {})}
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


_HTTP_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def install_error_handlers(app: FastAPI) -> None:
    async def domain_error(req: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, DomainError)
        return error_response(status_of(exc), _body_of(exc), _headers_of(req, exc))

    async def validation_error(_req: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(
            422,
            ErrorBody(
                error="validation_error",
                detail=format_validation_error(exc, omit=("body",), root="body"),
            ),
        )

    async def http_error(_req: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "error")
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return error_response(exc.status_code, ErrorBody(error=code, detail=detail), exc.headers)

    async def unexpected(req: Request, exc: Exception) -> JSONResponse:
        fault = fault_response(req.app.state.core, exc)
        if fault is not None:
            return fault
        log.exception("unhandled error", exc_info=exc)
        return error_response(
            500, ErrorBody(error="internal_error", detail="internal server error")
        )

    app.add_exception_handler(DomainError, domain_error)
    # Handled here rather than by the catch-all, which Starlette re-raises (a traceback per
    # request): faults answer quietly, anything else of these types is still a logged 500.
    for kind in (SQLAlchemyError, OSError):
        app.add_exception_handler(kind, unexpected)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


class RejectNul:
    """Refuse a NUL character in the path (404: no id holds one) or the query (422) before
    any route runs: PostgreSQL text cannot hold it, so it must never reach a query."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = _nul_refusal(scope) if scope["type"] == "http" else None
        if refusal is None:
            await self.app(scope, receive, send)
        else:
            await error_response(*refusal)(scope, receive, send)


def _nul_refusal(scope: Scope) -> tuple[int, ErrorBody] | None:
    if "\x00" in scope["path"]:
        return 404, ErrorBody(error="not_found", detail="no such resource: the path holds a NUL")
    if b"%00" in scope["query_string"]:
        detail = "query: must not contain a NUL character"
        return 422, ErrorBody(error="validation_error", detail=detail)
    return None
