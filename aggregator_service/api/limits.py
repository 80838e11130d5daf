"""Refuse what costs memory before anything is buffered: the caller's token, then the body size.

FastAPI reads and parses a route's JSON body before its dependencies run, so the bearer
token of an authenticated route is checked here, from the headers alone, before any body
byte is read (401). Then a JSON body is counted as it arrives and refused past the limit
(413: Content-Length first, then the bytes themselves), so an oversized body is never held.
Registration (`POST /v1/clients`) carries its credential inside the body: only the size
limit guards it. The update upload streams its body to disk under its own limit and passes
through untouched. The dashboard's forms (sign-in, sign-out) take no bearer token: their bodies
are bounded by the much smaller `DASHBOARD_FORM_BYTES`.
"""

from __future__ import annotations

import re
from typing import Any

import anyio
from fastapi.security.utils import get_authorization_scheme_param
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aggregator_service.api.errors import error_response, fault_response, status_of
from aggregator_service.services.access import authenticate
from aggregator_service.services.context import Core
from aggregator_service.services.errors import DomainError
from shared.api import ErrorBody

__all__ = ["DASHBOARD_FORM_BYTES", "BodyGuard"]

# A sign-in form holds one token and the page to return to.
DASHBOARD_FORM_BYTES = 4096

_NO_BODY = frozenset({"GET", "HEAD", "OPTIONS"})
_AUTHENTICATED = re.compile(r"/v1/.*")  # every API route but registration takes a token
_REGISTRATION = re.compile(r"/v1/clients/?")  # the enrollment token is in the body
# own limit, to disk: a delta, or a masked input of secure aggregation
_UPLOAD = re.compile(
    r"/v1/federations/[^/]+/rounds/[^/]+/(update|secure-aggregation/masked-input)/?"
)
_DASHBOARD = re.compile(r"/dashboard(/.*)?")  # forms without a bearer token
# The request-state key under which the guard leaves the caller it authenticated.
PRINCIPAL = "principal"


class BodyGuard:
    """Bound the headers; then authenticate, then bound the body, where a JSON body may come."""

    def __init__(
        self, app: ASGIApp, core: Core, max_json_bytes: int, max_header_bytes: int
    ) -> None:
        self.app = app
        self.core = core
        self.max_json_bytes = max_json_bytes
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _head_size(scope) > self.max_header_bytes:
            detail = f"request line and headers larger than {self.max_header_bytes} bytes"
            too_large = ErrorBody(error="headers_too_large", detail=detail)
            await error_response(431, too_large, {"Connection": "close"})(scope, receive, send)
            return
        path: str = scope["path"]
        if scope["method"] in _NO_BODY or _UPLOAD.fullmatch(path):
            await self.app(scope, receive, send)
            return
        if _AUTHENTICATED.fullmatch(path) and not _REGISTRATION.fullmatch(path):
            refusal = await self._authenticate(scope)
            if refusal is not None:
                # The body stays unread on the wire: the connection cannot be reused.
                refusal.headers["Connection"] = "close"
                await refusal(scope, receive, send)
                return
        limit = DASHBOARD_FORM_BYTES if _DASHBOARD.fullmatch(path) else self.max_json_bytes
        body = await self._read_bounded(scope, receive, send, limit)
        if body is None:
            return
        await self.app(scope, _replay(body, receive), send)

    async def _authenticate(self, scope: Scope) -> JSONResponse | None:
        """None when the bearer token is good; else the refusal (or the fault) to answer."""
        scheme, token = get_authorization_scheme_param(Headers(scope=scope).get("authorization"))
        bearer = token if scheme.lower() == "bearer" and token else None
        try:
            principal = await anyio.to_thread.run_sync(authenticate, self.core, bearer)
        except DomainError as exc:
            return error_response(status_of(exc), ErrorBody(error=exc.error, detail=exc.detail))
        except Exception as exc:
            fault = fault_response(self.core, exc)
            if fault is None:
                raise
            return fault
        scope.setdefault("state", {})[PRINCIPAL] = principal  # the route's caller: not again
        return None

    async def _read_bounded(
        self, scope: Scope, receive: Receive, send: Send, limit: int
    ) -> bytes | None:
        """The whole body, or None once a 413 (or the client's disconnect) ended the request."""
        too_large = (scope, receive, send)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _too_large(limit)(*too_large)
            return None
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk: bytes = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                await _too_large(limit)(*too_large)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _head_size(scope: Scope) -> int:
    """h11 bounds a head that arrives in pieces; this bounds one that arrived whole."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    return (
        len(scope["raw_path"])
        + len(scope["query_string"])
        + sum(len(k) + len(v) + 4 for k, v in headers)
    )


def _too_large(limit: int) -> JSONResponse:
    detail = f"request body larger than {limit} bytes"
    return error_response(
        413, ErrorBody(error="payload_too_large", detail=detail), {"Connection": "close"}
    )


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the buffered body once, then the connection's own events."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        message: dict[str, Any] = {"type": "http.request", "body": body, "more_body": False}
        return message

    return replay
